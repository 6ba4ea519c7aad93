#!/usr/bin/env bash
# Side-by-side load test: gatehouse vs nginx (and HAProxy for the tls and grpc scenarios)
# doing the same job, one worker each, on loopback.
#
#   loadtest/compare.sh [--rounds 3] [--duration 10] [--conns "50 200"] \
#                       [--scenarios "plain chain cached tls grpc"]
#
# Starts an origin (nginx, 1 worker, static JSON; for tls also over HTTPS; for grpc a gRPC
# server over h2c, nghttpd with 1 worker), an nginx reverse proxy, HAProxy (tls and grpc only,
# nbthread 1) and
# gatehouse (release build, loadtest/gatehouse.yaml plus the tls/grpc upstreams and routes,
# threads: 1), then runs the load interleaved (the proxies' order rotates every round) for
# several rounds per scenario and connection count. Prints req/s, p50/p99 latency and CPU
# microseconds per request (utime+stime of the proxy's processes from /proc, divided by the
# requests completed), medians over the rounds, and the gatehouse/nginx and gatehouse/HAProxy
# ratios. The machine is shared and noisy: compare ratios from one run, not absolute numbers
# across runs. Traffic goes to 127.0.0.1 only.
#
# Scenarios (same paths on every proxy; a scenario with any non-2xx answer stops the run):
#   plain   GET /api/v1/users/42                       plain reverse proxy
#   chain   GET /api/v1/orders/7 with X-API-Key        API key + rate limit + header rewrites
#   cached  GET /api/v1/products/{0..19}               response cache (nginx proxy_cache)
#   tls     GET /api/v1/tls/42                         HTTPS to the origin, certificate verified
#                                                      against a CA made for the run (nginx
#                                                      proxy_ssl_verify, HAProxy ssl verify
#                                                      required ca-file); pooled connections
#                                                      (an idle pool of 256 on every proxy)
#   grpc    POST /bench.Echo/Unary (h2load)            gRPC unary over h2c on both legs (nginx
#                                                      http2 + grpc_pass, HAProxy proto h2);
#                                                      "conns" c = c/10 connections x 10 streams
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

ROUNDS=3 DURATION=10 CONNS="50 200" SCENARIOS="plain chain cached tls grpc"
parse_opts "ROUNDS DURATION CONNS SCENARIOS" "$@"

has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
EXTRA=false
if has tls || has grpc; then EXTRA=true; fi
TOOLS="nginx wrk python3"
$EXTRA && TOOLS="$TOOLS haproxy openssl"
has grpc && TOOLS="$TOOLS h2load nghttp nghttpd"
# shellcheck disable=SC2086 # TOOLS is a list of words
need_tools "nginx-light wrk haproxy nghttp2-client nghttp2-server openssl" $TOOLS
BIN=${GATEHOUSE_BIN:-target/release/gatehouse}
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d /tmp/gatehouse-compare.XXXXXX)
ORIGIN_PORT=19180 NGINX_PORT=18090 GH_PORT=18091 GH_ADMIN=19191
# tls and grpc: the origin's HTTPS and h2c ports, nginx's h2c listener, HAProxy's two.
ORIGIN_TLS_PORT=19443 ORIGIN_GRPC_PORT=19181 NGINX_GRPC_PORT=18093 HA_PORT=18092 HA_GRPC_PORT=18094
# A listener left on one of these ports (HAProxy and Pingora bind with SO_REUSEPORT) would
# silently take a share of the connections.
for port in $ORIGIN_PORT $NGINX_PORT $GH_PORT $GH_ADMIN $ORIGIN_TLS_PORT $ORIGIN_GRPC_PORT $NGINX_GRPC_PORT $HA_PORT $HA_GRPC_PORT; do
  if ss -Htln "sport = :$port" | grep -q .; then echo "port $port is in use: stop what listens there first" >&2; exit 1; fi
done
PIDS=() HA_PID=""
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -INT "$p" 2>/dev/null || true; done
  # HAProxy stops on SIGTERM (SIGINT does not stop it)
  [ -n "$HA_PID" ] && kill -TERM "$HA_PID" 2>/dev/null || true
  [ -f "$WORK/origin.pid" ] && kill "$(cat "$WORK/origin.pid")" 2>/dev/null || true
  [ -f "$WORK/proxy.pid" ] && kill "$(cat "$WORK/proxy.pid")" 2>/dev/null || true
  [ -f "$WORK/grpc-origin.pid" ] && kill "$(cat "$WORK/grpc-origin.pid")" 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$WORK/cache" "$WORK/tmp"
