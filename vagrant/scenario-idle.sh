#!/usr/bin/env bash
# What an application sees when a firewall times out an idle connection. Run it on the client VM:
# it opens a connection to the server's redis, checks it works, stays idle IDLE seconds, then uses
# it again, and prints one of:
#   alive   the reply came: the firewall still had the flow
#   reset   the connection was reset or closed (e.g. a policy that resets on expiry)
#   hang    no reply within WAIT seconds: the firewall forgot the flow silently (a black hole)
# Exit status: 0 alive, 1 reset, 3 hang, 2 anything else (usage, no connection, not redis).
#
# Usage: scenario-idle.sh IDLE [HOST [PORT]]   (default: server 6379; WAIT=10 in the environment)
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 IDLE_SECONDS [HOST [PORT]]" >&2
    exit 2
fi
idle=$1 host=${2:-server} port=${3:-6379} wait=${WAIT:-10}

# ping: send a redis PING on fd 3 and print alive, reset or hang.
ping() {
    local reply status=0
    printf 'PING\r\n' >&3 2>/dev/null || { echo reset; return; }
    read -r -t "$wait" reply <&3 2>/dev/null || status=$?
    if [ "$status" -gt 128 ]; then
        echo hang
    elif [ "$status" -ne 0 ]; then
        echo reset
    elif [[ $reply == +PONG* ]]; then
        echo alive
    else
        echo "unexpected reply: $reply"
    fi
}

if ! exec 3<>"/dev/tcp/$host/$port"; then
    echo "no connection to $host:$port" >&2
    exit 2
fi
first=$(ping)
if [ "$first" != alive ]; then
    echo "$host:$port did not answer PING ($first)" >&2
    exit 2
fi
echo "connected to $host:$port; idle for ${idle}s" >&2
sleep "$idle"
outcome=$(ping)
echo "$outcome"
case "$outcome" in
alive) exit 0 ;;
reset) exit 1 ;;
hang) exit 3 ;;
*) exit 2 ;;
esac
