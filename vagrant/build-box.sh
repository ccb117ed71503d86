#!/usr/bin/env bash
# Builds a Debian 12 Vagrant box for the libvirt provider from Debian's packages alone, for
# machines that cannot download a box: mmdebstrap of bookworm with a kernel, systemd, openssh-server,
# sudo and rsync (Vagrant's synced folder), a `vagrant` user holding Vagrant's insecure public key
# (shipped inside Debian's vagrant package; Vagrant replaces it at the first `vagrant up`), on an
# 8 GB qcow2 disk booted by extlinux. vagrant/check.sh runs it when no box is configured.
#
# Usage (as root): vagrant/build-box.sh BOX_FILE   (also writes BOX_FILE.vmlinuz, the box's kernel)
# Needs mmdebstrap, extlinux, syslinux-common, fdisk, qemu-utils and vagrant (check.sh installs
# them). Takes 3-5 minutes here; the box is 234 MB (a 742 MB qcow2 image inside).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

[ $# -eq 1 ] || die "usage: $0 BOX_FILE"
box=$1
[ "$(id -u)" -eq 0 ] || die "build-box.sh: needs root (loop devices, mounts)"
key=$(find /usr/share/rubygems-integration/all/gems -path '*/vagrant-*/keys/vagrant.pub' -print -quit 2>/dev/null || true)
[ -n "$key" ] || die "build-box.sh: Vagrant's insecure key not found: apt install vagrant"
mbr=/usr/lib/EXTLINUX/mbr.bin
[ -f "$mbr" ] || die "build-box.sh: $mbr not found: apt install extlinux syslinux-common"

mkdir -p "$(dirname "$box")"
work=$(mktemp -d /var/tmp/fwemu-box.XXXXXX)
loop=""
cleanup() {
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    [ -z "$loop" ] || losetup -d "$loop"
    rm -rf "$work"
}
trap cleanup EXIT

log "building the root file system (mmdebstrap)"
mirrors=(
    "deb http://deb.debian.org/debian bookworm main"
    "deb http://deb.debian.org/debian bookworm-updates main"
    "deb http://deb.debian.org/debian-security bookworm-security main"
)
# Each hook is run by mmdebstrap with the root's directory as $1.
# The host's own CAs (a TLS-intercepting proxy's, in /usr/local/share/ca-certificates) go into
# the box, and pip uses the system's bundle: without them the fw VM's pip install fails with
# CERTIFICATE_VERIFY_FAILED where the host reaches PyPI only through such a proxy (seen here).
# shellcheck disable=SC2016
trust_host_cas='mkdir -p "$1/usr/local/share/ca-certificates"
for ca in /usr/local/share/ca-certificates/*.crt; do
    if [ -f "$ca" ]; then cp "$ca" "$1/usr/local/share/ca-certificates/"; fi
done
chroot "$1" update-ca-certificates >/dev/null'
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=important \
    --include=linux-image-amd64,systemd-sysv,openssh-server,sudo,rsync,ca-certificates \
    --customize-hook='chroot "$1" useradd --create-home --shell /bin/bash vagrant' \
    --customize-hook='echo vagrant:vagrant | chroot "$1" chpasswd' \
    --customize-hook='echo "vagrant ALL=(ALL) NOPASSWD:ALL" >"$1/etc/sudoers.d/vagrant"' \
    --customize-hook="install -D -m 0600 $key \"\$1/home/vagrant/.ssh/authorized_keys\"" \
    --customize-hook='chroot "$1" chown -R vagrant:vagrant /home/vagrant/.ssh' \
    --customize-hook='echo fwemu-box >"$1/etc/hostname"' \
    --customize-hook="$trust_host_cas" \
    --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" >"$1/etc/pip.conf"' \
    --customize-hook='printf "127.0.0.1 localhost\n127.0.1.1 fwemu-box\n" >"$1/etc/hosts"' \
    --customize-hook='rm -f "$1/etc/resolv.conf"' \
    --customize-hook='echo "/dev/vda1 / ext4 errors=remount-ro 0 1" >"$1/etc/fstab"' \
    --customize-hook='printf "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n" >"$1/etc/network/interfaces"' \
    bookworm "$work/root" "${mirrors[@]}"

log "making the disk (8 GB, one ext4 partition, extlinux)"
kernel=$(cd "$work/root/boot" && ls vmlinuz-*)
initrd=$(cd "$work/root/boot" && ls initrd.img-*)
cp "$work/root/boot/$kernel" "$box.vmlinuz" # what vagrant/check.sh boots to see whether KVM works
mkdir -p "$work/root/boot/extlinux"
# Interfaces named eth0, eth1... as the lab's scripts and Vagrant's network setup expect.
cat >"$work/root/boot/extlinux/extlinux.conf" <<CONF
default debian
timeout 1
label debian
    kernel /boot/$kernel
    append initrd=/boot/$initrd root=/dev/vda1 ro console=ttyS0 net.ifnames=0
CONF
size=$((8 << 30)) start=$((2048 * 512))
truncate -s "$size" "$work/disk.raw"
echo "start=$((start / 512)), type=83, bootable" | sfdisk --quiet "$work/disk.raw"
# The partition alone, by its offset: partition devices of a loop device need udev.
loop=$(losetup --show --find --offset "$start" --sizelimit "$((size - start))" "$work/disk.raw")
# Filled from the root without mounting it; extlinux reads ext4 without 64bit block numbers only.
mkfs.ext4 -q -O ^64bit -L root -d "$work/root" "$loop"
mkdir "$work/mnt"
mount "$loop" "$work/mnt"
extlinux --install "$work/mnt/boot/extlinux" 2>/dev/null
# Written through before the unmount, which may not be the last: a mount namespace made
# elsewhere meanwhile holds the file system until it ends.
sync -f "$work/mnt"
umount "$work/mnt"
losetup -d "$loop"
loop=""
dd if="$mbr" of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none

log "packing the box"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
rm "$work/disk.raw"
echo '{"provider": "libvirt", "format": "qcow2", "virtual_size": 8}' >"$work/metadata.json"
echo 'Vagrant.configure("2") { |config| config.vm.provider(:libvirt) { |libvirt| libvirt.disk_bus = "virtio" } }' >"$work/Vagrantfile"
tar -C "$work" -czf "$box.partial" metadata.json Vagrantfile box.img
mv "$box.partial" "$box"
log "box ready: $box ($(du -h "$box" | cut -f1))"