# nginx workers run as an unprivileged user: let them write their cache and temp files.
chmod 755 "$WORK"; chmod 777 "$WORK/cache" "$WORK/tmp"
if $EXTRA; then
  write_bench_pki "$WORK"
  chmod 755 "$WORK/pki"
  write_origin_conf "$WORK" "$ORIGIN_PORT" "$ORIGIN_TLS_PORT"
  # The request of the grpc scenario: one message, HelloRequest{name: "Ada"}.
  printf '\0\0\0\0\005\012\003Ada' > "$WORK/grpc-req.bin"
else
  write_origin_conf "$WORK" "$ORIGIN_PORT"
fi

# nginx's share of the tls and grpc scenarios (empty without them).
NGINX_EXTRA_UPSTREAMS="" NGINX_EXTRA_LOCATIONS="" NGINX_EXTRA_SERVERS=""
if $EXTRA; then
  # TLS: an idle pool as large as the load's concurrency, so no proxy closes and re-handshakes
  # pooled connections under load (HAProxy's pool has no cap).
  NGINX_EXTRA_UPSTREAMS="upstream origin_tls { server 127.0.0.1:$ORIGIN_TLS_PORT; keepalive 256; }
  upstream origin_grpc { server 127.0.0.1:$ORIGIN_GRPC_PORT; keepalive 32; }"
  NGINX_EXTRA_LOCATIONS="location /api/v1/tls {
      proxy_pass https://origin_tls;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $WORK/pki/ca.pem;
      proxy_ssl_name origin.bench.internal;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }"
  NGINX_EXTRA_SERVERS="server {
    listen 127.0.0.1:$NGINX_GRPC_PORT http2;
    location /bench.Echo/ { grpc_pass grpc://origin_grpc; }
  }"
fi

{ nginx_main "$WORK" proxy; cat <<NGX
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
  $NGINX_EXTRA_UPSTREAMS
  map \$http_x_api_key \$consumer { default ""; "bench-key-0001" "bench"; }
  limit_req_zone \$consumer zone=perkey:10m rate=1000000r/s;
  proxy_cache_path $WORK/cache keys_zone=products:10m max_size=256m;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$remote_addr;
    proxy_set_header X-Real-IP \$remote_addr;
    location /api/v1/orders {
      if (\$consumer = "") { return 401 '{"error":"invalid_api_key"}'; }
      limit_req zone=perkey burst=1000000 nodelay;
      # proxy_set_header at this level replaces the server-level list: repeat it, or the
      # upstream keep-alive (Connection "") is lost.
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Consumer-Username \$consumer;
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header X-API-Key "";
      add_header X-Request-ID \$request_id;
      add_header X-Frame-Options DENY;
      add_header X-Content-Type-Options nosniff;
      proxy_pass http://origin;
    }
    location /api/v1/products {
      proxy_cache products;
      proxy_cache_valid 200 5m;
      proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status;
      proxy_pass http://origin;
    }
    $NGINX_EXTRA_LOCATIONS
    location / { proxy_pass http://origin; }
  }
  $NGINX_EXTRA_SERVERS
}
NGX
} > "$WORK/proxy.conf"

# gatehouse: loadtest/gatehouse.yaml, plus (tls, grpc) an HTTPS upstream verified against the
# run's CA, an h2c upstream, their routes, and h2c on the listener for the grpc scenario.
GH_CONF="$WORK/gatehouse.yaml"
python3 - loadtest/gatehouse.yaml "$GH_CONF" "$WORK" "$EXTRA" "$(has grpc && echo true || echo false)" \
  "$ORIGIN_TLS_PORT" "$ORIGIN_GRPC_PORT" <<'PY'
import sys
src, dst, work, extra, grpc, tls_port, grpc_port = sys.argv[1:8]
text = open(src).read()
if extra == "true":
    ups = (f'  - name: origin-tls\n    targets: [{{ addr: "127.0.0.1:{tls_port}" }}]\n'
           f'    keepalive: 256\n    tls: {{ ca: {work}/pki/ca.pem, sni: origin.bench.internal }}\n'
           f'  - name: origin-grpc\n    targets: [{{ addr: "127.0.0.1:{grpc_port}" }}]\n'
           f'    keepalive: 32\n    protocol: h2c\n')
    routes = ('  - name: tls-users\n    paths: ["/api/v1/tls"]\n    upstream: origin-tls\n'
              '  - name: grpc\n    paths: ["/bench.Echo"]\n    upstream: origin-grpc\n')
    text = text.replace("upstreams:\n", "upstreams:\n" + ups, 1)
    text = text.replace("routes:\n", "routes:\n" + routes, 1)
if grpc == "true":
    text = text.replace("server:\n", "server:\n  h2c: true\n", 1)
open(dst, "w").write(text)
PY

if $EXTRA; then
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
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  # reuse idle server connections across client connections, as nginx's keepalive pool does
  http-reuse always
