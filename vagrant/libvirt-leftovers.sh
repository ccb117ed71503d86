# What a libvirtd leaves in the host's own network namespace once it has stopped, and its undoing
# (sourced by check.sh, not run): its LIBVIRT_* chains and the jumps into them (filter, nat and
# mangle; IPv4 and IPv6), and IP forwarding, which it turns on for the NAT network vagrant-libvirt
# reaches the VMs over. New namespaces can inherit that forwarding, and the rules stay in the
# host's firewall. check.sh undoes them only for a libvirtd it started itself.
# shellcheck shell=bash

libvirt_host_before=""

# record_host_net: note the host's forwarding for undo_libvirt_host_net; with libvirt's chains
# already there (another libvirtd's), nothing will be undone.
record_host_net() {
    local ip6 # "-" where the host has no IPv6 (ipv6.disable=1)
    ip6=$(sysctl -n net.ipv6.conf.all.forwarding 2>/dev/null || echo -)
    libvirt_host_before="$(sysctl -n net.ipv4.ip_forward) $ip6"
    if [ -n "$(libvirt_chains iptables filter)$(libvirt_chains ip6tables filter)" ]; then
        libvirt_host_before=""
    fi
}

# libvirt_chains iptables|ip6tables TABLE: the names of libvirt's chains in TABLE.
libvirt_chains() {
    { "$1-save" -t "$2" 2>/dev/null || true; } | sed -n 's/^:\(LIBVIRT_[^ ]*\) .*/\1/p'
}

# undo_libvirt_host_net: once libvirtd has stopped, remove its chains and restore forwarding.
undo_libvirt_host_net() {
    [ -n "$libvirt_host_before" ] || return 0
    local family table rule chain words chains ip4 ip6
    for family in iptables ip6tables; do
        for table in filter nat mangle; do
            chains=$(libvirt_chains "$family" "$table")
            [ -n "$chains" ] || continue
            # The jumps from the built-in chains first; libvirt's jump rules carry no quoted words.
            { "$family-save" -t "$table" || true; } |
                awk '$1 == "-A" && $2 !~ /^LIBVIRT_/ && / -j LIBVIRT_/' |
                while read -r rule; do
                    read -ra words <<<"$rule"
                    words[0]=-D
                    "$family" -w -t "$table" "${words[@]}" || log "could not delete: $family -t $table $rule"
                done
            for chain in $chains; do "$family" -w -t "$table" -F "$chain" || true; done
            for chain in $chains; do
                "$family" -w -t "$table" -X "$chain" || log "could not remove $family -t $table $chain"
            done
        done
    done
    read -r ip4 ip6 <<<"$libvirt_host_before"
    sysctl -q -w "net.ipv4.ip_forward=$ip4"
    [ "$ip6" = - ] || sysctl -q -w "net.ipv6.conf.all.forwarding=$ip6"
    libvirt_host_before=""
}
