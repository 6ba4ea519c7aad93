#!/usr/bin/env bash
# Side-by-side load test: gatehouse and its peers (HAProxy, nginx, nginx + Lua written as Kong's
# plugins are, Caddy) doing the same job, one worker each, on loopback, in one run.
#
#   loadtest/compare.sh [--rounds 3] [--duration 10] [--conns "50 200"]
#                       [--scenarios "plain chain cached tls tls13 tls13-new grpc"]
#                       [--proxies "haproxy nginx openresty caddy gatehouse"]
#                       [--gatehouse-b OTHER_BINARY]
#
# Which proxy runs which scenario (--proxies and --scenarios restrict it further):
#
#   scenario    haproxy nginx openresty caddy gatehouse
#   plain          x      x       -       x       x
#   chain          x      x       x       -       x
#   cached         x      x       -       -       x
#   tls            x      x       -       -       x
#   tls13          x      x       -       -       x
#   tls13-new      x      x       -       -       x
#   grpc           x      x       -       -       x
#
# Starts an origin (nginx, 1 worker, static JSON, also over HTTPS; for grpc a gRPC server over
# h2c, nghttpd with 1 worker) and the proxies: HAProxy (nbthread 1), nginx (1 worker),
# "openresty" = the same nginx with libnginx-mod-http-lua (LuaJIT) loaded, 1 worker, Caddy
# (GOMAXPROCS=1, admin off) and gatehouse (GATEHOUSE_BIN, default the release build; its
# config is loadtest/gatehouse.yaml (threads: 1) plus the HTTPS listener and the tls/grpc
# upstreams and routes). A CA and ECDSA P-256 certificates for the origin and for the
# proxies' HTTPS listeners are made for the run (lib.sh write_bench_pki).
#
# Before measuring, every proxy must do each scenario's job (a curl or nghttp through each):
# 2xx; chain: the key removed upstream, the consumer and the request id sent upstream, the same
# request id and X-Frame-Options / X-Content-Type-Options in the answer, 401 JSON without a key;
# cached: a second GET answered from the cache; tls13*: the P-256 certificate verifies over TLS
# 1.3 and TLS 1.2 is refused; grpc: the message and its grpc-status trailer.
#
# --gatehouse-b adds a second gatehouse build ("gatehouse-b", on its own ports, same config) to
# every scenario gatehouse runs: an A/B of two builds measured side by side in the same rounds
# (ratios gatehouse/gatehouse-b are printed; it never counts as the best peer).
#
# Then it runs the load (wrk -t1; h2load for grpc) interleaved: for each connection count and
# scenario, several rounds, each proxy once per round, the proxies' order rotating every round.
# Each run is a 2 s warm-up (fills caches and pools) and the measured run. Prints, per
# scenario and connection count, the medians over the rounds of req/s, p50/p99 latency and CPU
# microseconds per request (utime+stime of the proxy's processes from /proc, over the requests
# completed: the proxy's side only, not the client's or the origin's; also split into user and
# kernel time), the ratios
# gatehouse/peer for each peer and for the best peer (lowest CPU per request), and a matrix of
# CPU per request with those ratios. The machine is shared and noisy: compare ratios from one
# run, not absolute numbers across runs. Any answer that is not 2xx, or a socket error, stops
# the run. Traffic goes to 127.0.0.1 only (the TLS 1.3 scenarios name it localhost, so that wrk
# sends a host name as SNI, not an IP address); the ports below must be free.
#
# Scenarios (same paths on every proxy):
#   plain      GET /api/v1/users/42                   plain reverse proxy, keep-alive both legs
#   chain      GET /api/v1/orders/7 with X-API-Key    API key -> consumer (HAProxy: a map file;
#                                                     nginx: map; openresty: a Lua table in
#                                                     access_by_lua), a per-consumer rate limit
#                                                     far above the load (stick-table
#                                                     sc_http_req_rate; limit_req; a
#                                                     lua_shared_dict counter per second),
#                                                     request id upstream and in the answer,
#                                                     X-Frame-Options, X-Content-Type-Options,
#                                                     key header removed upstream
#   cached     GET /api/v1/products/{0..19}           response cache (HAProxy cache section,
#                                                     nginx proxy_cache, gatehouse proxy-cache)
#   tls        GET /api/v1/tls/42                     plain client leg, HTTPS to the origin,
#                                                     certificate verified against the run's
#                                                     CA; pooled connections (an idle pool of
#                                                     256 on every proxy)
#   tls13      GET https://localhost:.../api/v1/users/42
#                                                     the client leg over TLS 1.3 (the proxies
#                                                     accept nothing older), keep-alive: one
#                                                     handshake per connection, then requests;
#                                                     plain HTTP/1.1 to the origin
#   tls13-new  the same with Connection: close        a new TCP connection and a full TLS 1.3
#                                                     handshake per request (ECDSA P-256
#                                                     certificate, X25519 from wrk's OpenSSL,
#                                                     each proxy's default session tickets
#                                                     issued and not used);
#                                                     wrk would resume the previous session, so
#                                                     loadtest/no_resume.c is built and
#                                                     preloaded into it (checked against the
#                                                     origin before measuring)
#   grpc       POST /bench.Echo/Unary (h2load)        gRPC unary over h2c on both legs (nginx
#                                                     http2 + grpc_pass, HAProxy proto h2);
#                                                     "conns" c = c/10 connections x 10 streams
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

