#!/usr/bin/env bash
# The VM lab from `vagrant up` to the end, on a machine with libvirt: brings client, fw and server
# up with vagrant-libvirt, runs the client's idle scenario through fw (alive under the policy's
# timer, reset past it), checks that `fwemu flows` on fw lists the connection meanwhile, and
# destroys what it made (the VMs, the volumes and networks libvirt got for them, and what a
# libvirtd it started itself leaves in the host's firewall and forwarding) on every way out.
#
# Usage (as root): vagrant/check.sh
# Environment:
#   FWEMU_BOX        the box (default: a Debian 12 box built here from Debian's packages by
#                    vagrant/build-box.sh, cached in /var/cache/fwemu/vagrant/)
#   FWEMU_VM_DRIVER  kvm or qemu (default: kvm if a kernel boots under it, else qemu, software
#                    emulation: /dev/kvm may be a nested layer on which a kernel does not boot)
# It installs what it needs with apt (vagrant-libvirt, libvirt, QEMU, the box's build tools) and
# starts libvirtd if nothing runs it. It is not part of the test suite: under software emulation
# it takes about half an hour (docs/vagrant.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"
# shellcheck source-path=SCRIPTDIR source=libvirt-leftovers.sh
source "$here/libvirt-leftovers.sh"

[ "$(id -u)" -eq 0 ] || die "check.sh: needs root (libvirt's system instance)"
started=$SECONDS
step() {
    log "[$(((SECONDS - started) / 60))m$(printf %02d $(((SECONDS - started) % 60)))s] $*"
}
# A command on a VM (its stdout, without ssh's CRs), bounded: a VM that stops answering must not
# hang the check.
on() {
    local vm=$1
    shift
    timeout 300 vagrant ssh "$vm" -c "$*" -- -o ConnectTimeout=30 | tr -d '\r'
}
work=$(mktemp -d /tmp/fwemu-vagrant-check.XXXXXX)

own_libvirtd=()
# Stops the libvirtd this check started, if it did, and undoes what it left in the host's
# namespace (libvirt-leftovers.sh).
stop_own_libvirtd() {
    local pid_file pid
    for pid_file in "${own_libvirtd[@]}"; do
        pid=$(cat "$pid_file" 2>/dev/null) || continue
        kill "$pid" || true
        timeout 30 tail --pid="$pid" -f /dev/null || log "pid $pid did not stop"
    done
    undo_libvirt_host_net
    rm -rf "$work"
}
trap stop_own_libvirtd EXIT

step "installing what is missing"
# dnsmasq-base: libvirt starts its networks with it; a Recommends of libvirt-daemon-system that
# apt_install (no recommends) would skip, found by the first run on a fresh machine.
apt_install vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base qemu-system-x86 \
    qemu-utils iptables mmdebstrap extlinux syslinux-common fdisk
export LIBVIRT_DEFAULT_URI=qemu:///system VAGRANT_CHECKPOINT_DISABLE=1
if ! virsh uri >/dev/null 2>&1; then
    if [ "$(ps -p 1 -o comm=)" = systemd ]; then
        systemctl start libvirtd
    else # no systemd to start it (a container): run it for the check's duration
        record_host_net
        virtlogd --daemon --pid-file "$work/virtlogd.pid"
        libvirtd --daemon --pid-file "$work/libvirtd.pid"
        own_libvirtd=("$work/libvirtd.pid" "$work/virtlogd.pid")
    fi
    for _ in $(seq 100); do
        if virsh uri >/dev/null 2>&1; then break; fi
        sleep 0.2
    done
    virsh uri >/dev/null || die "check.sh: libvirtd does not answer"
fi
own_pool=false
if ! virsh pool-info default >/dev/null 2>&1; then
    virsh -q pool-define-as default dir --target /var/lib/libvirt/images
    virsh -q pool-build default && virsh -q pool-start default
    own_pool=true
fi
# What libvirt had before: the clean-up removes only what came after.
domains_before=$(virsh list --all --name)
networks_before=$(virsh net-list --all --name)
volumes_before=$(virsh vol-list default | awk 'NR > 2 && $1 { print $1 }')

