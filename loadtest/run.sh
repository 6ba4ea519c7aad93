#!/usr/bin/env bash
# Runs every wrk scenario against gatehouse with loadtest/gatehouse.yaml and fails when any
# answer is not 2xx or any socket error happens (the check is in loadtest/check.lua).
#
#   loadtest/run.sh [--duration 5] [--conns 50] [--scenarios "plain apikey jwt cached mixed"]
#
# Starts the origin (nginx, loadtest/lib.sh) on 127.0.0.1:19180 and gatehouse
# (GATEHOUSE_BIN, default target/release/gatehouse) on 127.0.0.1:18091, then runs each
# scenario once and prints its req/s and result. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=5 CONNS=50 SCENARIOS="plain apikey jwt cached mixed"
parse_opts "DURATION CONNS SCENARIOS" "$@"
need_tools "nginx-light wrk python3 curl" nginx wrk python3 curl
BIN=${GATEHOUSE_BIN:-target/release/gatehouse}
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d /tmp/gatehouse-run.XXXXXX)
start_origin_and_gatehouse "$WORK" "$BIN"
JWT=$(python3 loadtest/mint_jwt.py)
export JWT

failed=0
for sc in $SCENARIOS; do
  if env API_KEY=bench-key-0001 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "loadtest/$sc.lua" \
       http://127.0.0.1:18091 > "$WORK/$sc.out" 2>&1; then
    result=$(grep '^OK' "$WORK/$sc.out")
  else
    result=$(grep '^FAIL' "$WORK/$sc.out" || tail -3 "$WORK/$sc.out"); failed=1
  fi
  printf '%-7s %10s req/s  %s\n' "$sc" "$(awk '/Requests\/sec/{print $2}' "$WORK/$sc.out")" "$result"
done
[ "$failed" = 0 ] || { echo "some scenarios failed; wrk outputs in $WORK" >&2; exit 1; }