ALL_SCENARIOS="plain chain cached tls tls13 tls13-new grpc"
ALL_PROXIES="haproxy nginx openresty caddy gatehouse"
ROUNDS=3 DURATION=10 CONNS="50 200" SCENARIOS=$ALL_SCENARIOS PROXIES=$ALL_PROXIES BIN_B=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --proxies) PROXIES=$2; shift 2 ;;
    --gatehouse-b) BIN_B=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

in_list() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }  # WORD "LIST"
for s in $SCENARIOS; do in_list "$s" "$ALL_SCENARIOS" || { echo "unknown scenario $s (known: $ALL_SCENARIOS)" >&2; exit 2; }; done
for p in $PROXIES; do in_list "$p" "$ALL_PROXIES" || { echo "unknown proxy $p (known: $ALL_PROXIES)" >&2; exit 2; }; done
if [ -n "$BIN_B" ]; then
  [ -x "$BIN_B" ] || { echo "--gatehouse-b $BIN_B: not an executable" >&2; exit 2; }
  ALL_PROXIES="$ALL_PROXIES gatehouse-b"
  in_list gatehouse "$PROXIES" && PROXIES="$PROXIES gatehouse-b"
fi

# The proxies of each scenario: the table above, restricted to --proxies.
proxies_for() {
  local all p
  case "$1" in
    plain) all="haproxy nginx caddy gatehouse gatehouse-b" ;;
    chain) all="haproxy nginx openresty gatehouse gatehouse-b" ;;
    *) all="haproxy nginx gatehouse gatehouse-b" ;;
  esac
  for p in $all; do
    if in_list "$p" "$PROXIES"; then echo "$p"; fi
  done
}
USED=""
for sc in $SCENARIOS; do
  for p in $(proxies_for "$sc"); do in_list "$p" "$USED" || USED="$USED $p"; done
done
[ -n "$USED" ] || { echo "no proxy runs any of the scenarios $SCENARIOS" >&2; exit 2; }
uses() { in_list "$1" "$USED"; }
has() { in_list "$1" "$SCENARIOS"; }

LUA_MODULES=/usr/lib/nginx/modules
TOOLS="nginx wrk python3 curl openssl"
uses haproxy && TOOLS="$TOOLS haproxy"
uses caddy && TOOLS="$TOOLS caddy"
has grpc && TOOLS="$TOOLS h2load nghttp nghttpd"
has tls13-new && TOOLS="$TOOLS cc"
for tool in $TOOLS; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx wrk haproxy caddy libnginx-mod-http-lua nghttp2-client nghttp2-server openssl gcc)" >&2; exit 1; }
done
if uses openresty && [ ! -f "$LUA_MODULES/ngx_http_lua_module.so" ]; then
  echo "needs $LUA_MODULES/ngx_http_lua_module.so (apt-get install -y libnginx-mod-http-lua)" >&2; exit 1
fi
BIN=${GATEHOUSE_BIN:-target/release/gatehouse}
if uses gatehouse && [ ! -x "$BIN" ]; then cargo build --release; fi

WORK=$(mktemp -d /tmp/gatehouse-compare.XXXXXX)
ORIGIN_PORT=19180 ORIGIN_TLS_PORT=19443 ORIGIN_GRPC_PORT=19181 ORIGIN_CHECK_PORT=19444
NGINX_PORT=18090 NGINX_TLS_PORT=18443 NGINX_GRPC_PORT=18093
GH_PORT=18091 GH_TLS_PORT=18444 GH_ADMIN=19191  # GH_PORT and GH_ADMIN: loadtest/gatehouse.yaml's
GHB_PORT=18097 GHB_TLS_PORT=18446 GHB_ADMIN=19192
HA_PORT=18092 HA_TLS_PORT=18445 HA_GRPC_PORT=18094
OR_PORT=18095 CADDY_PORT=18096
ports_free $ORIGIN_PORT $ORIGIN_TLS_PORT $ORIGIN_GRPC_PORT $ORIGIN_CHECK_PORT $NGINX_PORT $NGINX_TLS_PORT \
  $NGINX_GRPC_PORT $GH_PORT $GH_TLS_PORT $GH_ADMIN $HA_PORT $HA_TLS_PORT $HA_GRPC_PORT $OR_PORT $CADDY_PORT
[ -z "$BIN_B" ] || ports_free $GHB_PORT $GHB_TLS_PORT $GHB_ADMIN

