# Helpers shared by the lab's provisioning scripts (sourced, not run). They make a second
# provisioning run a no-op: files are rewritten only when their content differs, packages
# installed only when missing, services restarted only when their files changed.
# shellcheck shell=bash

# Set to true by install_file/write_file when they change a file; callers reset it per service.
lab_changed=false

log() {
    printf 'fwemu-lab: %s\n' "$*" >&2
}

die() {
    log "$*"
    exit 2
}

# apt_install PACKAGE...: install the packages that are not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# install_file SRC DEST [MODE]: copy SRC to DEST (creating its directory) unless DEST already
# has the same content.
install_file() {
    local src=$1 dest=$2 mode=${3:-0644}
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        return
    fi
    install -D -m "$mode" "$src" "$dest"
    lab_changed=true
    log "wrote $dest"
}

# write_file DEST [MODE] <CONTENT: install_file with the content read from stdin.
write_file() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    install_file "$tmp" "$@"
    rm -f "$tmp"
}

# install_unit NAME: install the systemd unit vagrant/units/NAME (next to this file).
install_unit() {
    install_file "$(dirname "${BASH_SOURCE[0]}")/units/$1" "/etc/systemd/system/$1"
}

# ensure_service UNIT: enabled at boot and running; restarted if a file it uses changed since
# lab_changed was last reset.
ensure_service() {
    if "$lab_changed"; then
        systemctl daemon-reload
    fi
    systemctl enable --quiet "$1"
    if "$lab_changed"; then
        systemctl restart "$1"
    else
        systemctl start "$1"
    fi
}
