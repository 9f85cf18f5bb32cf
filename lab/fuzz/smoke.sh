#!/usr/bin/env bash
# CI's fuzz smoke run (lab/test-all.sh): every target over its checked-in corpus and seeds,
# then SECS seconds of fresh fuzzing each. New inputs go to a scratch directory, so the
# checked-in corpora stay as they are. A crash fails the run; the input is saved under
# lab/fuzz/artifacts/<target>/ (see README.md to reproduce it).
set -euo pipefail
cd "$(dirname "$0")"
SECS="${FLEET_FUZZ_SECS:-15}"
# cargo-fuzz passes -Z flags to rustc; on stable they need RUSTC_BOOTSTRAP (README.md).
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list --fuzz-dir .)
# The smoke run builds unoptimized (`--dev`): ~1.7 min instead of ~5.5 for the release
# build on this 2-core machine, for fewer runs in its 15 s. Its job is the corpus and a
# taste of new inputs; the long runs in docs/benchmarks.md use release builds.
PROFILE="${FLEET_FUZZ_PROFILE:---dev}"
cargo fuzz build --fuzz-dir . -s none $PROFILE
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# unpack's per-run trees go here too, so a run cut short leaves nothing in /dev/shm.
export FLEET_FUZZ_TMP="$scratch"
# One target per core: libFuzzer runs on one thread, and this machine has two.
smoke() {
    local t=$1
    mkdir -p "$scratch/$t" "corpus/$t"
    local dirs=("$scratch/$t" "corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    if ! cargo fuzz run --fuzz-dir . -s none $PROFILE "$t" "${dirs[@]}" -- \
        -max_total_time="$SECS" -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
        tail -n 40 "$scratch/$t.log" >&2
        echo "fuzz $t: FAILED; the input is in lab/fuzz/artifacts/$t/ (README.md)" >&2
        return 1
    fi
    local runs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
    echo "fuzz $t: ok, $(ls "corpus/$t" | wc -l) corpus inputs, $runs runs in ${SECS}s"
}
slots=$(nproc)
failed=0
running=0
for t in $targets; do
    if [ "$running" -ge "$slots" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
    smoke "$t" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done
exit "$failed"