GH_PID="" GHB_PID="" HA_PID="" CADDY_PID=""
cleanup() {
  # gatehouse and Caddy stop on SIGINT; HAProxy needs SIGTERM; nginx masters stop on SIGTERM.
  [ -n "$GH_PID" ] && kill -INT "$GH_PID" 2>/dev/null || true
  [ -n "$GHB_PID" ] && kill -INT "$GHB_PID" 2>/dev/null || true
  [ -n "$CADDY_PID" ] && kill -INT "$CADDY_PID" 2>/dev/null || true
  [ -n "$HA_PID" ] && kill -TERM "$HA_PID" 2>/dev/null || true
  for f in origin proxy openresty grpc-origin; do
    [ -f "$WORK/$f.pid" ] && kill "$(cat "$WORK/$f.pid")" 2>/dev/null || true
  done
}
trap cleanup EXIT

mkdir -p "$WORK/cache" "$WORK/tmp"
# nginx workers run as an unprivileged user: let them write their cache and temp files.
chmod 755 "$WORK"; chmod 777 "$WORK/cache" "$WORK/tmp"
write_bench_pki "$WORK"
chmod 755 "$WORK/pki"
write_origin_conf "$WORK" "$ORIGIN_PORT" "$ORIGIN_TLS_PORT" "$ORIGIN_CHECK_PORT"
# The request of the grpc scenario: one message, HelloRequest{name: "Ada"}.
printf '\0\0\0\0\005\012\003Ada' > "$WORK/grpc-req.bin"

# The upstream request headers every nginx-based proxy sets (repeated in a location that sets
# its own: proxy_set_header there replaces the server-level list, and without
# Connection "" the upstream keep-alive would be lost).
NGINX_PROXY_HEADERS='proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Real-IP $remote_addr;'

