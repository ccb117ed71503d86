#!/usr/bin/env bash
# Provisions the lab's server VM: an HTTP server on port 8080 (files from /srv/lab, including a
# large one for long transfers), redis on 6379 and iperf3 on 5201, all reachable from the client
# network and started at boot. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

apt_install curl redis-server iperf3 tcpdump python3

mkdir -p /srv/lab
write_file /srv/lab/index.html <<'HTML'
<!doctype html><title>fwemu lab</title><p>Served by the lab's server VM, through fw.
HTML
# Sparse, so free to create: `curl --limit-rate 100k` on it makes a transfer that lasts minutes.
[ -e /srv/lab/64M ] || truncate -s 64M /srv/lab/64M

lab_changed=false
install_unit lab-http.service
ensure_service lab-http.service

lab_changed=false
install_unit lab-iperf3.service
ensure_service lab-iperf3.service

lab_changed=false
write_file /etc/redis/fwemu-lab.conf <<'CONF'
# The lab's redis (vagrant/provision-server.sh): reachable from the client network, and no TCP
# keepalives of its own, so that an idle connection really is idle for the firewall in between
# (redis's default, tcp-keepalive 300, would refresh fw's timer every 5 minutes).
bind * -::*
protected-mode no
tcp-keepalive 0
CONF
if ! grep -qxF 'include /etc/redis/fwemu-lab.conf' /etc/redis/redis.conf; then
    # Last, so that its settings override the packaged ones.
    echo 'include /etc/redis/fwemu-lab.conf' >>/etc/redis/redis.conf
    lab_changed=true
fi
ensure_service redis-server.service
log "server ready: http :8080, redis :6379, iperf3 :5201"
