#!/bin/bash
# The agent's cost of request metrics (issue 17): CPU and RSS of fleet-agent on one lab
# host while the app's access log grows by RATE fleet access lines per second, for each
# RATE given (default: 0 1000 5000), DURATION seconds each (default 30).
#
#   docs/bench-requests.sh [DURATION] [RATE...]
#
# Needs the release builds (cargo build --workspace --release --locked --bins) and no other
# lab running (it boots its own with `fleet-lab up 1` and tears it down on exit). The lines
# are written on the host by a small writer (python3, O_APPEND, one write per 10 ms), not
# by real requests: the agent's work depends only on the lines, and the sample app's sync
# workers on a 2-core machine cannot serve 5,000 requests/s. At the end of each run the
# agent's count must equal the lines written, or the script fails.
set -euo pipefail

DURATION=${1:-30}
shift || true
RATES=("${@:-0}")
[ $# -eq 0 ] && RATES=(0 1000 5000)
LAB=target/release/fleet-lab
WORK=$(mktemp -d)
cleanup() { "$LAB" down > /dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$LAB" up 1 > "$WORK/up.log" 2>&1
eval "$("$LAB" env)"
CTL=target/release/fleetctl

# The wsgi sample app, journal log mode (the access log is fleet's feed only).
mkdir "$WORK/rel"
cp lab/fixtures/wsgi/app.py "$WORK/rel/"
echo 1.0 > "$WORK/rel/RELEASE"
tar czf "$WORK/shop.tar.gz" -C "$WORK/rel" .
cat > "$WORK/shop.toml" <<TOML
name = "shop"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8000"
workers = 2
health = { path = "/health", interval = "5s" }
TOML
"$CTL" app apply "$WORK/shop.toml" > /dev/null
"$CTL" release upload shop "$WORK/shop.tar.gz" --version 1.0 > /dev/null
"$CTL" deploy shop --version 1.0 > /dev/null

cat > "$WORK/writer.py" <<'PY'
import os, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
line = b'fleet1 1.0 200 1834 "GET /cart?id=3 HTTP/1.1" 198.18.0.1 21 [01/Dec/2026:19:04:02 +0000]\n'
fd = os.open("/var/log/fleet/shop/access.log", os.O_WRONLY | os.O_APPEND)
start, written = time.monotonic(), 0
while (now := time.monotonic()) - start < seconds:
    due = int((now - start) * rate)
    if due > written:
        os.write(fd, line * (due - written))
        written = due
    time.sleep(0.01)
print(written)
PY
"$LAB" cp "$WORK/writer.py" host1 /root/writer.py

on_host() { "$LAB" exec host1 -- sh -c "$1"; }
AGENT=$(on_host 'systemctl show -p MainPID --value fleet-agent')
cpu() { on_host "awk -v hz=\$(getconf CLK_TCK) '{ printf \"%.2f\", (\$14 + \$15) / hz }' /proc/$AGENT/stat"; }
rss() { on_host "awk '/^VmRSS:/ { print \$2 }' /proc/$AGENT/status"; }
counted() {
    on_host "curl -sf http://127.0.0.1:9437/metrics" |
        awk '/^fleet_app_http_requests_total\{app="shop",release="1.0",code="2xx"\}/ { print $2 }'
}

sleep 5
echo "fleet-agent $(on_host 'fleet-agent --version'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
printf '%8s %10s %12s %10s %10s\n' "lines/s" "written" "agent CPU %" "RSS KiB" "counted"
for rate in "${RATES[@]}"; do
    before=$(counted); before=${before:-0}
    c0=$(cpu)
    written=$(on_host "python3 /root/writer.py $rate $DURATION")
    sleep 2 # the agent reads once a second
    c1=$(cpu)
    now=$(counted); now=${now:-0}
    got=$((now - before))
    pct=$(awk -v a="$c0" -v b="$c1" -v d="$DURATION" 'BEGIN { printf "%.2f", (b - a) * 100 / (d + 2) }')
    printf '%8s %10s %12s %10s %10s\n' "$rate" "$written" "$pct" "$(rss)" "$got"
    if [ "$got" != "$written" ]; then
        echo "the agent counted $got lines of $written" >&2
        exit 1
    fi
done
