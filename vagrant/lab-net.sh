#!/usr/bin/env bash
# The lab's names and routes on one VM, run at every `vagrant up` (Vagrant rewrites the private
# interfaces' configuration at boot, which drops routes added by hand). Idempotent.
#
# Environment (the Vagrantfile sets it):
#   LAB_HOSTS      "NAME=IP ...": the lab's other machines, as seen from this one (/etc/hosts)
#   LAB_ROUTE      optional "NET GATEWAY": reach the lab's other network through fw
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

hosts=${LAB_HOSTS:?LAB_HOSTS must list NAME=IP pairs}
marker='# fwemu-lab'
{
    grep -vF "$marker" /etc/hosts || true
    for pair in $hosts; do
        printf '%s %s %s\n' "${pair#*=}" "${pair%%=*}" "$marker"
    done
} | write_file /etc/hosts

if [ -n "${LAB_ROUTE:-}" ]; then
    read -r net gateway <<<"$LAB_ROUTE"
    ip route replace "$net" via "$gateway"
    log "route: $net via $gateway"
fi
