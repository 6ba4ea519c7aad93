#!/usr/bin/env bash
# Side-by-side load test: gatehouse vs nginx doing the same job, one worker each, on loopback.
#
#   loadtest/compare.sh [--rounds 3] [--duration 10] [--conns "50 200"] [--scenarios "plain chain cached"]
#
# Starts an origin (nginx, 1 worker, static JSON), an nginx reverse proxy and gatehouse (release
# build, loadtest/gatehouse.yaml: threads: 1), then runs wrk interleaved A B / B A for several
# rounds per scenario and connection count. Prints req/s, p50/p99 latency and CPU microseconds
# per request (utime+stime of the proxy's processes from /proc, divided by the requests wrk
# completed), medians over the rounds, and the gatehouse/nginx ratios. The machine is shared
# and noisy: compare ratios from one run, not absolute numbers across runs. Traffic goes to 127.0.0.1 only.
#
# Scenarios (same paths on both proxies; a scenario with any non-2xx answer stops the run):
#   plain   GET /api/v1/users/42                       plain reverse proxy
#   chain   GET /api/v1/orders/7 with X-API-Key        API key + rate limit + header rewrites
#   cached  GET /api/v1/products/{0..19}               response cache (nginx proxy_cache)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

ROUNDS=3 DURATION=10 CONNS="50 200" SCENARIOS="plain chain cached"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

for tool in nginx wrk python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx-light wrk)" >&2; exit 1; }
done
BIN=${GATEHOUSE_BIN:-target/release/gatehouse}
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d /tmp/gatehouse-compare.XXXXXX)
ORIGIN_PORT=19180 NGINX_PORT=18090 GH_PORT=18091 GH_ADMIN=19191
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -INT "$p" 2>/dev/null || true; done
  [ -f "$WORK/origin.pid" ] && kill "$(cat "$WORK/origin.pid")" 2>/dev/null || true
  [ -f "$WORK/proxy.pid" ] && kill "$(cat "$WORK/proxy.pid")" 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$WORK/cache" "$WORK/tmp"
# nginx workers run as an unprivileged user: let them write their cache and temp files.
chmod 755 "$WORK"; chmod 777 "$WORK/cache" "$WORK/tmp"
write_origin_conf "$WORK" "$ORIGIN_PORT"

cat > "$WORK/proxy.conf" <<NGX
worker_processes 1;
pid $WORK/proxy.pid;
error_log $WORK/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
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
    location / { proxy_pass http://origin; }
  }
}
NGX

nginx -c "$WORK/origin.conf" -p "$WORK"
nginx -c "$WORK/proxy.conf" -p "$WORK"
GATEHOUSE_LOG=warn "$BIN" -c loadtest/gatehouse.yaml >"$WORK/gatehouse.out" 2>"$WORK/gatehouse.err" &
GH_PID=$!
PIDS+=("$GH_PID")
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$GH_PORT/" && break; sleep 0.1; done

nginx_pids() { pgrep -f "nginx: worker process" | while read -r p; do
  [ "$(cat /proc/"$p"/status | awk '/^PPid/{print $2}')" = "$(cat "$WORK/proxy.pid")" ] && echo "$p"; done; echo "$(cat "$WORK/proxy.pid")"; }
cpu_ticks() { local t=0; for p in "$@"; do set -- $(cut -d' ' -f14,15 "/proc/$p/stat"); t=$((t + $1 + $2)); done; echo $t; }
TCK=$(getconf CLK_TCK)

script_for() { case "$1" in plain) echo loadtest/plain.lua ;; chain) echo loadtest/apikey.lua ;; cached) echo loadtest/cached.lua ;; esac; }

RESULTS="$WORK/results.tsv"
: > "$RESULTS"
run_one() {  # proxy scenario conns round
  local proxy=$1 sc=$2 c=$3 r=$4 port pids
  if [ "$proxy" = nginx ]; then port=$NGINX_PORT; pids=$(nginx_pids | tr '\n' ' '); else port=$GH_PORT; pids=$GH_PID; fi
  # warm-up (fills caches and pools), then the measured run
  API_KEY=bench-key-0001 wrk -t1 -c"$c" -d2s -s "$(script_for "$sc")" "http://127.0.0.1:$port" > "$WORK/wrk.out" 2>&1 \
    || { echo "$proxy $sc warm-up failed:" >&2; tail -3 "$WORK/wrk.out" >&2; exit 1; }
  local before after
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
      if [ $((r % 2)) = 1 ]; then order="nginx gatehouse"; else order="gatehouse nginx"; fi
      for p in $order; do run_one "$p" "$sc" "$c" "$r"; done
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
    for proxy in ("nginx", "gatehouse"):
        v = by.get((sc, c, proxy))
        if not v:
            continue
        res[proxy] = [med([x[i] for x in v]) for i in range(4)] + [sum(x[4] for x in v)]
        rps, p50, p99, cpu, bad = res[proxy]
        print(f"{sc:8} {c:>5} {proxy:10} {rps:>9.0f} {p50:>7.2f} {p99:>7.2f} {cpu:>10.1f} {bad:>7}")
    if len(res) == 2:
        n, g = res["nginx"], res["gatehouse"]
        print(f"{'':8} {'':>5} {'ratio g/n':10} {g[0]/n[0]:>9.2f} {g[1]/n[1]:>7.2f} {g[2]/n[2]:>7.2f} {g[3]/n[3]:>10.2f}")
print(f"\nrounds per cell: {len(next(iter(by.values())))}, medians shown; raw rows: {sys.argv[1]}")
PY
echo "gatehouse RSS after load: $(awk '/VmRSS/{print $2" "$3}' /proc/$GH_PID/status)"
