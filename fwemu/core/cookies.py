"""SYN cookies: a middlebox's ISN that encodes the client's SYN, so it keeps no state until the
client's ACK proves the handshake (Linux net/ipv4/syncookies.c, whose layout this follows).

    cookie = H(tuple, 0) + client ISN + (minute << 24) + ((H(tuple, minute) + data) & 0xFFFFFF)

`minute` is the time in minutes; a cookie is valid in its minute and the next
(MAX_SYNCOOKIE_AGE). Linux's data is the index of the client's MSS in a table of four; without
timestamps (where Linux hides window scaling and SACK) it loses the rest of the SYN. fwemu's
data also carries the client's window scale and SACK permission, 7 bits in all (values past 127
are forgeries): the server then gets the client's own options, as a proxy using timestamp
cookies would give it.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

COOKIE_BITS = 24
COOKIE_MASK = (1 << COOKIE_BITS) - 1
MAX_AGE = 2  # minutes: MAX_SYNCOOKIE_AGE
MSS_TABLE = (536, 1300, 1440, 1460)  # syncookies.c msstab[]
_NO_WSCALE = 15
_MASK32 = 0xFFFFFFFF


class Offer(NamedTuple):
    """What the client's SYN offered, as a cookie keeps it."""

    mss: int  # rounded down to MSS_TABLE
    wscale: int  # -1: no window scale option
    sack_perm: bool


class Cookies:
    """Makes and checks cookies under one secret (per fwemu run, as the kernel's per boot)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _hash(self, tuple_: bytes, count: int, c: int) -> int:
        digest = hashlib.blake2s(
            tuple_ + count.to_bytes(4) + bytes((c,)), digest_size=4, key=self._secret
        ).digest()
        return int.from_bytes(digest)

    def make(self, tuple_: bytes, isn: int, offer: Offer, now: float) -> int:
        """The cookie for a SYN of `tuple_` (its addresses and ports as sent) with `isn`."""
        count = int(now // 60) & (_MASK32 >> COOKIE_BITS)
        index = max(i for i, mss in enumerate(MSS_TABLE) if mss <= offer.mss or i == 0)
        wscale = _NO_WSCALE if offer.wscale < 0 else offer.wscale
        data = index | wscale << 2 | offer.sack_perm << 6
        return (
            self._hash(tuple_, 0, 0)
            + isn
            + (count << COOKIE_BITS)
            + ((self._hash(tuple_, count, 1) + data) & COOKIE_MASK)
        ) & _MASK32

    def check(self, tuple_: bytes, isn: int, cookie: int, now: float) -> Offer | None:
        """What the SYN offered, if `cookie` is one made for `tuple_` and `isn` in the last
        MAX_AGE minutes; else None."""
        count = int(now // 60) & (_MASK32 >> COOKIE_BITS)
        cookie = (cookie - self._hash(tuple_, 0, 0) - isn) & _MASK32
        diff = (count - (cookie >> COOKIE_BITS)) & (_MASK32 >> COOKIE_BITS)
        if diff >= MAX_AGE:
            return None
        data = (cookie - self._hash(tuple_, count - diff, 1)) & COOKIE_MASK
        wscale = data >> 2 & 0xF
        if data >> 7 or (wscale > 14 and wscale != _NO_WSCALE):
            return None
        return Offer(MSS_TABLE[data & 3], -1 if wscale == _NO_WSCALE else wscale, bool(data >> 6))
