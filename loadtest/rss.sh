#!/usr/bin/env bash
# Memory over a sustained run: idle RSS, RSS every 5 s under load, and RSS after the load.
#
#   loadtest/rss.sh [--duration 60] [--conns 200] [--scenario plain|chain]
#
# Starts an origin (nginx, 1 worker, static JSON) and gatehouse (release build,
# loadtest/gatehouse.yaml), samples VmRSS of gatehouse from /proc while wrk drives it,
# and prints one line per sample. "No unbounded growth" means the samples level off and the
# RSS after the run stays near the level reached under load (mimalloc keeps freed pages for
# reuse; it does not return to idle at once). Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=60 CONNS=200 SCENARIO=chain
parse_opts "DURATION CONNS SCENARIO" "$@"
need_tools "nginx-light wrk curl" nginx wrk curl
BIN=${GATEHOUSE_BIN:-target/release/gatehouse}
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d /tmp/gatehouse-rss.XXXXXX)
GH_PORT=18091  # the port of loadtest/gatehouse.yaml
start_origin_and_gatehouse "$WORK" "$BIN"
rss() { awk '/^VmRSS/{print $2}' "/proc/$GH_PID/status"; }
case "$SCENARIO" in plain) SCRIPT=loadtest/plain.lua ;; chain) SCRIPT=loadtest/apikey.lua ;; *) echo "scenario: plain|chain" >&2; exit 2 ;; esac

sleep 1
echo "t_s	rss_kb	phase"
echo "0	$(rss)	idle"
API_KEY=bench-key-0001 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$SCRIPT" "http://127.0.0.1:$GH_PORT" > "$WORK/wrk.out" 2>&1 &
WRK=$!
t=0
while kill -0 "$WRK" 2>/dev/null; do
  sleep 5; t=$((t + 5))
  kill -0 "$WRK" 2>/dev/null && echo "$t	$(rss)	load"
done
for s in 5 15; do sleep $((s == 5 ? 5 : 10)); echo "$((t + s))	$(rss)	after"; done
grep -E "Requests/sec|Non-2xx" "$WORK/wrk.out" >&2 || true