# nginx: every scenario, the client-side TLS 1.3 listener in the same server.
{ nginx_head "$WORK" proxy
  cat <<NGX
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
  # TLS to the origin: an idle pool as large as the load's concurrency, so no proxy closes and
  # re-handshakes pooled connections under load (HAProxy's pool has no cap).
  upstream origin_tls { server 127.0.0.1:$ORIGIN_TLS_PORT; keepalive 256; }
  upstream origin_grpc { server 127.0.0.1:$ORIGIN_GRPC_PORT; keepalive 32; }
  map \$http_x_api_key \$consumer { default ""; "bench-key-0001" "bench"; }
  limit_req_zone \$consumer zone=perkey:10m rate=1000000r/s;
  proxy_cache_path $WORK/cache keys_zone=products:10m max_size=256m;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    listen 127.0.0.1:$NGINX_TLS_PORT ssl;
    ssl_certificate $WORK/pki/proxy.pem;
    ssl_certificate_key $WORK/pki/proxy.key;
    ssl_protocols TLSv1.3;
    proxy_http_version 1.1;
    $NGINX_PROXY_HEADERS
    location /api/v1/orders {
      default_type application/json;
      if (\$consumer = "") { return 401 '{"message":"Invalid authentication credentials"}'; }
      limit_req zone=perkey burst=1000000 nodelay;
      $NGINX_PROXY_HEADERS
      proxy_set_header X-Consumer-Username \$consumer;
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header X-API-Key "";
      add_header X-Request-ID \$request_id always;
      add_header X-Frame-Options DENY always;
      add_header X-Content-Type-Options nosniff always;
      proxy_pass http://origin;
    }
    location /api/v1/products {
      proxy_cache products;
      proxy_cache_valid 200 5m;
      proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status;
      proxy_pass http://origin;
    }
    location /api/v1/tls {
      proxy_pass https://origin_tls;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $WORK/pki/ca.pem;
      proxy_ssl_name origin.bench.internal;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
    location / { proxy_pass http://origin; }
  }
  server {
    listen 127.0.0.1:$NGINX_GRPC_PORT http2;
    location /bench.Echo/ { grpc_pass grpc://origin_grpc; }
  }
}
NGX
} > "$WORK/proxy.conf"

# openresty: the chain as Kong's plugins run it (key-auth, rate-limiting with the local
# policy, correlation-id, response headers), Lua in the access and header_filter phases of
# nginx with LuaJIT.
{ echo "load_module $LUA_MODULES/ndk_http_module.so;"
  echo "load_module $LUA_MODULES/ngx_http_lua_module.so;"
  nginx_head "$WORK" openresty
  cat <<NGX
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
  lua_shared_dict rate_limit 10m;
  init_by_lua_block {
    -- key-auth's credentials, loaded once (Kong keeps them in its cache): key -> consumer
    consumers_by_key = {
      ["bench-key-0001"] = { id = "5f0e2a8c-3b1d-4c6e-9a7f-1d2e3f4a5b6c", username = "bench" },
    }
  }
  server {
    listen 127.0.0.1:$OR_PORT;
    proxy_http_version 1.1;
    $NGINX_PROXY_HEADERS
    location /api/v1/orders {
      access_by_lua_block {
        -- key-auth: the key header -> consumer, else a 401 JSON answer
        local consumer = consumers_by_key[ngx.var.http_x_api_key or ""]
        if not consumer then
          ngx.status = 401
          ngx.header["Content-Type"] = "application/json; charset=utf-8"
          ngx.print('{"message":"Invalid authentication credentials"}')
          return ngx.exit(401)
        end
        ngx.req.clear_header("X-API-Key")
        ngx.req.set_header("X-Consumer-Username", consumer.username)
        -- rate-limiting, local policy: one counter per consumer and second in shared memory
        local count = ngx.shared.rate_limit:incr(consumer.username .. ":" .. ngx.time(), 1, 0, 1)
        if count and count > 1000000 then
          ngx.status = 429
          ngx.header["Content-Type"] = "application/json; charset=utf-8"
          ngx.print('{"message":"API rate limit exceeded"}')
          return ngx.exit(429)
        end
        -- correlation-id: upstream here, to the client in header_filter (ngx.var.request_id
        -- makes a new id at each read: the request keeps it in ngx.ctx, as Kong does)
        local id = ngx.var.request_id
        ngx.ctx.request_id = id
        ngx.req.set_header("X-Request-ID", id)
      }
      header_filter_by_lua_block {
        ngx.header["X-Request-ID"] = ngx.ctx.request_id
        ngx.header["X-Frame-Options"] = "DENY"
        ngx.header["X-Content-Type-Options"] = "nosniff"
      }
      proxy_pass http://origin;
    }
    location / { proxy_pass http://origin; }
  }
}
NGX
} > "$WORK/openresty.conf"

# HAProxy: one frontend (plain and TLS 1.3 binds) routing by path as the others do, and one
# for gRPC.
printf 'bench-key-0001 bench\n' > "$WORK/api-keys.map"
cat > "$WORK/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 8000
  ssl-server-verify required
  log stderr format raw local0
defaults
  mode http
  # errors only, to haproxy.out
  log global
  option httplog
  option dontlog-normal
  option forwardfor
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  # reuse idle server connections across client connections, as nginx's keepalive pool does
  http-reuse always
cache products
  total-max-size 64
  max-object-size 65536
  max-age 300
backend per_consumer
  stick-table type string len 64 size 10k expire 10s store http_req_rate(1s)
frontend http_in
  bind 127.0.0.1:$HA_PORT
  bind 127.0.0.1:$HA_TLS_PORT ssl crt $WORK/pki/proxy.bundle.pem ssl-min-ver TLSv1.3
  unique-id-format %[uuid()]
  use_backend chain if { path_beg /api/v1/orders }
  use_backend cached if { path_beg /api/v1/products }
  use_backend origin_tls if { path_beg /api/v1/tls }
  default_backend origin
frontend grpc_in
  bind 127.0.0.1:$HA_GRPC_PORT proto h2
  default_backend origin_grpc
backend origin
  server origin 127.0.0.1:$ORIGIN_PORT
backend chain
  http-request set-var(txn.consumer) req.hdr(x-api-key),map($WORK/api-keys.map)
  http-request return status 401 content-type application/json string '{"message":"Invalid authentication credentials"}' unless { var(txn.consumer) -m found }
  http-request track-sc0 var(txn.consumer) table per_consumer
  http-request deny deny_status 429 content-type application/json string '{"message":"API rate limit exceeded"}' if { sc_http_req_rate(0) gt 1000000 }
  http-request del-header X-API-Key
  http-request set-header X-Consumer-Username %[var(txn.consumer)]
  http-request set-header X-Request-ID %[unique-id]
  http-after-response set-header X-Request-ID %[unique-id]
  http-after-response set-header X-Frame-Options DENY
  http-after-response set-header X-Content-Type-Options nosniff
  server origin 127.0.0.1:$ORIGIN_PORT
backend cached
  http-request cache-use products
  http-response cache-store products
  server origin 127.0.0.1:$ORIGIN_PORT
backend origin_tls
  server origin 127.0.0.1:$ORIGIN_TLS_PORT ssl verify required ca-file $WORK/pki/ca.pem sni str(origin.bench.internal) verifyhost origin.bench.internal
backend origin_grpc
  server origin 127.0.0.1:$ORIGIN_GRPC_PORT proto h2
HAP

# Caddy: the plain proxy, keep-alive to the origin with an idle pool of 32 as nginx's.
cat > "$WORK/Caddyfile" <<CADDY
{
	admin off
	auto_https off
}
http://:$CADDY_PORT {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:$ORIGIN_PORT {
		transport http {
			keepalive 2m
			keepalive_idle_conns 32
			keepalive_idle_conns_per_host 32
		}
	}
}
CADDY

