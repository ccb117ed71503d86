"""Policies for the replay tests, as TOML text (parsed by the real loader)."""

from fwemu.policy import Policy, loads_policy

SILENT = """
[policy]
name = "silent-2s"
[timeouts]
established = "2s"
[on_expire]
established = "silent"
[out_of_state]
action = "drop"
"""

RESET_BOTH = """
[policy]
name = "reset-2s"
[timeouts]
established = "2s"
[on_expire]
established = "reset-both"
"""

LATE_RESET = """
[policy]
name = "late-reset"
[timeouts]
established = "2s"
[on_expire]
established = "silent"
[out_of_state]
from_client = "reset"
"""


def policy(text: str) -> Policy:
    return loads_policy(text, "<test>")


# UDP's timers short, as a NAT's are: its late answers dropped (the default udp_from_server).
UDP_SHORT = """
[policy]
name = "udp-1s"
[timeouts]
udp = "1s"
udp_stream = "3s"
udp_stream_after = "0.5s"
"""

UDP_REJECT = (
    UDP_SHORT
    + """
[out_of_state]
udp_from_server = "icmp-unreachable"
"""
)
