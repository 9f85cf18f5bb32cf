#!/bin/sh
# Wheels of a newer uvicorn than Debian 12's 0.17.6, for the lab test that deploys an ASGI
# app with its own venv (lab/tests/apps.rs, graceful_restarts_under_load): uvicorn,
# gunicorn and their dependencies from PyPI, pinned, pure-python wheels only (a release
# ships wheels; the agent installs them offline). Idempotent: does nothing when the
# directory for these exact versions is complete. Its name carries the versions, so
# changing a pin downloads a new set.
#   lab/uvicorn-wheels.sh          download if missing, print nothing else
#   lab/uvicorn-wheels.sh --path   print the directory (tests use it), download nothing
set -eu

UVICORN=0.54.0
GUNICORN=27.0.1
H11=0.16.0
CLICK=8.5.1
DIR="${FLEET_UVICORN_WHEELS:-/var/cache/fleet/uvicorn-$UVICORN-gunicorn-$GUNICORN-wheels}"

if [ "${1:-}" = "--path" ]; then
    echo "$DIR"
    exit 0
fi
# The stamp is written last: a download cut short is done again.
if [ -f "$DIR/.complete" ]; then
    echo "lab/uvicorn-wheels.sh: $DIR present"
    exit 0
fi
echo "lab/uvicorn-wheels.sh: downloading uvicorn $UVICORN and gunicorn $GUNICORN wheels into $DIR"
rm -rf "$DIR"
mkdir -p "$DIR"
# Debian's python3 has no pip module without python3-pip; a throwaway venv has one
# (python3-venv is in lab/setup.sh).
PIPVENV="$(mktemp -d)"
trap 'rm -rf "$PIPVENV"' EXIT
python3 -m venv "$PIPVENV"
# --no-deps with every dependency pinned: exactly this set, which the lab host's python
# (3.11) accepts without more (typing-extensions is for python < 3.11 only).
"$PIPVENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    --dest "$DIR" \
    "uvicorn==$UVICORN" "gunicorn==$GUNICORN" "h11==$H11" "click==$CLICK"
printf 'uvicorn==%s\ngunicorn==%s\nh11==%s\nclick==%s\n' \
    "$UVICORN" "$GUNICORN" "$H11" "$CLICK" > "$DIR/requirements.txt"
touch "$DIR/.complete"