# gatehouse: loadtest/gatehouse.yaml plus the TLS 1.3 listener, an HTTPS upstream verified
# against the run's CA, an h2c upstream, their routes, and (grpc) h2c on the plain listener.
GH_CONF="$WORK/gatehouse.yaml"
python3 - loadtest/gatehouse.yaml "$GH_CONF" "$WORK" "$(has grpc && echo true || echo false)" \
  "$ORIGIN_TLS_PORT" "$ORIGIN_GRPC_PORT" "$GH_TLS_PORT" <<'PY'
import sys
src, dst, work, grpc, tls_port, grpc_port, gh_tls_port = sys.argv[1:8]
text = open(src).read()
ups = (f'  - name: origin-tls\n    targets: [{{ addr: "127.0.0.1:{tls_port}" }}]\n'
       f'    keepalive: 256\n    tls: {{ ca: {work}/pki/ca.pem, sni: origin.bench.internal }}\n'
       f'  - name: origin-grpc\n    targets: [{{ addr: "127.0.0.1:{grpc_port}" }}]\n'
       f'    keepalive: 32\n    protocol: h2c\n')
routes = ('  - name: tls-users\n    paths: ["/api/v1/tls"]\n    upstream: origin-tls\n'
          '  - name: grpc\n    paths: ["/bench.Echo"]\n    upstream: origin-grpc\n')
listener = (f'  tls:\n    listen: ["127.0.0.1:{gh_tls_port}"]\n    cert: {work}/pki/proxy.pem\n'
            f'    key: {work}/pki/proxy.key\n    min_version: "1.3"\n')
text = text.replace("upstreams:\n", "upstreams:\n" + ups, 1)
text = text.replace("routes:\n", "routes:\n" + routes, 1)
text = text.replace("server:\n", "server:\n" + listener + ("  h2c: true\n" if grpc == "true" else ""), 1)
open(dst, "w").write(text)
PY
# gatehouse-b: the same config on its own ports, pid file and upgrade socket.
sed -e "s/127.0.0.1:$GH_PORT/127.0.0.1:$GHB_PORT/; s/127.0.0.1:$GH_TLS_PORT/127.0.0.1:$GHB_TLS_PORT/" \
  -e "s/127.0.0.1:$GH_ADMIN/127.0.0.1:$GHB_ADMIN/; s#gatehouse-loadtest\.#gatehouse-loadtest-b.#" \
  "$GH_CONF" > "$WORK/gatehouse-b.yaml"

nginx -c "$WORK/origin.conf" -p "$WORK"
has grpc && start_grpc_origin "$WORK" "$ORIGIN_GRPC_PORT"
uses nginx && nginx -c "$WORK/proxy.conf" -p "$WORK"
if uses openresty; then
  nginx -c "$WORK/openresty.conf" -p "$WORK" \
    || { echo "nginx with the Lua module did not start:" >&2; cat "$WORK/openresty.err" >&2; exit 1; }
fi
if uses gatehouse; then
  GATEHOUSE_LOG=warn "$BIN" -c "$GH_CONF" >"$WORK/gatehouse.out" 2>"$WORK/gatehouse.err" &
  GH_PID=$!
fi
if uses gatehouse-b; then
  GATEHOUSE_LOG=warn "$BIN_B" -c "$WORK/gatehouse-b.yaml" >"$WORK/gatehouse-b.out" 2>"$WORK/gatehouse-b.err" &
  GHB_PID=$!
fi
if uses haproxy; then
  haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 &
  HA_PID=$!
fi
if uses caddy; then
  GOMAXPROCS=1 HOME=$WORK XDG_DATA_HOME=$WORK/caddy XDG_CONFIG_HOME=$WORK/caddy \
    caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.out" 2>&1 &
  CADDY_PID=$!
fi
port_for() {  # proxy scenario
  case "$1:$2" in
    gatehouse:tls13*) echo "$GH_TLS_PORT" ;;
    gatehouse:*) echo "$GH_PORT" ;;
    gatehouse-b:tls13*) echo "$GHB_TLS_PORT" ;;
    gatehouse-b:*) echo "$GHB_PORT" ;;
    nginx:grpc) echo "$NGINX_GRPC_PORT" ;;
    nginx:tls13*) echo "$NGINX_TLS_PORT" ;;
    nginx:*) echo "$NGINX_PORT" ;;
    haproxy:grpc) echo "$HA_GRPC_PORT" ;;
    haproxy:tls13*) echo "$HA_TLS_PORT" ;;
    haproxy:*) echo "$HA_PORT" ;;
    openresty:*) echo "$OR_PORT" ;;
    caddy:*) echo "$CADDY_PORT" ;;
  esac
}
for p in $USED; do
  wait_answer "http://127.0.0.1:$(port_for "$p" plain)/" \
    || { echo "$p did not start (its output and logs are in $WORK)" >&2; exit 1; }
done

