#!/usr/bin/env bash
# The origin the load tests proxy to: nginx (1 worker) on 127.0.0.1:19180 answering a small
# JSON body (cacheable under /api/v1/products/), as loadtest/gatehouse.yaml expects.
#
#   loadtest/origin.sh [PORT]        # runs in the foreground; Ctrl-C stops it
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
PORT=${1:-19180}
command -v nginx >/dev/null || { echo "needs nginx (apt-get install -y nginx-light)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/gatehouse-origin.XXXXXX)
mkdir -p "$WORK/tmp"; chmod 755 "$WORK"; chmod 777 "$WORK/tmp"
write_origin_conf "$WORK" "$PORT"
echo "origin on 127.0.0.1:$PORT (nginx, files in $WORK)" >&2
exec nginx -c "$WORK/origin.conf" -p "$WORK" -g 'daemon off;'
