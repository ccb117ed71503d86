#!/usr/bin/env bash
# Sets up fwemu on a fresh Debian machine (as root): system packages, a virtualenv in .venv, the
# package in it (editable, from this clone). Idempotent: a second run only checks.
#
# Usage: scripts/setup.sh [--runtime]
#   (no option)  the development set-up: also the test suite's tools (tcpdump, iperf3, conntrack,
#                ruby, vagrant, systemd-nspawn, mmdebstrap...) and fwemu's test extras
#   --runtime    only what `fwemu run` and its ops commands need: an appliance such as the VM
#                lab's fw (vagrant/provision-fw.sh), or a router
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
"") runtime=false ;;
--runtime) runtime=true ;;
*)
    echo "usage: scripts/setup.sh [--runtime]" >&2
    exit 2
    ;;
esac

# What `fwemu run` needs: iptables for its rules, a venv, and what builds NetfilterQueue (PyPI has
# only its source: a compiler, Python's headers and libnetfilter_queue's).
pkgs=(iptables python3-venv python3-dev gcc libnetfilter-queue-dev)
if ! "$runtime"; then
    # The test suite's: the labs' tools, and the VM lab's checks (ruby, shellcheck and systemd;
    # systemd-container, mmdebstrap and rsync for the containers of tests/vmlab).
    pkgs+=(iproute2 iputils-ping tcpdump iperf3 conntrack procps rsync shellcheck ruby systemd systemd-container mmdebstrap)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing system packages (${missing[*]}); run as root to install them" >&2
        exit 2
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Vagrant, only to `vagrant validate` the VM lab's Vagrantfile in the tests: without its
# recommends (hypervisors, libvirt, NFS), which the checks don't need.
if ! "$runtime" && ! dpkg -s vagrant >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "setup: installing vagrant (for 'vagrant validate')" >&2
        [ ${#missing[@]} -gt 0 ] || apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends vagrant >/dev/null
    else
        echo "setup: vagrant is missing (only the VM lab's checks need it); run as root to install it" >&2
    fi
fi

if "$runtime"; then
    what=. check=(--runtime)
else
    what='.[test]' check=()
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# pip only when something is missing: it rewrites .venv/bin/fwemu even when nothing changed (a
# fwemu starting meanwhile would not find it). installed.py says what is missing, if anything.
if .venv/bin/python scripts/installed.py "${check[@]}"; then
    echo "setup: ready (.venv/bin/fwemu): nothing to install" >&2
    exit 0
fi
if [ "${FWEMU_PURE:-}" = 1 ]; then
    echo "setup: installing fwemu into .venv (FWEMU_PURE: the core left uncompiled)" >&2
else
    # pip is quiet meanwhile: say what the wait is.
    echo "setup: installing fwemu into .venv; compiling its core takes a minute or two" \
        "(far longer in an emulated VM)" >&2
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# An editable install from a flat layout makes setuptools warn, in a banner, that folders named like
# the package may shadow it at import time: here that folder is the package itself.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e "$what"
echo "setup: ready (.venv/bin/fwemu)" >&2
