"""Linux's TCP window tracking (`tcp_in_window()`), on columns of per-direction window state.

Transcribed from `net/netfilter/nf_conntrack_proto_tcp.c` as of Linux 6.1-6.18 (`tcp_new()`,
`tcp_init_sender()`, `tcp_options()`, `tcp_sack()`, `tcp_in_window()`, `nf_tcp_log_invalid()`),
checked packet by packet against this machine's 6.18 kernel (tests/e2e/test_kernel_parity.py).
NAT sequence offsets are not modelled: fwemu never rewrites sequence numbers.

Each flow has the kernel's `seen[2]` (struct ip_ct_tcp_state: td_end, td_maxend, td_maxwin,
td_maxack, td_scale, flags) interleaved in one column per field at index `slot * 2 + direction`,
so a sender's row is `i` and its receiver's `i ^ 1`; plus the fields of struct ip_ct_tcp that
only the window check uses (last_seq, last_ack, last_end, last_win, retrans) at index `slot`.
"""

from __future__ import annotations

from array import array
from typing import Final

from fwemu.core import packet as pk
from fwemu.core.states import REPLY, PacketClass, State

# tcp_in_window()'s outcomes (enum nf_ct_tcp_action).
ACCEPT: Final = 0
IGNORE: Final = 1  # passes, changes no state and no timer
INVALID: Final = 2  # conntrack calls it INVALID: out-of-state for the policy

# seen[dir].flags (IP_CT_TCP_FLAG_*).
WINDOW_SCALE: Final = 0x01
SACK_PERM: Final = 0x02
CLOSE_INIT: Final = 0x04  # this side sent the first FIN
BE_LIBERAL: Final = 0x08  # picked up mid-stream: window failures pass (tcp_new() with loose)
DATA_UNACKNOWLEDGED: Final = 0x10  # this side has data in flight its peer has not acknowledged
MAXACK_SET: Final = 0x20  # this side has sent an ACK (td_maxack is valid)

MAX_RETRANS: Final = 3  # nf_conntrack_tcp_max_retrans: same segment this often -> max_retrans cap
_MAXACKWINCONST: Final = 66000  # the ACK lower bound's minimum window
_MASK: Final = 0xFFFFFFFF
# Serial arithmetic as the kernel's after(a, b): 0 < (a - b) & _MASK <= _HALF.
_HALF: Final = 0x80000000
_SYN_SENT: Final = int(State.SYN_SENT)
_SYN_RECV: Final = int(State.SYN_RECV)
_ACK_CLASS: Final = int(PacketClass.ACK)  # only ACK-class segments feed the retransmission count


