"""Flow keys and packed addresses made readable, cached: events name flows often, and rule
matching needs an ipaddress object per new flow (formatting via ipaddress costs ~1 µs)."""

from __future__ import annotations

import ipaddress

from fwemu.core import packet as pk
from fwemu.core.events import FlowId
from fwemu.policy.model import PROTOCOL_NAME

_ADDRESS_TEXT: dict[bytes, str] = {}


def ntop(addr: bytes) -> str:
    """A packed IPv4 or IPv6 address as text."""
    text = _ADDRESS_TEXT.get(addr)
    if text is None:
        if len(_ADDRESS_TEXT) >= 4096:
            _ADDRESS_TEXT.clear()  # bounded; a busy network just formats again
        text = _ADDRESS_TEXT[addr] = (
            f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}"
            if len(addr) == 4
            else str(ipaddress.ip_address(addr))
        )
    return text


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ADDRESS: dict[bytes, IPAddress] = {}  # a reload matches 100k flows at once


def address(packed: bytes) -> IPAddress:
    """A packed address as an ipaddress object, for rule matching."""
    found = _ADDRESS.get(packed)
    if found is None:
        if len(_ADDRESS) >= 4096:
            _ADDRESS.clear()  # bounded, as _ADDRESS_TEXT
        found = _ADDRESS[packed] = ipaddress.ip_address(packed)
    return found


def flow_id(key: bytes, client_forward: bool) -> FlowId:
    """The flow of `key`, client first (the client is its first endpoint or not).

    pk.endpoints(), inlined: every event needs one."""
    size = 4 if len(key) == pk.KEY4_LEN else 16
    ports = size + size
    a, b = ntop(key[:size]), ntop(key[size:ports])
    port_a = key[ports] << 8 | key[ports + 1]
    port_b = key[ports + 2] << 8 | key[ports + 3]
    proto = PROTOCOL_NAME[key[-1]]
    if client_forward:
        return FlowId(a, port_a, b, port_b, proto)
    return FlowId(b, port_b, a, port_a, proto)
