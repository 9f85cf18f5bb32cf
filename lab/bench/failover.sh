#!/bin/bash
# Repeated leader failover on loopback (issue 19): RUNS times, two controllers on one
# PostgreSQL store (a private cluster started here), a real agent, `kill -9` of the
# leader; prints for each run the time from the kill to the new leader and to the agent
# streaming to it, then min / median / max. Then RUNS times with three controllers and
# the agent behind a standby that relays it: the leader is paused (SIGSTOP), and the
# time is from another controller holding the lease to the agent, still behind the
# standby or reconnected, streaming to it. The lease is 2 s (the test's); with the
# default 6 s add 4 s to the first two.
#   bash lab/bench/failover.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-10}
cargo build -q -p fleetctl -p fleet-agent -p fleet-controller --bins
eval "$(sh lab/pg-test-cluster.sh start)"
trap 'sh lab/pg-test-cluster.sh stop "$FLEET_TEST_PG_DIR"' EXIT
OUT=$(mktemp)
for i in $(seq "$RUNS"); do
    cargo test -q -p fleet-controller --test ha_failover \
        the_standby_takes_over_a_killed_leader_and_the_agent_follows_it -- --nocapture 2>&1 |
        grep -E '^kill -9 -> new leader' | tee -a "$OUT"
done
for i in $(seq "$RUNS"); do
    cargo test -q -p fleet-controller --test ha_failover \
        a_standby_moves_the_agents_it_relays_to_a_new_leader_at_once -- --nocapture 2>&1 |
        grep -E 'leads; the agent behind B streams to it after' | tee -a "$OUT"
done
# "kill -9 -> new leader 1.93s, agent streaming to it 3.81s" (Debug of Duration)
python3 - "$OUT" <<'PY'
import re, statistics, sys
def secs(s):
    m = re.fullmatch(r'([\d.]+)(ms|s|µs)', s)
    v = float(m.group(1))
    return {'s': v, 'ms': v / 1e3, 'µs': v / 1e6}[m.group(2)]
led, back, relayed = [], [], []
for line in open(sys.argv[1]):
    m = re.search(r'new leader (\S+), agent streaming to it (\S+)', line)
    if m:
        led.append(secs(m.group(1)))
        back.append(secs(m.group(2)))
    m = re.search(r'streams to it after (\S+)', line)
    if m:
        relayed.append(secs(m.group(1)))
if not led:
    sys.exit("no run printed its figures")
for name, v in (("new leader", led), ("agent streaming", back), ("relayed agent", relayed)):
    if not v:
        sys.exit(f"no run printed {name}")
    print(f"{name:16} runs {len(v)}: min {min(v):.2f} s, median {statistics.median(v):.2f} s, max {max(v):.2f} s")
PY
rm -f "$OUT"
