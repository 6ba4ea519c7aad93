# Shared by compare.sh, rss.sh and run.sh: option parsing, tool checks, the origin every proxy
# under test forwards to, and gatehouse started on loadtest/gatehouse.yaml.

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

# nginx_main WORK NAME: the top of an nginx.conf up to the inside of `http {` (1 worker, pid
# and error log NAME.pid and NAME.err under WORK, temp files under WORK/tmp, long keepalive).
nginx_main() {
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
# write_origin_conf WORK PORT [TLS_PORT]: an nginx (1 worker) answering a small JSON body,
# cacheable under /api/v1/products/, writing its pid and temp files under WORK. With TLS_PORT
# (and write_bench_pki WORK first), the same JSON over HTTPS on TLS_PORT (certificate for
# origin.bench.internal from WORK/pki).
write_origin_conf() {
  local WORK=$1 ORIGIN_PORT=$2 TLS_PORT=${3:-} EXTRA=""
  if [ -n "$TLS_PORT" ]; then
    EXTRA="
    server {
      listen 127.0.0.1:$TLS_PORT ssl;
      ssl_certificate $WORK/pki/origin.pem;
      ssl_certificate_key $WORK/pki/origin.key;
      default_type application/json;
      location / { return 200 '{\"id\":42,\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\"}'; }
    }"
  fi
  { nginx_main "$WORK" origin; cat <<NGX
    server {
      listen 127.0.0.1:$ORIGIN_PORT;
      default_type application/json;
      location /api/v1/products/ { add_header Cache-Control "max-age=300"; return 200 '{"sku":"KB-001","name":"Keyboard","price":49.0,"stock":12}'; }
      location / { return 200 '{"id":42,"name":"Ada Lovelace","email":"ada@example.com"}'; }
    }$EXTRA
  }
NGX
  } > "$WORK/origin.conf"
}

# write_bench_pki WORK: a CA and a certificate for origin.bench.internal (P-256, valid 2
# days) under WORK/pki, made with openssl for this run only.
write_bench_pki() {
  local D=$1/pki
  mkdir -p "$D"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$D/ca.key" -out "$D/ca.pem" -subj "/CN=gatehouse bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$D/origin.key" -out "$D/origin.csr" -subj "/CN=origin.bench.internal" 2>/dev/null
  printf 'subjectAltName=DNS:origin.bench.internal\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > "$D/ext"
  openssl x509 -req -in "$D/origin.csr" -CA "$D/ca.pem" -CAkey "$D/ca.key" -CAcreateserial \
    -days 2 -out "$D/origin.pem" -extfile "$D/ext" 2>/dev/null
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
