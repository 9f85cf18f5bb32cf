#!/bin/sh
# The pinned Ansible toolchain for the collection in ansible/: a Python venv with
# ansible-core and ansible-lint from PyPI. Idempotent: does nothing when the venv for
# these exact versions exists. Its directory is named after the versions, so changing a
# pin below builds a new one.
#   lab/ansible-venv.sh          install if missing, print nothing else
#   lab/ansible-venv.sh --path   print the venv's directory (tests use it), install nothing
set -eu

ANSIBLE_CORE=2.19.14
ANSIBLE_LINT=26.10.1
VENV="${FLEET_ANSIBLE_VENV:-/var/cache/fleet/ansible-core-$ANSIBLE_CORE-lint-$ANSIBLE_LINT}"

if [ "${1:-}" = "--path" ]; then
    echo "$VENV"
    exit 0
fi
# The stamp is written last: a venv cut short by an error or ^C is rebuilt.
if [ -f "$VENV/.complete" ]; then
    echo "lab/ansible-venv.sh: $VENV present"
    exit 0
fi
echo "lab/ansible-venv.sh: installing ansible-core $ANSIBLE_CORE and ansible-lint $ANSIBLE_LINT into $VENV"
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "ansible-core==$ANSIBLE_CORE" "ansible-lint==$ANSIBLE_LINT"
touch "$VENV/.complete"
