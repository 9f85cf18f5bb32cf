#!/bin/bash
# Agent vs node_exporter side by side inside one lab host (issue 7's measurement): the
# fleet-agent installed by the lab (running under systemd, holding its controller stream,
# supervising the apps deployed there) against Debian's prometheus-node-exporter started
# here as a transient unit and stopped again at the end.
#
# Run from the outer machine with a lab up and an app deployed (see docs/benchmarks.md):
#   fleet-lab cp lab/bench/metrics-in-host.sh host1 /root/bench.sh
#   fleet-lab exec host1 -- bash /root/bench.sh 100
set -euo pipefail
N=${1:-100}
ACCEPT='application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1'
WORK=$(mktemp -d)
cleanup() { systemctl stop bench-node-exporter 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

systemd-run --unit bench-node-exporter -q /usr/bin/prometheus-node-exporter --web.listen-address=127.0.0.1:9100
AGENT=$(systemctl show -p MainPID --value fleet-agent)
NE=$(systemctl show -p MainPID --value bench-node-exporter)
for port in 9437 9100; do
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/metrics" && break; sleep 0.1; done
done
sleep 2

cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
measure() { # name pid port
    local name=$1 pid=$2 port=$3 cpu0 cpu1 series
    cpu0=$(cpu_seconds "$pid")
    for _ in $(seq "$N"); do
        curl -s -o /dev/null -H "Accept: $ACCEPT" -w '%{time_total}\n' "http://127.0.0.1:$port/metrics"
    done > "$WORK/$name.times"
    cpu1=$(cpu_seconds "$pid")
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
echo "host: $(hostname), $(nproc) cores, kernel $(uname -r); apps: $(ls /etc/systemd/system | grep -c '^fleet-app-.*\.service$')"
measure fleet-agent "$AGENT" 9437
measure node_exporter "$NE" 9100
# What each collector costs on each side: series and time of one more scrape.
for port in 9437 9100; do
    curl -s "http://127.0.0.1:$port/metrics" > "$WORK/page.$port"
done
python3 - "$WORK/page.9437" "$WORK/page.9100" <<'PY'
import re, sys
def load(path):
    series, took = {}, {}
    for line in open(path):
        if line.startswith('#'):
            continue
        name = re.split(r'[{ ]', line, 1)[0]
        m = re.match(r'node_scrape_collector_duration_seconds\{collector="([^"]+)"\} (\S+)', line)
        if m:
            took[m.group(1)] = float(m.group(2)) * 1000
        series[name] = series.get(name, 0) + 1
    return series, took
(a, at), (n, nt) = load(sys.argv[1]), load(sys.argv[2])
group = lambda name: name.split('_')[1] if name.startswith('node_') else name.split('_')[0] + '_' + name.split('_')[1]
def by_group(s):
    g = {}
    for k, v in s.items():
        g[group(k)] = g.get(group(k), 0) + v
    return g
ga, gn = by_group(a), by_group(n)
print(f"{'series group':22} {'agent':>6} {'node_exporter':>14}")
for k in sorted(set(ga) | set(gn), key=lambda k: -(ga.get(k, 0) + gn.get(k, 0))):
    print(f"{k:22} {ga.get(k, 0):6} {gn.get(k, 0):14}")
print(f"{'collector (ms)':22} {'agent':>6} {'node_exporter':>14}")
for k in sorted(set(at) | set(nt)):
    f = lambda d: f"{d[k]:.2f}" if k in d else "-"
    print(f"{k:22} {f(at):>6} {f(nt):>14}")
PY
