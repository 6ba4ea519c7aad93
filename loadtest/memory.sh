#!/usr/bin/env bash
# Memory per client connection: gatehouse, nginx and HAProxy side by side, one worker each.
#
#   loadtest/memory.sh [--conns 3000] [--proxies "nginx haproxy gatehouse"]
#
# Starts an origin (nginx, 1 worker, static JSON), then for each proxy in turn: starts it
# (gatehouse: release build, loadtest/gatehouse.yaml with header and keep-alive timeouts
# raised to 120 s so no connection is closed while it is measured; nginx and HAProxy with the
# same timeouts), opens N client connections with loadtest/conns.py and reads the proxy's
# RSS: before, with N connections that have sent nothing, and with the same connections idle
# in keep-alive after one request each. Prints kB per connection for both. Stops each proxy
# before the next one starts. gatehouse runs with the environment of its systemd unit
# (`MIMALLOC_PURGE_DELAY=0`: freed pages go back to the system at once; set the variable to
# measure otherwise). Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

CONNS=3000 PROXIES="nginx haproxy gatehouse"
while [ $# -gt 0 ]; do
  case "$1" in
    --conns) CONNS=$2; shift 2 ;;
    --proxies) PROXIES=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
case " $PROXIES " in *" haproxy "*) command -v haproxy >/dev/null || { echo "needs haproxy" >&2; exit 1; } ;; esac
[ "$(ulimit -n)" -gt $((CONNS * 3 + 1000)) ] || ulimit -n $((CONNS * 3 + 1000))
BIN=${GATEHOUSE_BIN:-target/release/gatehouse}
case " $PROXIES " in *" gatehouse "*) [ -x "$BIN" ] || cargo build --release ;; esac
WORK=$(mktemp -d /tmp/gatehouse-memory.XXXXXX)
# Ports of their own, so compare.sh may run at the same time.
ORIGIN_PORT=19280 PROXY_PORT=18195 ADMIN_PORT=19291
ports_free $ORIGIN_PORT $PROXY_PORT $ADMIN_PORT || exit 1
PID=""
stop_proxy() {
  [ -n "$PID" ] && { kill -TERM "$PID" 2>/dev/null || true; for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done; }
  [ -f "$WORK/proxy.pid" ] && { kill -QUIT "$(cat "$WORK/proxy.pid")" 2>/dev/null || true; rm -f "$WORK/proxy.pid"; sleep 0.5; }
  PID=""
}
cleanup() { stop_proxy; [ -f "$WORK/origin.pid" ] && kill "$(cat "$WORK/origin.pid")" 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$WORK/tmp"; chmod 755 "$WORK"; chmod 777 "$WORK/tmp"
write_origin_conf "$WORK" "$ORIGIN_PORT"
nginx -c "$WORK/origin.conf" -p "$WORK"

# nginx_head's events line is replaced: the connections measured need more than its 4096
# (a client and an upstream socket each, with room).
{ nginx_head "$WORK" proxy |
    sed "s/^events { worker_connections 4096; }/worker_rlimit_nofile $((CONNS * 3 + 1000));\nevents { worker_connections $((CONNS * 3 + 100)); }/"
  cat <<NGX
  client_header_timeout 120s; keepalive_timeout 120s;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location / { proxy_pass http://origin; }
  }
}
NGX
} > "$WORK/proxy.conf"
cat > "$WORK/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn $((CONNS * 3 + 100))
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 60s
  timeout http-request 120s
  timeout http-keep-alive 120s
  http-reuse always
frontend in
  bind 127.0.0.1:$PROXY_PORT
  default_backend origin
backend origin
  server origin 127.0.0.1:$ORIGIN_PORT
HAP
sed -e "s/127.0.0.1:18091/127.0.0.1:$PROXY_PORT/" -e "s/127.0.0.1:19180/127.0.0.1:$ORIGIN_PORT/" \
    -e "s/127.0.0.1:19191/127.0.0.1:$ADMIN_PORT/" \
    -e "s/^  access_log: off/  access_log: off\n  header_timeout: 120s\n  keepalive_timeout: 120s\n  max_connections: $((CONNS * 2))/" \
    -e "s#/tmp/gatehouse-loadtest#$WORK/gatehouse#" loadtest/gatehouse.yaml > "$WORK/gatehouse.yaml"

start_proxy() {
  case "$1" in
    nginx) nginx -c "$WORK/proxy.conf" -p "$WORK" ;;
    haproxy) haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 & PID=$! ;;
    gatehouse) MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:-0} GATEHOUSE_LOG=warn "$BIN" -c "$WORK/gatehouse.yaml" >"$WORK/gatehouse.out" 2>"$WORK/gatehouse.err" & PID=$! ;;
  esac
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/api/v1/users" && return; sleep 0.1; done
  echo "$1 did not start" >&2; exit 1
}
# The processes whose RSS counts: nginx's worker (not its master), the others' single process.
pids_of() {
  case "$1" in
    nginx) pgrep -P "$(cat "$WORK/proxy.pid")" ;;
    *) echo "$PID" ;;
  esac
}

printf '%-10s %-7s %6s %10s %12s\n' proxy phase conns rss_kb kb_per_conn
for p in $PROXIES; do
  start_proxy "$p"
  # a few warm-up requests so lazily made state (pools, caches) is not counted per connection
  for _ in $(seq 20); do curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/api/v1/users"; done
  python3 loadtest/conns.py --port "$PROXY_PORT" --pids "$(pids_of "$p" | tr '\n' ' ')" --conns "$CONNS" |
    while IFS=$'\t' read -r phase n rss per; do printf '%-10s %-7s %6s %10s %12s\n' "$p" "$phase" "$n" "$rss" "$per"; done
  stop_proxy
done