proxy_pids() {
  case "$1" in
    nginx) nginx_pids "$WORK/proxy.pid" ;;
    openresty) nginx_pids "$WORK/openresty.pid" ;;
    haproxy) echo "$HA_PID" ;;
    caddy) echo "$CADDY_PID" ;;
    gatehouse) echo "$GH_PID" ;;
    gatehouse-b) echo "$GHB_PID" ;;
  esac
}
TCK=$(getconf CLK_TCK)
url_for() {  # proxy scenario
  case "$2" in
    # localhost (127.0.0.1 in /etc/hosts): wrk sends the URL's host as SNI, and an IP address
    # there is not a valid server name (rustls logs a warning for each such handshake).
    tls13*) echo "https://localhost:$(port_for "$1" "$2")" ;;
    *) echo "http://127.0.0.1:$(port_for "$1" "$2")" ;;
  esac
}
script_for() {
  case "$1" in
    plain|tls13) echo loadtest/plain.lua ;;
    chain) echo loadtest/apikey.lua ;;
    cached) echo loadtest/cached.lua ;;
    tls) echo loadtest/tls.lua ;;
    tls13-new) echo loadtest/handshake.lua ;;
  esac
}

# h2load for the grpc scenario: c/10 connections with 10 concurrent streams each.
h2load_run() {  # port conns duration_s log
  local hc=$(( $2 / 10 )); [ "$hc" -ge 1 ] || hc=1
  h2load -t1 -c"$hc" -m10 -D"$3" -d "$WORK/grpc-req.bin" -H 'content-type: application/grpc' \
    -H 'te: trailers' --log-file="$4" "http://127.0.0.1:$1/bench.Echo/Unary"
}

# Every proxy must do the scenario's job before it is measured (see the header).
bad() { echo "$1 $2: $3" >&2; exit 1; }
preflight() {  # proxy scenario
  local p=$1 sc=$2 port base out a b
  port=$(port_for "$p" "$sc")
  base="http://127.0.0.1:$port"
  case "$sc" in
    grpc)
      nghttp -v -d "$WORK/grpc-req.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "$base/bench.Echo/Unary" > "$WORK/nghttp.out" 2>&1 || true
      grep -aq 'grpc-status: 0' "$WORK/nghttp.out" && grep -aq 'hello' "$WORK/nghttp.out" \
        || { tail -20 "$WORK/nghttp.out" >&2; bad "$p" "$sc" "no gRPC answer with its trailer"; }
      ;;
    tls13*)
      curl -sSf -o /dev/null --tlsv1.3 --cacert "$WORK/pki/ca.pem" "$(url_for "$p" "$sc")/api/v1/users/42" \
        || bad "$p" "$sc" "no 2xx over TLS 1.3 with the run's P-256 certificate for localhost"
      if curl -s -o /dev/null -k --tlsv1.2 --tls-max 1.2 "$(url_for "$p" "$sc")/api/v1/users/42"; then
        bad "$p" "$sc" "accepts TLS 1.2 (TLS 1.3 only expected)"
      fi
      ;;
    chain)
      out=$(curl -sS -D - -H 'X-API-Key: bench-key-0001' "$base/api/v1/orders/echo" | tr -d '\r')
      a=$(printf '%s\n' "$out" | sed -n 's/.*"request_id":"\([^"]*\)".*/\1/p')
      b=$(printf '%s\n' "$out" | sed -n 's/^[Xx]-[Rr]equest-[Ii][Dd]: //p')
      printf '%s\n' "$out" | grep -q '^HTTP/1.1 200' || bad "$p" "$sc" "no 200 with the key: $out"
      printf '%s\n' "$out" | grep -q '"api_key":"","consumer":"bench"' \
        || bad "$p" "$sc" "the key must be removed and the consumer sent upstream: $out"
      [ -n "$a" ] && [ "$a" = "$b" ] || bad "$p" "$sc" "the same request id upstream and in the answer expected: $out"
      printf '%s\n' "$out" | grep -qi '^x-frame-options: DENY' && printf '%s\n' "$out" | grep -qi '^x-content-type-options: nosniff' \
        || bad "$p" "$sc" "X-Frame-Options and X-Content-Type-Options expected: $out"
      out=$(curl -s -o /dev/null -w '%{http_code} %{content_type}' "$base/api/v1/orders/7")
      case "$out" in "401 application/json"*) ;; *) bad "$p" "$sc" "401 JSON without a key expected, got $out" ;; esac
      ;;
    cached)
      a=$(curl -sSf "$base/api/v1/products/19") && b=$(curl -sSf "$base/api/v1/products/19") \
        || bad "$p" "$sc" "no 2xx"
      [ "$a" = "$b" ] || bad "$p" "$sc" "the second GET was not answered from the cache"
      ;;
    plain) curl -sSf -o /dev/null "$base/api/v1/users/42" || bad "$p" "$sc" "no 2xx" ;;
    tls) curl -sSf -o /dev/null "$base/api/v1/tls/42" || bad "$p" "$sc" "no 2xx" ;;
  esac
}
for sc in $SCENARIOS; do
  for p in $(proxies_for "$sc"); do preflight "$p" "$sc"; done
