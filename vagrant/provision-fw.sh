#!/usr/bin/env bash
# Provisions the lab's fw VM: IP forwarding, fwemu installed from the synced repository by its own
# `scripts/setup.sh --runtime` (what `fwemu run` needs, not the test suite's tools), and
# fwemu.service running `fwemu run` with the chosen policy. Idempotent: a second run with the same
# settings changes no file and restarts nothing.
#
# Environment (the Vagrantfile sets it):
#   FWEMU_POLICY    a preset name, or a policy file's path on this VM (checked before any change)
#   FWEMU_RUN_ARGS  more `fwemu run` options, e.g. "--speed 60" (optional)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

policy=${FWEMU_POLICY:?FWEMU_POLICY must name a preset or a policy file}
run_args=${FWEMU_RUN_ARGS:-}
# fwemu.env holds the options as one word-split value (systemd's $VAR), so a path can't have spaces.
case "$policy" in
*[[:space:]]*) die "FWEMU_POLICY=$policy: a policy path must not contain spaces" ;;
esac

"$repo/scripts/setup.sh" --runtime
fwemu=/usr/local/bin/fwemu # what fwemu.service runs, and `sudo fwemu ...` finds
if [ "$(readlink "$fwemu" || true)" != "$repo/.venv/bin/fwemu" ]; then
    ln -sfn "$repo/.venv/bin/fwemu" "$fwemu"
    log "linked $fwemu"
fi

# A bad policy stops here, with fwemu's own message, before anything about the service changes.
"$fwemu" check "$policy" >/dev/null
# The same rule as `fwemu check`: an existing path or a name ending in .toml is a file.
if [[ $policy == *.toml || -e $policy ]]; then
    policy_option=--policy
else
    policy_option=--preset
fi
args="$policy_option $policy${run_args:+ $run_args}"

write_file /etc/sysctl.d/60-fwemu-lab.conf <<'CONF'
# The fw VM routes between the lab's client and server networks (vagrant/provision-fw.sh).
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
CONF
sysctl -q -p /etc/sysctl.d/60-fwemu-lab.conf

lab_changed=false
install_unit fwemu.service
write_file /etc/fwemu/fwemu.env <<CONF
# The policy and options of fwemu.service, written by vagrant/provision-fw.sh. After editing:
# systemctl restart fwemu
FWEMU_ARGS=$args
CONF
ensure_service fwemu.service
log "fw ready: fwemu run $args"