cleanup() {
    local status=$? name
    trap - EXIT INT TERM
    step "destroying the lab"
    (cd "$here" && timeout 600 vagrant destroy -f >/dev/null 2>&1) || log "vagrant destroy failed"
    for name in $(virsh list --all --name); do
        grep -qxF "$name" <<<"$domains_before" && continue
        virsh -q destroy "$name" 2>/dev/null || true
        virsh -q undefine "$name" --remove-all-storage || true
    done
    for name in $(virsh net-list --all --name); do
        grep -qxF "$name" <<<"$networks_before" && continue
        virsh -q net-destroy "$name" 2>/dev/null || true
        virsh -q net-undefine "$name" || true
    done
    for name in $(virsh vol-list default | awk 'NR > 2 && $1 { print $1 }'); do
        grep -qxF "$name" <<<"$volumes_before" || virsh -q vol-delete --pool default "$name" || true
    done
    if "$own_pool"; then
        virsh -q pool-destroy default || true
        virsh -q pool-undefine default || true
    fi
    stop_own_libvirtd
    if [ "$status" -eq 0 ]; then
        step "lab checked and destroyed"
    else
        step "FAILED (status $status); lab destroyed"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

kernel=""
if [ -z "${FWEMU_BOX:-}" ]; then
    cache=/var/cache/fwemu/vagrant
    # A new build-box.sh makes a new box.
    box_file=$cache/fwemu-bookworm-$(sha256sum "$here/build-box.sh" | cut -c1-12).box
    if [ ! -f "$box_file" ]; then
        step "building the Debian box"
        rm -f "$cache"/fwemu-bookworm-*
        "$here/build-box.sh" "$box_file"
    fi
    FWEMU_BOX=fwemu-local/$(basename "$box_file" .box)
    for name in $(vagrant box list --machine-readable | awk -F, '$3 == "box-name" { print $4 }'); do
        case "$name" in
        "$FWEMU_BOX") ;;
        fwemu-local/*) vagrant box remove --force --all "$name" >/dev/null ;;
        esac
    done
    if ! vagrant box list | grep -q "^$FWEMU_BOX "; then
        step "adding $box_file as $FWEMU_BOX"
        vagrant box add --name "$FWEMU_BOX" "$box_file" >/dev/null
    fi
    kernel=$box_file.vmlinuz
fi
export FWEMU_BOX

# Whether the box's kernel boots under KVM as far as its panic for want of a root file system:
# a second or two where KVM works (8 s under emulation). Where /dev/kvm is a nested layer that
# does not run it (seen here), it hangs after "Probing EDD". Without the box's kernel: whether
# /dev/kvm opens.
kvm_boots() {
    local console
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    [ -n "$kernel" ] || return 0
    console=$(timeout 30 qemu-system-x86_64 -machine accel=kvm -cpu host -m 256 -nographic \
        -no-reboot -kernel "$kernel" -append "console=ttyS0 panic=-1" 2>&1 || true)
    grep -q "Kernel panic" <<<"$console"
}
if [ -z "${FWEMU_VM_DRIVER:-}" ]; then
    FWEMU_VM_DRIVER=qemu
    kvm_boots && FWEMU_VM_DRIVER=kvm
fi
export FWEMU_VM_DRIVER
# A policy whose timer the scenario can outlast: Azure's 4 min idle timeout, reset on expiry, 60x.
export FWEMU_POLICY=azure-lb-tcp-reset FWEMU_RUN_ARGS="--speed 60"

cd "$here"
step "vagrant up (box $FWEMU_BOX, driver $FWEMU_VM_DRIVER)"
timeout 3600 vagrant up --provider=libvirt
step "lab up"

step "client: idle 1 s (under fw's 4 s timer)"
[ "$(on client 'bash /vagrant/vagrant/scenario-idle.sh 1')" = alive ] || die "check.sh: expected alive"
step "client: idle 12 s (past it), while fw lists the connection"
on client 'bash /vagrant/vagrant/scenario-idle.sh 12' >"$work/idle.out" &
idle=$!
listed=""
for _ in $(seq 20); do
    listed=$(on fw 'sudo fwemu flows --match "dport=6379"' || true)
    grep -q ESTABLISHED <<<"$listed" && break
    sleep 1
done
printf '%s\n' "$listed"
grep -q ESTABLISHED <<<"$listed" || die "check.sh: fwemu flows on fw did not list the connection"
wait "$idle" || true
[ "$(cat "$work/idle.out")" = reset ] || die "check.sh: expected reset"
on fw 'sudo journalctl -u fwemu --no-pager -o cat | tail -n 5'