frontend tls_in
  bind 127.0.0.1:$HA_PORT
  default_backend origin_tls
frontend grpc_in
  bind 127.0.0.1:$HA_GRPC_PORT proto h2
  default_backend origin_grpc
backend origin_tls
  server origin 127.0.0.1:$ORIGIN_TLS_PORT ssl verify required ca-file $WORK/pki/ca.pem sni str(origin.bench.internal) verifyhost origin.bench.internal
backend origin_grpc
  server origin 127.0.0.1:$ORIGIN_GRPC_PORT proto h2
HAP
fi

nginx -c "$WORK/origin.conf" -p "$WORK"
has grpc && start_grpc_origin "$WORK" "$ORIGIN_GRPC_PORT"
nginx -c "$WORK/proxy.conf" -p "$WORK"
GATEHOUSE_LOG=warn "$BIN" -c "$GH_CONF" >"$WORK/gatehouse.out" 2>"$WORK/gatehouse.err" &
GH_PID=$!
PIDS+=("$GH_PID")
if $EXTRA; then
  haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 &
  HA_PID=$!
fi
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$GH_PORT/" && break; sleep 0.1; done
if $EXTRA; then
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$HA_PORT/" && break; sleep 0.1; done
  kill -0 "$HA_PID" 2>/dev/null || { echo "haproxy did not start:" >&2; cat "$WORK/haproxy.out" >&2; exit 1; }
fi

nginx_pids() { pgrep -f "nginx: worker process" | while read -r p; do
  [ "$(cat /proc/"$p"/status | awk '/^PPid/{print $2}')" = "$(cat "$WORK/proxy.pid")" ] && echo "$p"; done; echo "$(cat "$WORK/proxy.pid")"; }
cpu_ticks() { local t=0; for p in "$@"; do set -- $(cut -d' ' -f14,15 "/proc/$p/stat"); t=$((t + $1 + $2)); done; echo $t; }
TCK=$(getconf CLK_TCK)

script_for() { case "$1" in plain) echo loadtest/plain.lua ;; chain) echo loadtest/apikey.lua ;; cached) echo loadtest/cached.lua ;; tls) echo loadtest/tls.lua ;; esac; }
proxies_for() { case "$1" in tls|grpc) echo "nginx gatehouse haproxy" ;; *) echo "nginx gatehouse" ;; esac; }
port_for() {  # proxy scenario
  case "$1:$2" in
    gatehouse:*) echo "$GH_PORT" ;;
    nginx:grpc) echo "$NGINX_GRPC_PORT" ;;
    nginx:*) echo "$NGINX_PORT" ;;
    haproxy:grpc) echo "$HA_GRPC_PORT" ;;
    haproxy:*) echo "$HA_PORT" ;;
  esac
}

# h2load for the grpc scenario: c/10 connections with 10 concurrent streams each.
h2load_run() {  # port conns duration_s log
  local hc=$(( $2 / 10 )); [ "$hc" -ge 1 ] || hc=1
  h2load -t1 -c"$hc" -m10 -D"$3" -d "$WORK/grpc-req.bin" -H 'content-type: application/grpc' \
    -H 'te: trailers' --log-file="$4" "http://127.0.0.1:$1/bench.Echo/Unary"
}

# Every proxy must carry the gRPC answer whole: its message and the grpc-status trailer.
if has grpc; then
  for p in $(proxies_for grpc); do
    nghttp -v -d "$WORK/grpc-req.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
      "http://127.0.0.1:$(port_for "$p" grpc)/bench.Echo/Unary" > "$WORK/nghttp.out" 2>&1 || true
    grep -aq 'grpc-status: 0' "$WORK/nghttp.out" && grep -aq 'hello' "$WORK/nghttp.out" \
      || { echo "$p: no gRPC answer with its trailer:" >&2; tail -20 "$WORK/nghttp.out" >&2; exit 1; }
  done
fi

RESULTS="$WORK/results.tsv"
: > "$RESULTS"
run_one() {  # proxy scenario conns round
  local proxy=$1 sc=$2 c=$3 r=$4 port pids
  port=$(port_for "$proxy" "$sc")
  case "$proxy" in nginx) pids=$(nginx_pids | tr '\n' ' ') ;; haproxy) pids=$HA_PID ;; *) pids=$GH_PID ;; esac
  local before after
  if [ "$sc" = grpc ]; then
    h2load_run "$port" "$c" 2 "$WORK/h2load.log" > "$WORK/h2load.out" 2>&1 \
      || { echo "$proxy $sc warm-up failed:" >&2; tail -5 "$WORK/h2load.out" >&2; exit 1; }
    before=$(cpu_ticks $pids)
    h2load_run "$port" "$c" "$DURATION" "$WORK/h2load.log" > "$WORK/h2load.out" 2>&1 \
      || { echo "$proxy $sc failed:" >&2; tail -5 "$WORK/h2load.out" >&2; exit 1; }
    after=$(cpu_ticks $pids)
    python3 - "$WORK/h2load.out" "$WORK/h2load.log" "$proxy" "$sc" "$c" "$r" "$((after - before))" "$TCK" >> "$RESULTS" <<'PY'
