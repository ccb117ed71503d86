#!/usr/bin/env bash
# Provisions the lab's client VM: tools to try applications through fw (curl, redis-cli, iperf3,
# tcpdump, python3). Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

apt_install curl redis-tools iperf3 tcpdump python3
log "client ready: try $here/scenario-idle.sh 30"
