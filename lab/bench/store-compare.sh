#!/bin/bash
# The same swarm on the embedded store and on PostgreSQL (issue 19): AGENTS simulated
# agents (lab/swarm, real TLS sessions on loopback) against one release controller,
# first on redb, then on a private PostgreSQL 15 cluster started here. Prints both
# reports: enrollment, steady CPU of the controller (and of the PostgreSQL server) while
# every agent heartbeats, fan-out latencies, and admin RPC round trips. A third run puts a
# second controller in front (init --replica-of): the agents connect to it and it relays
# every call to the leader, so its CPU and the relayed admin round trips are the cost of
# a relay.
#   cargo build --workspace --release --locked --bins
#   bash lab/bench/store-compare.sh [AGENTS] [HEARTBEAT]
set -euo pipefail
cd "$(dirname "$0")/../.."
AGENTS=${1:-1000}
HEARTBEAT=${2:-10s}
SCENARIOS=steady,firewall,deploy,hosts,admin
SWARM=target/release/fleet-swarm
test -x "$SWARM" || { echo "build first: cargo build --workspace --release --locked --bins" >&2; exit 1; }
# With fsync, as the embedded store syncs each commit (the test cluster's default is off).
eval "$(FLEET_PG_FSYNC=on sh lab/pg-test-cluster.sh start)"
WORK=$(mktemp -d)
trap 'sh lab/pg-test-cluster.sh stop "$FLEET_TEST_PG_DIR"; rm -rf "$WORK"' EXIT
printf 'join_global_per_minute = 1000000\n' > "$WORK/redb.toml"
printf 'join_global_per_minute = 1000000\n[store]\nurl = "%s"\n' "$FLEET_TEST_PG_URL" > "$WORK/pg.toml"
# The relayed run makes a fleet of its own: init needs an empty database.
psql -q "$FLEET_TEST_PG_URL" -c 'CREATE DATABASE relay'
printf 'join_global_per_minute = 1000000\n[store]\nurl = "%s"\n' \
    "${FLEET_TEST_PG_URL/dbname=postgres/dbname=relay}" > "$WORK/relay.toml"
run() { # label config [extra args]
    local label=$1 config=$2
    shift 2
    echo "==> $label"
    nice -n 10 "$SWARM" run --agents "$AGENTS" --apps 1 --heartbeat "$HEARTBEAT" \
        --scenarios "$SCENARIOS" --controller-config "$config" "$@"
}
run "redb (embedded)" "$WORK/redb.toml"
run "PostgreSQL 15 (unix socket, same machine)" "$WORK/pg.toml" --postgres-data "$FLEET_TEST_PG_DIR/data"
run "PostgreSQL 15, agents through a relaying second controller" "$WORK/relay.toml" \
    --postgres-data "$FLEET_TEST_PG_DIR/data" --relay