import re, sys
out = open(sys.argv[1]).read()
log, proxy, sc, c, r, ticks, tck = sys.argv[2:9]
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
done = int(req.group(3))
bad = sum(int(codes.group(i)) for i in (2, 3, 4)) + int(req.group(5)) + int(req.group(6))
lat = sorted(int(l.split("\t")[2]) / 1000.0 for l in open(log) if l.count("\t") >= 2)
pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] if lat else 0
cpu_us = int(ticks) / int(tck) * 1e6 / max(done, 1)
if bad:
    sys.stderr.write(f"{proxy} {sc}: {bad} answers not 2xx or failed\n" + out[-600:])
    sys.exit(1)
print("\t".join(map(str, [sc, c, proxy, r, rps, pct(0.5), pct(0.99), cpu_us, bad])))
PY
    return
  fi
  # warm-up (fills caches and pools), then the measured run
  API_KEY=bench-key-0001 wrk -t1 -c"$c" -d2s -s "$(script_for "$sc")" "http://127.0.0.1:$port" > "$WORK/wrk.out" 2>&1 \
    || { echo "$proxy $sc warm-up failed:" >&2; tail -3 "$WORK/wrk.out" >&2; exit 1; }
  before=$(cpu_ticks $pids)
  API_KEY=bench-key-0001 wrk -t1 -c"$c" -d"${DURATION}s" --latency -s "$(script_for "$sc")" "http://127.0.0.1:$port" > "$WORK/wrk.out" 2>&1 \
    || { echo "$proxy $sc failed:" >&2; tail -3 "$WORK/wrk.out" >&2; exit 1; }
  after=$(cpu_ticks $pids)
  python3 - "$WORK/wrk.out" "$proxy" "$sc" "$c" "$r" "$((after - before))" "$TCK" >> "$RESULTS" <<'PY'
import re, sys
out = open(sys.argv[1]).read()
proxy, sc, c, r, ticks, tck = sys.argv[2:8]
def ms(v, u):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
cpu_us = int(ticks) / int(tck) * 1e6 / max(total, 1)
print("\t".join(map(str, [sc, c, proxy, r, rps, lat.get("50", 0), lat.get("99", 0), cpu_us, non2xx.group(1) if non2xx else 0])))
PY
}

for c in $CONNS; do
  for sc in $SCENARIOS; do
    for r in $(seq "$ROUNDS"); do
      # Rotate the order every round: each proxy runs first, last (and between) in turn.
      set -- $(proxies_for "$sc")
      for _ in $(seq $(( (r - 1) % $# ))); do set -- "${@:2}" "$1"; done
      for p in "$@"; do run_one "$p" "$sc" "$c" "$r"; done
    done
  done
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for sc, c, proxy, r, rps, p50, p99, cpu, bad in rows:
    by.setdefault((sc, int(c), proxy), []).append((float(rps), float(p50), float(p99), float(cpu), int(bad)))
med = lambda xs: statistics.median(xs)
print(f"{'scenario':8} {'conns':>5} {'proxy':10} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'non-2xx':>7}")
keys = sorted({(k[0], k[1]) for k in by}, key=lambda k: (k[1], k[0]))
for sc, c in keys:
    res = {}
    for proxy in ("nginx", "gatehouse", "haproxy"):
        v = by.get((sc, c, proxy))
        if not v:
            continue
        res[proxy] = [med([x[i] for x in v]) for i in range(4)] + [sum(x[4] for x in v)]
        rps, p50, p99, cpu, bad = res[proxy]
        print(f"{sc:8} {c:>5} {proxy:10} {rps:>9.0f} {p50:>7.2f} {p99:>7.2f} {cpu:>10.1f} {bad:>7}")
    g = res.get("gatehouse")
    for other, label in (("nginx", "ratio g/n"), ("haproxy", "ratio g/h")):
        o = res.get(other)
        if g and o:
            print(f"{'':8} {'':>5} {label:10} {g[0]/o[0]:>9.2f} {g[1]/o[1]:>7.2f} {g[2]/o[2]:>7.2f} {g[3]/o[3]:>10.2f}")
print(f"\nrounds per cell: {len(next(iter(by.values())))}, medians shown; raw rows: {sys.argv[1]}")
PY
echo "gatehouse RSS after load: $(awk '/VmRSS/{print $2" "$3}' /proc/$GH_PID/status)"