done

# tls13-new: wrk resumes TLS sessions on its own (the check sees it), and makes only full
# handshakes with no_resume.so preloaded. Checked against an HTTPS listener of the origin that
# logs requests on resumed sessions.
if has tls13-new; then
  cc -shared -fPIC -O2 -o "$WORK/no_resume.so" loadtest/no_resume.c -ldl
  resumed() { wc -l < "$WORK/origin-resumed.log" 2>/dev/null || echo 0; }
  wrk -t1 -c4 -d1s -s loadtest/handshake.lua "https://localhost:$ORIGIN_CHECK_PORT" > "$WORK/wrk.out" 2>&1 \
    || { tail -3 "$WORK/wrk.out" >&2; exit 1; }
  [ "$(resumed)" -gt 0 ] || { echo "the resumption check sees no resumed handshake from plain wrk" >&2; exit 1; }
  : > "$WORK/origin-resumed.log"
  LD_PRELOAD="$WORK/no_resume.so" wrk -t1 -c4 -d1s -s loadtest/handshake.lua "https://localhost:$ORIGIN_CHECK_PORT" > "$WORK/wrk.out" 2>&1 \
    || { tail -3 "$WORK/wrk.out" >&2; exit 1; }
  [ "$(resumed)" -eq 0 ] || { echo "wrk resumed $(resumed) TLS sessions with no_resume.so preloaded" >&2; exit 1; }
fi

RESULTS="$WORK/results.tsv"
: > "$RESULTS"
run_one() {  # proxy scenario conns round
  local proxy=$1 sc=$2 c=$3 r=$4 port pids ticks before after before_sys after_sys
  port=$(port_for "$proxy" "$sc")
  pids=$(proxy_pids "$proxy" | tr '\n' ' ')
  if [ "$sc" = grpc ]; then
    h2load_run "$port" "$c" 2 "$WORK/h2load.log" > "$WORK/h2load.out" 2>&1 \
      || { echo "$proxy $sc warm-up failed:" >&2; tail -5 "$WORK/h2load.out" >&2; exit 1; }
    ticks=$(cpu_ticks $pids)  # a separate assignment: a gone process stops the run
    read -r before before_sys <<< "$ticks"
    h2load_run "$port" "$c" "$DURATION" "$WORK/h2load.log" > "$WORK/h2load.out" 2>&1 \
      || { echo "$proxy $sc failed:" >&2; tail -5 "$WORK/h2load.out" >&2; exit 1; }
    ticks=$(cpu_ticks $pids)
    read -r after after_sys <<< "$ticks"
    python3 - "$WORK/h2load.out" "$WORK/h2load.log" "$proxy" "$sc" "$c" "$r" "$((after - before))" "$TCK" "$((after_sys - before_sys))" >> "$RESULTS" <<'PY'
import re, sys
out = open(sys.argv[1]).read()
log, proxy, sc, c, r, ticks, tck, sys_ticks = sys.argv[2:10]
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
done = int(req.group(3))
bad = sum(int(codes.group(i)) for i in (2, 3, 4)) + int(req.group(5)) + int(req.group(6))
lat = sorted(int(l.split("\t")[2]) / 1000.0 for l in open(log) if l.count("\t") >= 2)
pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] if lat else 0
cpu_us = int(ticks) / int(tck) * 1e6 / max(done, 1)
sys_us = int(sys_ticks) / int(tck) * 1e6 / max(done, 1)
if bad:
    sys.stderr.write(f"{proxy} {sc}: {bad} answers not 2xx or failed\n" + out[-600:])
    sys.exit(1)
print("\t".join(map(str, [sc, c, proxy, r, rps, pct(0.5), pct(0.99), cpu_us, bad, sys_us])))
PY
    return
  fi
  local url script preload=""
  url=$(url_for "$proxy" "$sc")
  script=$(script_for "$sc")
  [ "$sc" = tls13-new ] && preload="$WORK/no_resume.so"
  # warm-up (fills caches and pools), then the measured run
  LD_PRELOAD=$preload API_KEY=bench-key-0001 wrk -t1 -c"$c" -d2s -s "$script" "$url" > "$WORK/wrk.out" 2>&1 \
    || { echo "$proxy $sc warm-up failed:" >&2; tail -3 "$WORK/wrk.out" >&2; exit 1; }
  ticks=$(cpu_ticks $pids)
  read -r before before_sys <<< "$ticks"
  LD_PRELOAD=$preload API_KEY=bench-key-0001 wrk -t1 -c"$c" -d"${DURATION}s" --latency -s "$script" "$url" > "$WORK/wrk.out" 2>&1 \
    || { echo "$proxy $sc failed:" >&2; tail -3 "$WORK/wrk.out" >&2; exit 1; }
  ticks=$(cpu_ticks $pids)
  read -r after after_sys <<< "$ticks"
  python3 - "$WORK/wrk.out" "$proxy" "$sc" "$c" "$r" "$((after - before))" "$TCK" "$((after_sys - before_sys))" >> "$RESULTS" <<'PY'
