"""Where a running fwemu's policy comes from, so that a reload can read it again."""

from __future__ import annotations

from dataclasses import dataclass

from fwemu.policy.loader import load_policy
from fwemu.policy.model import Policy
from fwemu.policy.presets import load_preset


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where the running policy comes from, so that a reload can read it again."""

    path: str | None  # a policy file, as given
    preset: str | None
    speed: float

    def load(self) -> Policy:
        """The policy, scaled by `speed`; PolicyError (or FwemuError) if it is invalid."""
        policy = load_policy(self.path) if self.path is not None else load_preset(str(self.preset))
        return policy.scaled(self.speed)

    def switched(self, path: str | None, preset: str | None) -> PolicySource:
        """This source, or a new file or preset if one is given."""
        if path is None and preset is None:
            return self
        return PolicySource(path, preset, self.speed)
