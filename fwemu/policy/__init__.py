"""Policies: TOML files and presets -> the frozen, validated model the core enforces."""

from fwemu.policy.duration import DurationError, format_duration, parse_duration
from fwemu.policy.loader import PolicyError, load_policy, loads_policy
from fwemu.policy.model import (
    PHASE_STATES,
    AnswerRate,
    ExpireAction,
    IPNetwork,
    Match,
    OnExpire,
    OutOfState,
    OutOfStateAction,
    Phase,
    Policy,
    PortRange,
    Profile,
    Rule,
    Timeouts,
)
from fwemu.policy.presets import load_preset, preset_names, resolve_policy
from fwemu.policy.reading import Problem

__all__ = [
    "PHASE_STATES",
    "AnswerRate",
    "DurationError",
    "ExpireAction",
    "IPNetwork",
    "Match",
    "OnExpire",
    "OutOfState",
    "OutOfStateAction",
    "Phase",
    "Policy",
    "PolicyError",
    "PortRange",
    "Problem",
    "Profile",
    "Rule",
    "Timeouts",
    "format_duration",
    "load_policy",
    "load_preset",
    "loads_policy",
    "parse_duration",
    "preset_names",
    "resolve_policy",
]
