#!/usr/bin/env bash
# Runs shell commands as root in a scratch copy of this machine, so that a provisioning script can
# run for real without changing the machine: a copy-on-write overlay of / (writes land in a tmpfs
# and vanish), in private mount and network namespaces (the script re-executes itself in new
# ones). Stand-in commands, first on PATH, replace those that would act on the running system
# (systemctl, sysctl...).
#
# Usage: scratch_root.sh OUT FAKES SYNCED REPO STEP...
#   OUT     a directory for the results: OUT/N/{rc,stdout,stderr,calls,upper/} for step N (from 1),
#           upper/ holding every file the steps so far created or changed
#   FAKES   mounted at /fwemu-test: its bin/ comes first on PATH, and the stand-ins there may
#           append lines to /fwemu-test/calls (moved to OUT/N/calls after each step)
#   SYNCED  mounted at /vagrant, as Vagrant's synced folder is
#   REPO    this repository, mounted read-only at the same path (for its .venv)
#   STEP    a bash command line, run in the scratch root as root with a clean environment
set -euo pipefail
if [ -z "${FWEMU_SCRATCH_NS:-}" ]; then
    exec unshare --mount --propagation private --net --fork --kill-child \
        env FWEMU_SCRATCH_NS=1 bash "$0" "$@"
fi
out=$1 fakes=$2 synced=$3 repo=$4
shift 4

scratch=$out/scratch
mkdir -p "$scratch"
mount -t tmpfs fwemu-scratch "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay fwemu-scratch -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" \
    "$scratch/root"
root=$scratch/root
for dir in /proc /sys /dev; do
    mount --rbind "$dir" "$root$dir"
done
mkdir -p "$root/vagrant" "$root/fwemu-test" "$root$repo"
mount --bind "$synced" "$root/vagrant"
mount --bind "$fakes" "$root/fwemu-test"
mount --bind "$repo" "$root$repo"
mount -o remount,bind,ro "$root$repo"

step=0
for command in "$@"; do
    step=$((step + 1))
    result=$out/$step
    mkdir -p "$result"
    rc=0
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
        PATH=/fwemu-test/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        bash -c "$command" >"$result/stdout" 2>"$result/stderr" || rc=$?
    echo "$rc" >"$result/rc"
    touch "$fakes/calls"
    mv "$fakes/calls" "$result/calls"
    cp -a "$scratch/upper" "$result/upper"
done
