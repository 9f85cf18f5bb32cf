#!/usr/bin/env bash
# Every fleet test, as CI runs it: on a fresh Debian 12 machine as root this installs what
# the tests need, checks formatting and lints, builds the release binaries the lab installs
# into its hosts, then runs unit, loopback and lab (real systemd) tests with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

# On a new machine the cargo tools compile for minutes (CPU) and the packages and wheels
# below download for minutes (network): the compile runs in the background meanwhile.
# Its output goes to a file, shown once it is done, so the two do not mix.
cargo_tools() {
    if ! command -v cargo-nextest >/dev/null 2>&1; then
        cargo install cargo-nextest --locked
    fi
    # packaging/deb/build.sh makes the .debs with it (~4 min to install, once per machine).
    if ! cargo deb --version >/dev/null 2>&1; then
        cargo install cargo-deb --locked
    fi
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
}
tools_log=$(mktemp)
cargo_tools >"$tools_log" 2>&1 &
tools_pid=$!
# If setup fails, the install is waited for, not left behind.
trap 'wait "$tools_pid" 2>/dev/null || true; rm -f "$tools_log"' EXIT

bash lab/setup.sh
# ansible-core + ansible-lint for the collection in ansible/ (pinned, in a venv).
sh lab/ansible-venv.sh
# A newer uvicorn (and gunicorn) than Debian's, as wheels a lab release ships in its venv.
sh lab/uvicorn-wheels.sh
echo "==> cargo tools (nextest, cargo-deb, cargo-fuzz)"
if ! wait "$tools_pid"; then
    cat "$tools_log"
    echo "test-all.sh: installing the cargo tools failed (output above)" >&2
    exit 1
fi
tail -n 3 "$tools_log"
trap - EXIT
rm -f "$tools_log"
# libFuzzer (built by the fuzz targets) is C++.
if ! command -v c++ >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> release build (installed into lab hosts)"
cargo build --workspace --release --locked --bins
echo "==> .deb packages and the signed apt repository (lab hosts install these)"
bash packaging/deb/build.sh
echo "==> fuzz smoke: every target over its corpus, then 15 s each (lab/fuzz/README.md)"
bash lab/fuzz/smoke.sh
echo "==> PostgreSQL 15 for the store's contract tests (unprivileged, on a private socket)"
eval "$(sh lab/pg-test-cluster.sh start)"
trap 'sh lab/pg-test-cluster.sh stop "$FLEET_TEST_PG_DIR"' EXIT
echo "==> tests"
# Not exec: the trap stops the cluster after the run; nextest's summary stays the last output.
cargo nextest run --workspace --locked --profile ci
