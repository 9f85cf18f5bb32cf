#!/usr/bin/env bash
# Builds fleet's three Debian packages and a signed flat apt repository:
#
#   bash packaging/deb/build.sh [OUT_DIR]          (default: target/debian)
#
#   OUT_DIR/fleet-agent_V_amd64.deb, fleet-controller_V_amd64.deb, fleetctl_V_amd64.deb
#   OUT_DIR/repo/            the .debs + Packages, Packages.gz, Release, InRelease, Release.gpg
#   OUT_DIR/fleet-archive-keyring.gpg   the repository's public key (for signed-by=)
#
# Environment:
#   FLEET_DEB_VERSION=V   package version instead of the workspace's (e.g. 0.1.1-1, to get
#                         a newer fleet-agent from the same source for upgrade tests). The
#                         repo keeps every version built into the same OUT_DIR.
#   FLEET_REPO_KEY=FILE   OpenPGP secret key that signs the repo (armored or binary). Without
#                         it, a lab key is generated once and kept in OUT_DIR/lab-signing-key.asc
#                         (mode 0600): fine for the lab, not for real machines.
#
# Needs cargo-deb (`cargo install cargo-deb --locked`), dpkg-dev, apt-utils and gnupg
# (lab/setup.sh installs them). The release build is cargo's: a no-op when up to date.
set -euo pipefail
cd "$(dirname "$0")/../.."
ws=$(pwd)

out=${1:-target/debian}
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo="$out/repo"

die() {
    echo "build.sh: $*" >&2
    exit 1
}

for tool in dpkg-scanpackages apt-ftparchive gpg; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool not found: apt-get install dpkg-dev apt-utils gnupg (or run lab/setup.sh)"
done
if ! cargo deb --version >/dev/null 2>&1; then
    echo "build.sh: installing cargo-deb (once per machine, ~4 min)"
    cargo install cargo-deb --locked
fi

version_args=()
if [ -n "${FLEET_DEB_VERSION:-}" ]; then
    # Debian version syntax: [epoch:]upstream[-revision], upstream starting with a digit.
    [[ "$FLEET_DEB_VERSION" =~ ^([0-9]+:)?[0-9][A-Za-z0-9.+~]*(-[A-Za-z0-9.+~]+)?$ ]] ||
        die "FLEET_DEB_VERSION=$FLEET_DEB_VERSION is not a Debian version (e.g. 0.1.1-1)"
    version_args=(--deb-version "$FLEET_DEB_VERSION")
fi

# Run from a test, the environment holds what cargo sets for the test process
# (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). ring's build script tracks some of those, so
# a nested cargo would see them changed and rebuild the whole release tree (~3 min), and
# the next plain build would rebuild it again. They describe the caller, not this build.
while IFS= read -r var; do
    case "$var" in
    CARGO | CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_NAME | \
        CARGO_BIN_EXE_* | CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR | OUT_DIR)
        unset "$var"
        ;;
    esac
done < <(compgen -e)

# The same command as lab/test-all.sh, so the two share one build (a different package
# selection could unify features differently and rebuild everything).
echo "==> release build"
cargo build --workspace --release --locked --bins

echo "==> man pages and completions (packaging/deb/generated)"
# The dev profile: the generator only renders text, and it reuses the test build's artifacts.
cargo run --locked -q -p fleet-pkg-gen --features cli -- "$ws/packaging/deb/generated"

echo "==> packages"
mkdir -p "$repo"
for pkg in fleet-agent fleet-controller fleetctl; do
    deb=$(cargo deb --no-build --locked -q -p "$pkg" -o "$out" "${version_args[@]}")
    # Hard link (same file system) rather than copy: the repo holds what was just built.
    ln -f "$deb" "$repo/" 2>/dev/null || cp -f "$deb" "$repo/"
    echo "$deb"
done

echo "==> signed apt repository ($repo)"
gnupg=$(mktemp -d)
cleanup() {
    gpgconf --homedir "$gnupg" --kill all >/dev/null 2>&1 || true
    rm -rf "$gnupg"
}
trap cleanup EXIT
gpg_() { gpg --homedir "$gnupg" --batch --quiet --pinentry-mode loopback --passphrase '' "$@"; }

key=${FLEET_REPO_KEY:-}
if [ -z "$key" ]; then
    key="$out/lab-signing-key.asc"
    if [ ! -s "$key" ]; then
        echo "build.sh: generating the lab repository key $key"
        gpg_ --quick-gen-key "fleet lab archive (not for production)" ed25519 sign never
        (umask 077 && gpg_ --armor --export-secret-keys >"$key.tmp")
        mv "$key.tmp" "$key"
    fi
fi
[ -r "$key" ] || die "FLEET_REPO_KEY=$key is not a readable file"
gpg_ --import "$key" 2>/dev/null || die "cannot import the signing key from $key"
fpr=$(gpg_ --list-secret-keys --with-colons | awk -F: '$1 == "fpr" { print $10; exit }')
[ -n "$fpr" ] || die "$key holds no secret key"
gpg_ --export "$fpr" >"$out/fleet-archive-keyring.gpg"

(
    cd "$repo"
    rm -f Packages Packages.gz Release InRelease Release.gpg
    dpkg-scanpackages --multiversion . 2>/dev/null >Packages
    gzip -9nk Packages
    apt-ftparchive \
        -o APT::FTPArchive::Release::Origin=fleet \
        -o APT::FTPArchive::Release::Label=fleet \
        -o APT::FTPArchive::Release::Description="fleet packages" \
        release . >"$out/Release.tmp"
    mv "$out/Release.tmp" Release
    gpg_ --local-user "$fpr" --clearsign -o InRelease Release
    gpg_ --local-user "$fpr" --armor --detach-sign -o Release.gpg Release
)
echo "build.sh: repository $repo signed by $fpr; keyring $out/fleet-archive-keyring.gpg"
echo "  deb [signed-by=/usr/share/keyrings/fleet-archive-keyring.gpg] http://HOST:PORT/ ./"
