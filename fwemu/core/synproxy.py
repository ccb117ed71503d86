"""A middlebox that answers SYNs itself (SYN cookies, TCP Intercept) and translates sequence
numbers for the rest of the connection; and sequence randomisation, which translates alone.

The proxy, as Linux SYNPROXY (nf_synproxy_core.c) and the products do it:
1. a client's SYN is answered with a SYN-ACK whose ISN is a cookie (fwemu.core.cookies) and
   the middlebox's own options ([syn_proxy]); the SYN is dropped, nothing is kept;
2. the client's ACK, if it carries a valid cookie, opens the flow: a SYN with the client's ISN
   and options goes to the server, the ACK is dropped (so is anything the client sends before
   the server answered);
3. the server's SYN-ACK is dropped and answered with the ACK the client would send; from now on
   the server's sequence numbers are shifted into the cookie's, in every packet both ways.
   A server that answers with a RST (it is down) gets the client a RST instead.

The flow table tracks each side in its own numbering, as conntrack does with seqadj: it sees
every packet as its sender sent it, with the ACK and SACK edges moved back into the numbering
of the side they acknowledge.
"""

from __future__ import annotations

import functools

from fwemu.core import packet as pk
from fwemu.core.cookies import Offer
from fwemu.policy.model import SackBlocks, SynProxy

_MASK32 = 0xFFFFFFFF
# The window of the middlebox's SYN-ACK: 0, as Linux's SYNPROXY sends it
# (synproxy_send_client_synack()), so the client sends no data before the server has answered;
# the server's window reaches the client in a window update then (synproxy_send_client_ack()).
_WINDOW = 0


class Translation:
    """One flow's sequence translation: `shift[d]` is added to what direction d sends (and so
    taken from the ACKs and SACK edges the other side sends back). `rescale` is the window
    scale of the server and the one the client was told, when they differ (the server's
    windows are rescaled on the way to the client). `pending` while a proxied flow waits for
    the server's SYN-ACK: `cookie`, `told` and `client_window` then rebuild the handshake."""

    __slots__ = ("client_window", "cookie", "pending", "rescale", "sack", "shift", "told")

    def __init__(self, shift: tuple[int, int], sack: SackBlocks) -> None:
        self.shift = list(shift)
        self.sack = sack
        self.rescale: tuple[int, int] | None = None
        self.pending = False
        self.cookie = 0
        self.told = -1  # the window scale the client was told, -1: none
        self.client_window = 0  # the window field of the client's ACK, for the server

    def windows(self, server_wscale: int) -> None:
        """The server's SYN-ACK said `server_wscale` (-1: none): rescale its windows to what
        the client was told, if that differs (both sides scale only if both offered)."""
        server = server_wscale if self.told >= 0 and server_wscale >= 0 else 0
        client = self.told if server_wscale >= 0 else 0
        self.rescale = None if server == client else (server, client)

    def window(self, field: int) -> int:
        """A server's window field as the client must read it."""
        assert self.rescale is not None
        server, client = self.rescale
        return min((field << server) >> client, 0xFFFF)


def answer(seg: pk.Segment, cookie: int, proxy: SynProxy, offer: Offer) -> tuple[bytes, int]:
    """The middlebox's SYN-ACK to a client's SYN, and the window scale it tells the client
    (-1: none). Options are the middlebox's, offered only where the client offered them."""
    told = told_wscale(proxy, offer)
    options = _options(proxy.mss, told, proxy.sack_perm and offer.sack_perm)
    flags = pk.TCP_SYN | pk.TCP_ACK
    synack = _along(seg, True, flags, cookie, seg.seq + 1, _WINDOW, options)
    return synack, told


@functools.cache
def _options(mss: int, wscale: int, sack_perm: bool) -> bytes:
    """The SYN-ACK's options (a few combinations per policy: made once each)."""
    return pk.encode_options(mss=mss, wscale=None if wscale < 0 else wscale, sack_perm=sack_perm)


def told_wscale(proxy: SynProxy, offer: Offer) -> int:
    """The window scale `answer` told a client whose SYN offered `offer`."""
    return proxy.wscale if proxy.wscale is not None and offer.wscale >= 0 else -1


def open_syn(ack: pk.Segment, offer: Offer) -> bytes:
    """The SYN the middlebox sends the server for the client whose ACK `ack` proved its
    cookie: the client's ISN and the options it offered."""
    window = min(ack.window << max(offer.wscale, 0), 0xFFFF)
    options = pk.encode_options(
        mss=offer.mss,
        wscale=None if offer.wscale < 0 else offer.wscale,
        sack_perm=offer.sack_perm,
    )
    return _along(ack, False, pk.TCP_SYN, ack.seq - 1, 0, window, options)


def window_update(synack: pk.Segment, cookie: int, told: int) -> bytes:
    """The ACK that opens the client's window once the server answered: as from the server,
    in the cookie's numbering, the server's SYN-ACK window in the scale the client was told."""
    return _along(synack, False, pk.TCP_ACK, cookie + 1, synack.ack, synack.window >> max(told, 0))


def client_ack(synack: pk.Segment, client_window: int) -> bytes:
    """The ACK the middlebox sends the server for the client, completing its handshake."""
    return _along(synack, True, pk.TCP_ACK, synack.ack, synack.seq + 1, client_window)


def _along(
    seg: pk.Segment,
    back: bool,
    flags: int,
    seq: int,
    ack: int,
    window: int,
    options: bytes = b"",
) -> bytes:
    """A segment of `seg`'s connection, the way `seg` went or (`back`) the other way."""
    ends = (
        (seg.dst, seg.dport, seg.src, seg.sport)
        if back
        else (seg.src, seg.sport, seg.dst, seg.dport)
    )
    return pk.build_segment(
        *ends, flags=flags, seq=seq & _MASK32, ack=ack & _MASK32, window=window, options=options
    )