import re, sys
out = open(sys.argv[1]).read()
proxy, sc, c, r, ticks, tck, sys_ticks = sys.argv[2:9]
def ms(v, u):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
cpu_us = int(ticks) / int(tck) * 1e6 / max(total, 1)
sys_us = int(sys_ticks) / int(tck) * 1e6 / max(total, 1)
print("\t".join(map(str, [sc, c, proxy, r, rps, lat.get("50", 0), lat.get("99", 0), cpu_us, non2xx.group(1) if non2xx else 0, sys_us])))
PY
}

for c in $CONNS; do
  for sc in $SCENARIOS; do
    for r in $(seq "$ROUNDS"); do
      # Rotate the order every round: each proxy runs first, last (and between) in turn.
      set -- $(proxies_for "$sc")
      [ $# -gt 0 ] || continue
      for _ in $(seq $(( (r - 1) % $# ))); do set -- "${@:2}" "$1"; done
      for p in "$@"; do run_one "$p" "$sc" "$c" "$r"; done
    done
  done
done

python3 - "$RESULTS" "$SCENARIOS" "$ALL_PROXIES" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order, proxies = sys.argv[2].split(), sys.argv[3].split()
by = {}
for sc, c, proxy, r, rps, p50, p99, cpu, bad, sys_us in rows:
    by.setdefault((sc, int(c), proxy), []).append(
        (float(rps), float(p50), float(p99), float(cpu), int(bad), float(sys_us)))
if not by:
    sys.exit("no results")
# [req/s, p50, p99, CPU µs, non-2xx (sum), kernel µs]: medians over the rounds
med = {k: [statistics.median(x[i] for x in v) for i in range(4)] + [sum(x[4] for x in v)]
       + [statistics.median(x[5] for x in v)] for k, v in by.items()}
cells = sorted({(k[0], k[1]) for k in by}, key=lambda k: (k[1], order.index(k[0])))
G = "gatehouse"

# A second gatehouse build (--gatehouse-b) is compared with, never counted as the best peer.
def best_peer(sc, c):
    peers = [p for p in proxies if not p.startswith(G) and (sc, c, p) in med]
    return min(peers, key=lambda p: med[(sc, c, p)][3]) if peers else None

print(f"{'scenario':9} {'conns':>5} {'proxy':16} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'user':>6} {'kernel':>6} {'non-2xx':>7}")
for sc, c in cells:
    for p in proxies:
        if (sc, c, p) in med:
            rps, p50, p99, cpu, bad, ker = med[(sc, c, p)]
            print(f"{sc:9} {c:>5} {p:16} {rps:>9.0f} {p50:>7.2f} {p99:>7.2f} {cpu:>10.1f} {cpu - ker:>6.1f} {ker:>6.1f} {bad:>7}")
    g, best = med.get((sc, c, G)), best_peer(sc, c)
    if not g:
        continue
    for p in [q for q in proxies if q != G and (sc, c, q) in med] + ([f"best={best}"] if best else []):
        o = med[(sc, c, p.split("=")[-1])]
        print(f"{'':9} {'':>5} {'g/' + p:16} {g[0]/o[0]:>9.2f} {g[1]/o[1]:>7.2f} {g[2]/o[2]:>7.2f} {g[3]/o[3]:>10.2f}")

print("\nCPU microseconds per request (medians), gatehouse/best peer (lowest CPU) and gatehouse/each peer:")
shown = [p for p in proxies if any(k[2] == p for k in by)]
peers = [p for p in shown if p != G]
print(f"{'scenario':9} {'conns':>5} " + " ".join(f"{p:>9}" for p in shown)
      + f" {'g/best':>7} {'best':>9} " + " ".join(f"{'g/' + p:>11}" for p in peers))
for sc, c in cells:
    cpu = {p: med[(sc, c, p)][3] for p in shown if (sc, c, p) in med}
    g, best = cpu.get(G), best_peer(sc, c)
    line = f"{sc:9} {c:>5} " + " ".join(f"{cpu[p]:>9.1f}" if p in cpu else f"{'-':>9}" for p in shown)
    line += f" {g / cpu[best]:>7.2f} {best:>9} " if g and best else f" {'-':>7} {best or '-':>9} "
    line += " ".join(f"{g / cpu[p]:>11.2f}" if g and p in cpu else f"{'-':>11}" for p in peers)
    print(line)
print(f"\nrounds per cell: {len(next(iter(by.values())))}, medians shown; raw rows: {sys.argv[1]}")
PY
if uses gatehouse; then
  echo "gatehouse RSS after load: $(awk '/VmRSS/{print $2" "$3}' "/proc/$GH_PID/status")"
fi
