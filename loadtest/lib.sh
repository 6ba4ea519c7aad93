# Shared by the load-test scripts (compare.sh, rss.sh, run.sh, origin.sh, memory.sh): option
# parsing, tool checks, the origin every proxy under test forwards to, and gatehouse started on
# loadtest/gatehouse.yaml.

# parse_opts "DURATION CONNS" "$@": `--duration 5` sets DURATION=5, for the listed names only
# (dashes become underscores); any other option stops the script.
parse_opts() {
  local allowed=" $1 " name
  shift
  while [ $# -gt 0 ]; do
    name=$(printf '%s' "${1#--}" | tr 'a-z-' 'A-Z_')
    case "$allowed" in
      *" $name "*) [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }; printf -v "$name" '%s' "$2"; shift 2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
  done
}

# need_tools "PACKAGES" TOOL...: stops the script, naming the apt-get packages, when a tool
# is missing.
need_tools() {
  local packages=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y $packages)" >&2; exit 1; }
  done
}

# nginx_head WORK NAME: the start of an nginx config for one worker, with its pid file
# (WORK/NAME.pid), error log and temp files under WORK, no access log, and the "http {" it
# leaves open. Origin and nginx-based proxies share it so that none is tuned differently.
nginx_head() {
  local WORK=$1 NAME=$2
  cat <<NGX
worker_processes 1;
pid $WORK/$NAME.pid;
error_log $WORK/$NAME.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  keepalive_requests 1000000;
NGX
}

# write_origin_conf WORK PORT [TLS_PORT [RESUME_CHECK_PORT]]: the origin every proxy under
# test forwards to, an nginx (1 worker) answering a small JSON body, writing its pid
# (WORK/origin.pid) and temp files under WORK:
#   /api/v1/products/...  cacheable (max-age=300); the body carries the origin's request id,
#                         so two identical answers mean the second came from a cache
#   /api/v1/orders/echo   the request headers a gateway chain sets or removes, as JSON
#   anything else         a fixed JSON body
# With TLS_PORT (and write_bench_pki WORK first), the same JSON over HTTPS on TLS_PORT
# (certificate for origin.bench.internal from WORK/pki). With RESUME_CHECK_PORT, another
# HTTPS listener there that logs each request made on a resumed TLS session to
# WORK/origin-resumed.log (compare.sh checks with it that its load generator makes full
# handshakes when asked to).
write_origin_conf() {
  local WORK=$1 ORIGIN_PORT=$2 TLS_PORT=${3:-} CHECK_PORT=${4:-} EXTRA="" TLS_SERVER
  TLS_SERVER="ssl_certificate $WORK/pki/origin.pem;
    ssl_certificate_key $WORK/pki/origin.key;
    default_type application/json;
    location / { return 200 '{\"id\":42,\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\"}'; }"
  if [ -n "$TLS_PORT" ]; then
    EXTRA="
  server {
    listen 127.0.0.1:$TLS_PORT ssl;
    $TLS_SERVER
  }"
  fi
  if [ -n "$CHECK_PORT" ]; then
    EXTRA="$EXTRA
  map \$ssl_session_reused \$resumed { r 1; default 0; }
  log_format resumed '\$ssl_protocol \$ssl_session_reused';
  server {
    listen 127.0.0.1:$CHECK_PORT ssl;
    access_log $WORK/origin-resumed.log resumed if=\$resumed;
    $TLS_SERVER
  }"
  fi
  { nginx_head "$WORK" origin
    cat <<NGX
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    default_type application/json;
    location /api/v1/products/ { add_header Cache-Control "max-age=300"; return 200 '{"sku":"KB-001","name":"Keyboard","price":49.0,"stock":12,"origin_id":"\$request_id"}'; }
    location /api/v1/orders/echo { return 200 '{"api_key":"\$http_x_api_key","consumer":"\$http_x_consumer_username","request_id":"\$http_x_request_id"}'; }
    location / { return 200 '{"id":42,"name":"Ada Lovelace","email":"ada@example.com"}'; }
  }$EXTRA
}
NGX
  } > "$WORK/origin.conf"
}

