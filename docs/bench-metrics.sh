#!/bin/bash
# Agent vs node_exporter: RSS after N scrapes, CPU seconds used by those scrapes, scrape
# latency p50/p99, series count. Loopback only; every process started here is stopped by
# its PID on exit.
#
#   docs/bench-metrics.sh [TARGET_DIR] [N]
#
# TARGET_DIR holds release builds of fleet-controller and fleet-agent (default
# target/release); N scrapes per exporter (default 100). node_exporter is Debian's
# prometheus-node-exporter, started here on 127.0.0.1:9100 with its default collectors.
# The agent runs enrolled, holding its controller stream, as in production.
set -euo pipefail

BIN=${1:-target/release}
N=${2:-100}
# The Accept header Prometheus 2.42 sends: both exporters answer it as they would a scrape.
ACCEPT='application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1'

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(free_port); HTTP=$(free_port); METRICS=$(free_port)

"$BIN/fleet-controller" init --data-dir "$WORK/ctl" > "$WORK/init.txt"
PIN=$(sed -n 's/^ca-pin: //p' "$WORK/init.txt")
"$BIN/fleet-controller" run --data-dir "$WORK/ctl" --listen "127.0.0.1:$GRPC" \
    --http-listen "127.0.0.1:$HTTP" 2> "$WORK/ctl.log" &
PIDS+=($!)
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$GRPC") 2>/dev/null && break; sleep 0.1; done
TOKEN=$("$BIN/fleetctl" --controller "127.0.0.1:$GRPC" --identity "$WORK/ctl/admin" token create)
"$BIN/fleet-agent" join --controller "127.0.0.1:$GRPC" --token "$TOKEN" --ca-pin "$PIN" \
    --state-dir "$WORK/agent" --name bench > /dev/null
# MALLOC_ARENA_MAX=1 as systemd/fleet-agent.service sets it.
MALLOC_ARENA_MAX=1 "$BIN/fleet-agent" run --state-dir "$WORK/agent" --metrics-listen "127.0.0.1:$METRICS" 2> "$WORK/agent.log" &
AGENT=$!; PIDS+=($AGENT)

prometheus-node-exporter --web.listen-address=127.0.0.1:9100 2> "$WORK/ne.log" &
NE=$!; PIDS+=($NE)

for port in "$METRICS" 9100; do
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/metrics" && break; sleep 0.1; done
done
sleep 2

cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

measure() { # name pid port
    local name=$1 pid=$2 port=$3 cpu0 cpu1
    cpu0=$(cpu_seconds "$pid")
    for _ in $(seq "$N"); do
        curl -s -o /dev/null -H "Accept: $ACCEPT" -w '%{time_total}\n' "http://127.0.0.1:$port/metrics"
    done > "$WORK/$name.times"
    cpu1=$(cpu_seconds "$pid")
    local series
    series=$(curl -s -H "Accept: $ACCEPT" "http://127.0.0.1:$port/metrics" | grep -vc '^#')
    python3 - "$name" "$WORK/$name.times" "$(rss_kib "$pid")" "$cpu0" "$cpu1" "$series" <<'PY'
import sys
name, path, rss, cpu0, cpu1, series = sys.argv[1:]
t = sorted(float(x) * 1000 for x in open(path))
q = lambda p: t[min(len(t) - 1, int(round(p * (len(t) - 1))))]
print(f"{name:14} RSS {int(rss)/1024:6.1f} MiB  CPU {float(cpu1)-float(cpu0):6.2f} s  "
      f"p50 {q(0.5):6.2f} ms  p99 {q(0.99):6.2f} ms  series {series}  ({len(t)} scrapes)")
PY
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r)"
echo "fleet-agent $("$BIN/fleet-agent" --version | awk '{print $2}'), $(prometheus-node-exporter --version 2>&1 | head -1)"
measure fleet-agent "$AGENT" "$METRICS"
measure node_exporter "$NE" 9100
