#!/bin/sh
# An unprivileged PostgreSQL 15 cluster (Debian's postgresql-15) for the store's contract
# tests, on a Unix socket in a new directory of its own: no port, no other client.
#   eval "$(sh lab/pg-test-cluster.sh start)"   prints the FLEET_TEST_PG_* exports
#   sh lab/pg-test-cluster.sh restart DIR      stops and starts the server (a failover test)
#   sh lab/pg-test-cluster.sh stop "$FLEET_TEST_PG_DIR"
# As root it runs the server as the `postgres` user (PostgreSQL refuses to run as root).
# fsync is off: the tests check what the store does, not the disk (FLEET_PG_FSYNC=on for
# a benchmark that compares with the embedded store, which syncs every commit).
set -eu
BIN=/usr/lib/postgresql/15/bin
if [ ! -x "$BIN/postgres" ]; then
    echo "lab/pg-test-cluster.sh: $BIN/postgres is missing: apt-get install postgresql-15 (lab/setup.sh does)" >&2
    exit 1
fi
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "${1:-}" in
start)
    dir=$(mktemp -d /tmp/fleet-pg.XXXXXX)
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    as_owner "$BIN/initdb" -D "$dir/data" -A trust -U fleet --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
        "-c listen_addresses= -k $dir -c fsync=${FLEET_PG_FSYNC:-off} -c max_connections=200" start >/dev/null || {
        cat "$dir/server.log" >&2; exit 1; }
    echo "export FLEET_TEST_PG_DIR='$dir' FLEET_TEST_PG_URL='host=$dir user=fleet dbname=postgres'"
    ;;
stop)
    dir="${2:?usage: pg-test-cluster.sh stop DIR}"
    case "$dir" in /tmp/fleet-pg.*) ;; *) echo "not a test cluster: $dir" >&2; exit 1 ;; esac
    [ -d "$dir/data" ] && as_owner "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
restart)
    dir="${2:?usage: pg-test-cluster.sh restart DIR}"
    case "$dir" in /tmp/fleet-pg.*) ;; *) echo "not a test cluster: $dir" >&2; exit 1 ;; esac
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w restart >/dev/null
    ;;
*)
    echo "usage: lab/pg-test-cluster.sh start | restart DIR | stop DIR" >&2
    exit 2
    ;;
esac