# write_bench_pki WORK: a CA and, signed by it, certificates for origin.bench.internal
# (origin.pem/.key, the HTTPS origin) and for proxy.bench.internal and localhost
# (proxy.pem/.key, the proxies' HTTPS listeners; proxy.bundle.pem holds both for HAProxy's
# `crt`) under WORK/pki: all ECDSA P-256, valid 30 days (gatehouse warns at load about a
# certificate that expires within 14), made with openssl for this run only.
write_bench_pki() {
  local D=$1/pki name san
  mkdir -p "$D"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout "$D/ca.key" -out "$D/ca.pem" -subj "/CN=gatehouse bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  for name in origin proxy; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$D/$name.key" -out "$D/$name.csr" -subj "/CN=$name.bench.internal" 2>/dev/null
    san="DNS:$name.bench.internal"
    [ "$name" = proxy ] && san="$san,DNS:localhost"
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" > "$D/$name.ext"
    openssl x509 -req -in "$D/$name.csr" -CA "$D/ca.pem" -CAkey "$D/ca.key" -CAcreateserial \
      -days 30 -out "$D/$name.pem" -extfile "$D/$name.ext" 2>/dev/null
  done
  cat "$D/proxy.pem" "$D/proxy.key" > "$D/proxy.bundle.pem"
  chmod 644 "$D"/*
}

# start_grpc_origin WORK PORT: a gRPC unary server over h2c on PORT for POST /bench.Echo/Unary:
# nghttpd (nghttp2-server, 1 worker thread) answering one message, HelloReply{message:
# "hello"}, with grpc-status 0 as a trailer. It reads the whole request before answering, as a
# gRPC server does (an nginx origin answering before the body made nginx's grpc_pass fail now
# and then: "upstream sent frame for unknown stream"). Its pid goes to WORK/grpc-origin.pid.
start_grpc_origin() {
  local WORK=$1 PORT=$2
  mkdir -p "$WORK/grpc-www/bench.Echo"
  # A gRPC message frame: not compressed, length 7, then the message.
  printf '\0\0\0\0\007\012\005hello' > "$WORK/grpc-www/bench.Echo/Unary"
  nghttpd --no-tls -a 127.0.0.1 -n 1 -d "$WORK/grpc-www" --trailer 'grpc-status: 0' "$PORT" \
    > "$WORK/grpc-origin.out" 2>&1 &
  echo $! > "$WORK/grpc-origin.pid"
}

# ports_free PORT...: fails, naming the port, when something listens on one of them (HAProxy
# and Pingora bind with SO_REUSEPORT: a listener left there would silently take a share of
# the connections).
ports_free() {
  local port
  for port in "$@"; do
    if ss -Htln "sport = :$port" | grep -q .; then
      echo "port $port is in use: stop what listens there first" >&2; return 1
    fi
  done
}

# nginx_pids PIDFILE: the master process of an nginx started with that pid file, its workers
# and its cache manager; not the cache loader, which exits a minute after the start.
nginx_pids() {
  local master p
  master=$(cat "$1")
  echo "$master"
  for p in $(pgrep -P "$master"); do
    case "$(tr '\0' ' ' < "/proc/$p/cmdline")" in *"cache loader"*) ;; *) echo "$p" ;; esac
  done
}

# cpu_ticks PID...: user + system CPU time of those processes (all their threads), in clock
# ticks, then the system (kernel) part of it: "TOTAL SYSTEM".
cpu_ticks() {
  local t=0 k=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || { echo "process $p is gone" >&2; return 1; }
    set -- $(cut -d' ' -f14,15 "/proc/$p/stat")
    t=$((t + $1 + $2)) k=$((k + $2))
  done
  echo "$t $k"
}

# wait_answer URL [CURL_OPTION...]: waits up to 5 s until URL answers (any status).
wait_answer() {
  local url=$1
  shift
  for _ in $(seq 50); do curl -s -o /dev/null "$@" "$url" && return 0; sleep 0.1; done
  echo "no answer from $url" >&2
  return 1
}

# start_origin_and_gatehouse WORK BIN: the origin (nginx, 127.0.0.1:19180) and gatehouse
# (BIN -c loadtest/gatehouse.yaml, 127.0.0.1:18091, its pid in GH_PID), both stopped when the
# script exits; returns once gatehouse answers.
start_origin_and_gatehouse() {
  LT_WORK=$1
  GH_PID=
  trap stop_origin_and_gatehouse EXIT
  # nginx workers run as an unprivileged user: let them write their temp files.
  mkdir -p "$LT_WORK/tmp"; chmod 755 "$LT_WORK"; chmod 777 "$LT_WORK/tmp"
  write_origin_conf "$LT_WORK" 19180
  nginx -c "$LT_WORK/origin.conf" -p "$LT_WORK"
  GATEHOUSE_LOG=warn "$2" -c loadtest/gatehouse.yaml >"$LT_WORK/gatehouse.out" 2>"$LT_WORK/gatehouse.err" &
  GH_PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18091/api/v1/users && break; sleep 0.1; done
}

stop_origin_and_gatehouse() {
  [ -n "$GH_PID" ] && kill -INT "$GH_PID" 2>/dev/null || true
  [ -f "$LT_WORK/origin.pid" ] && kill "$(cat "$LT_WORK/origin.pid")" 2>/dev/null || true
}
