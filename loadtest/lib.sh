# Shared by compare.sh and rss.sh: the origin every proxy under test forwards to.
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
  cat > "$WORK/origin.conf" <<NGX
  worker_processes 1;
  pid $WORK/origin.pid;
  error_log $WORK/origin.err warn;
  events { worker_connections 4096; }
  http {
    access_log off;
    client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
    keepalive_requests 1000000;
    server {
      listen 127.0.0.1:$ORIGIN_PORT;
      default_type application/json;
      location /api/v1/products/ { add_header Cache-Control "max-age=300"; return 200 '{"sku":"KB-001","name":"Keyboard","price":49.0,"stock":12}'; }
      location / { return 200 '{"id":42,"name":"Ada Lovelace","email":"ada@example.com"}'; }
    }$EXTRA
  }
NGX
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
