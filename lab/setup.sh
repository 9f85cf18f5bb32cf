#!/bin/sh
# Installs what the lab needs on the outer machine (Debian 12). Idempotent:
# apt-get only installs what is missing. Run as root.
#   lab/setup.sh            packages only
#   lab/setup.sh --build    packages, then release builds of fleet-lab and the fleet binaries
set -eu

# prometheus: promtool for the rule tests and a real server for the discovery test.
# dpkg-dev apt-utils gnupg: packaging/deb/build.sh (dpkg-scanpackages, apt-ftparchive, gpg);
# lintian: the package tests (lab/tests/packages.rs); postgresql-15: the PostgreSQL store's
# tests (lab/pg-test-cluster.sh).
PKGS="systemd-container debootstrap nftables iproute2 util-linux openssh-client curl python3-venv ca-certificates prometheus dpkg-dev apt-utils gnupg lintian postgresql-15"

if [ "$(id -u)" -ne 0 ]; then
    echo "lab/setup.sh: run as root (the lab mounts overlays and creates a bridge)" >&2
    exit 1
fi

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "lab/setup.sh: installing$missing"
    # postgresql-15 is only a server binary for the store's tests (lab/pg-test-cluster.sh):
    # no system cluster on port 5432 for them.
    case "$missing" in *postgresql-15*)
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/fleet-no-main.conf ;;
    esac
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
else
    echo "lab/setup.sh: outer packages already installed"
fi

if [ "${1:-}" = "--build" ]; then
    cd "$(dirname "$0")/.."
    cargo build --release -p fleet-lab -p fleet-agent -p fleet-controller
fi
