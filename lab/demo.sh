#!/usr/bin/env bash
# README's first command: on a fresh Debian 12 machine as root, install what the lab needs,
# build fleet, boot a lab of real-systemd hosts, enroll an agent on each and show them.
# The lab stays up afterwards; `target/release/fleet-lab down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash lab/setup.sh
cargo build --release --locked -p fleet-lab -p fleet-agent -p fleet-controller
exec target/release/fleet-lab demo
