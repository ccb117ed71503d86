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
