# Shared by compare.sh and rss.sh: the origin every proxy under test forwards to.
# write_origin_conf WORK PORT: an nginx (1 worker) answering a small JSON body, cacheable
# under /api/v1/products/, writing its pid and temp files under WORK.
write_origin_conf() {
  local WORK=$1 ORIGIN_PORT=$2
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
    }
  }
NGX
}