class TcpWindows:
    """The window state of every flow, by slot (the flow table owns the slots)."""

    def __init__(self) -> None:
        # Per direction, at slot * 2 + direction.
        self.end = array("I")  # td_end: highest sequence end sent
        self.maxend = array("I")  # td_maxend: highest end the peer's window allows
        self.maxwin = array("I")  # td_maxwin: largest window the peer advertised (0: unseen)
        self.maxack = array("I")  # td_maxack: highest ACK sent
        self.scale = array("B")  # td_scale: window-scale shift
        self.flags = array("B")
        # Per flow, at slot: the last ACK-class segment accepted, for the retransmission count.
        self.last_seq = array("I")
        self.last_ack = array("I")
        self.last_end = array("I")
        self.last_win = array("H")  # unscaled; 0 also caps the timer (zero window)
        self.last_wscale = array("B")  # an ignored SYN's window scale, for a resync
        self.retrans = array("B")
        self.why = ""  # why the last check failed

    def add(self) -> None:
        """Room for one more slot, zeroed."""
        for column in self._per_direction():
            column.append(0)
            column.append(0)
        for column in self._per_flow():
            column.append(0)

    def clear(self, slot: int) -> None:
        i = slot << 1
        for column in self._per_direction():
            column[i] = column[i + 1] = 0
        for column in self._per_flow():
            column[slot] = 0

    def _per_direction(self) -> tuple[array[int], ...]:
        return (self.end, self.maxend, self.maxwin, self.maxack, self.scale, self.flags)

    def _per_flow(self) -> tuple[array[int], ...]:
        return (
            self.last_seq,
            self.last_ack,
            self.last_end,
            self.last_win,
            self.last_wscale,
            self.retrans,
        )

    # ------------------------------------------------------------------ opening

    def open_syn(self, i: int, seg: pk.Segment) -> None:
        """tcp_new() for a SYN from row `i`: its window state from the SYN."""
        self.end[i] = self.maxend[i] = seg.end
        self.maxwin[i] = seg.window or 1
        self.options(i, seg)

    def open_midstream(self, i: int, seg: pk.Segment) -> None:
        """tcp_new() picking up a connection from a mid-stream segment of row `i` (tcp_loose):
        both sides are SACK-permitted and liberal, as the history is lost."""
        end = seg.end
        self.end[i] = end
        self.maxwin[i] = maxwin = seg.window or 1
        self.maxend[i] = (end + maxwin) & _MASK
        self.flags[i] = self.flags[i ^ 1] = SACK_PERM | BE_LIBERAL

    def options(self, i: int, seg: pk.Segment) -> None:
        """tcp_options(): a SYN's window scale and SACK permission; without options, nothing."""
        if not seg.has_options:
            return
        flags = self.flags[i] & BE_LIBERAL
        if seg.wscale >= 0:
            flags |= WINDOW_SCALE
        if seg.sack_perm:
            flags |= SACK_PERM
        self.flags[i] = flags
        self.scale[i] = max(seg.wscale, 0)

    def _init_sender(self, i: int, seg: pk.Segment) -> None:
        """tcp_init_sender(): a SYN/ACK answering a SYN, or a SYN from the reply direction.
        RFC 7323: scaling only when both sides offered it."""
        self.end[i] = self.maxend[i] = seg.end
        self.maxwin[i] = seg.window or 1
        self.options(i, seg)
        flags = self.flags
        if i & 1 == REPLY and not (flags[i] & flags[i ^ 1] & WINDOW_SCALE):
            self.scale[i] = self.scale[i ^ 1] = 0

    def resync(self, i: int, end: int, window: int, wscale: int, flags: int) -> None:
        """Row `i` from the annotations of a SYN that was ignored, once the SYN/ACK shows both
        endpoints took it; its peer's row starts afresh (nf_ct_tcp_state_reset())."""
        self.end[i] = self.maxend[i] = end
        self.maxwin[i] = window or 1
        self.scale[i] = wscale
        self.flags[i] = flags
        r = i ^ 1
        self.end[r] = self.maxend[r] = self.maxwin[r] = self.maxack[r] = self.scale[r] = 0
        self.flags[r] &= BE_LIBERAL

    # ------------------------------------------------------------------ the check

    # tcp_in_window()'s first half: how it reads a segment before judging it.
    def check(
        self, slot: int, d: int, cls: int, seg: pk.Segment, state: int, liberal: bool, last_dir: int
    ) -> int:
        """tcp_in_window() for a segment from direction `d` of the flow in `slot`, whose state is
        `state` and whose last in-window packet came from `last_dir`: ACCEPT, IGNORE or INVALID
        (why in `self.why`). On ACCEPT the window state has moved; `liberal`
        (nf_conntrack_tcp_be_liberal) turns every failure into ACCEPT without moving it, as the
        kernel does."""
        i = (slot << 1) | d
        r = i ^ 1
        end_col, maxend_col, maxwin_col = self.end, self.maxend, self.maxwin
        flags = seg.flags
        seq = seg.seq
        ack = sack = seg.ack
        # The sequence end (seg.end, inlined): SYN and FIN count one each.
        end = (seq + seg.payload_len + (flags & pk.TCP_SYN and 1) + (flags & pk.TCP_FIN)) & _MASK
        if self.flags[r] & SACK_PERM:
            sack = seg.sack
        syn = flags & pk.TCP_SYN
        if not maxwin_col[i]:
            if syn:
                self._init_sender(i, seg)
                if not flags & pk.TCP_ACK:
                    return ACCEPT  # simultaneous open
            else:
                # Mid-stream: the history is lost; take what this packet says.
                end_col[i] = end
                swin = (seg.window << self.scale[i]) & _MASK
                maxwin_col[i] = swin or 1
                maxend_col[i] = (end + maxwin_col[i]) & _MASK
                if not maxwin_col[r]:
                    # Nothing seen the other way yet: let the ACK checks pass until then.
                    end_col[r] = maxend_col[r] = sack
                elif sack == (end_col[r] + 1) & _MASK:
                    end_col[r] = sack  # likely the answer to a keepalive
        elif syn and 0 < (end - end_col[i]) & _MASK <= _HALF and state in (_SYN_SENT, _SYN_RECV):
            # RFC 793: a re-initialised TCP may use higher sequence numbers at once.
            self._init_sender(i, seg)
            if d == REPLY and not flags & pk.TCP_ACK:
                return ACCEPT
        if not flags & pk.TCP_ACK or (flags & pk.TCP_RST and ack == 0):
            # No ACK (or a broken stack's RST|ACK with ack 0): pretend it acknowledges all.
            ack = sack = end_col[r]
        if flags & pk.TCP_RST and seq == 0 and state == _SYN_SENT:
            seq = end = end_col[i]  # a RST answering the SYN
        return self.judge(slot, i, cls, seq, ack, sack, end, seg.window, flags, liberal, last_dir)

    # tcp_in_window()'s second half line by line: its branches are the kernel's, in its order.
    # The flow table's fast path calls it directly for ACK-class segments.
    def judge(  # noqa: PLR0912, PLR0915
        self,
        slot: int,
        i: int,
        cls: int,
        seq: int,
        ack: int,
        sack: int,
        end: int,
        win: int,
        flags: int,
        liberal: bool,
        last_dir: int,
    ) -> int:
        """The bounds checks and the update of a segment from row `i` (seq, ack, highest
        SACK edge, sequence end, raw window, TCP flags) as tcp_in_window() has read it."""
        r = i ^ 1
        end_col, maxend_col, maxwin_col = self.end, self.maxend, self.maxwin
        sender_end = end_col[i]
        sender_maxend = maxend_col[i]
        sender_maxwin = maxwin_col[i]
        receiver_end = end_col[r]
        receiver_maxwin = maxwin_col[r]
        maxackwin = sender_maxwin if sender_maxwin > _MAXACKWINCONST else _MAXACKWINCONST
        ahead = (end - sender_end) & _MASK  # how far the segment ends past the sender's end
        acked = (sack - receiver_end) & _MASK  # how far it acknowledges past the receiver's
        # The lower bounds, as after(end, td_end - receiver td_maxwin - 1) and after(sack, ...).
        in_recv_win = not receiver_maxwin or 0 < (ahead + receiver_maxwin + 1) & _MASK <= _HALF
        ack_ok = 0 < (acked + maxackwin + 1) & _MASK <= _HALF
        if 0 < (seq - sender_maxend) & _MASK <= _HALF:  # seq > td_maxend
            overshot = (end - sender_maxend + 1) & _MASK
            if (
                receiver_maxwin
                and in_recv_win
                and ack_ok
                and overshot <= receiver_maxwin
                and not 0 < acked <= _HALF
            ):
                # TCPs that send more than the receive window allows: if the peer ACKs it,
                # every later packet would fail the ACK bound, so take the end as sent.
                end_col[i] = end
                self.flags[i] |= DATA_UNACKNOWLEDGED
                return self._fail(i, liberal, IGNORE, f"{overshot} bytes more than expected")
            return self._fail(
                i, liberal, INVALID, "SEQ is over upper bound (over the window of the receiver)"
            )
        if 0 < acked <= _HALF:  # sack > td_end of the receiver
            return self._fail(
                i, liberal, INVALID, "ACK is over upper bound (ACKed data not seen yet)"
            )
        if not in_recv_win:
            return self._fail(
                i, liberal, IGNORE, "SEQ is under lower bound (already ACKed data retransmitted)"
            )
        if not ack_ok:
            return self._fail(
                i, liberal, IGNORE, "ACK is under lower bound (possible overly delayed)"
            )
        flags_col = self.flags
        win_raw = win
        if not flags & pk.TCP_SYN and (shift := self.scale[i]):
            win = win << shift
        # The sender.
        swin = (win + sack - ack) & _MASK
        if swin > sender_maxwin:
            maxwin_col[i] = swin
        if 0 < ahead <= _HALF:
            end_col[i] = end
            flags_col[i] |= DATA_UNACKNOWLEDGED
        if flags & pk.TCP_ACK:
            if not flags_col[i] & MAXACK_SET:
                self.maxack[i] = ack
                flags_col[i] |= MAXACK_SET
            elif 0 < (ack - self.maxack[i]) & _MASK <= _HALF:
                self.maxack[i] = ack
        # The receiver.
        if receiver_maxwin and 0 < (end - sender_maxend) & _MASK <= _HALF:
            maxwin_col[r] = (receiver_maxwin + end - sender_maxend) & _MASK
        edge = (sack + win) & _MASK
        if 0 < (edge - maxend_col[r] + 1) & _MASK <= _HALF:
            maxend_col[r] = edge if win else (edge + 1) & _MASK
        if ack == receiver_end and flags_col[r] & DATA_UNACKNOWLEDGED:
            flags_col[r] &= ~DATA_UNACKNOWLEDGED
        if cls == _ACK_CLASS:
            # Retransmissions: the same segment again from the same side.
            if (
                last_dir == i & 1
                and self.last_seq[slot] == seq
                and self.last_ack[slot] == ack
                and self.last_end[slot] == end
                and self.last_win[slot] == win_raw
            ):
                self.retrans[slot] = (self.retrans[slot] + 1) & 0xFF
            else:
                self.last_seq[slot] = seq
                self.last_ack[slot] = ack
                self.last_end[slot] = end
                self.last_win[slot] = win_raw
                if self.retrans[slot]:
                    self.retrans[slot] = 0
        return ACCEPT

    def _fail(self, i: int, liberal: bool, outcome: int, why: str) -> int:
        """nf_tcp_log_invalid(): a failed check passes when the sender is liberal (picked up
        mid-stream) or the policy is (`window_check = false`)."""
        if liberal or self.flags[i] & BE_LIBERAL:
            return ACCEPT
        self.why = why
        return outcome
