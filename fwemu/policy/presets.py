"""The preset policies shipped in `fwemu/presets/` (the repository's `policies/`).

Read through importlib.resources, so they are found in an installed wheel as in a checkout.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from fwemu.errors import FwemuError
from fwemu.policy.loader import load_policy, loads_policy
from fwemu.policy.model import Policy

_PACKAGE = "fwemu.presets"
_SUFFIX = ".toml"


def preset_names() -> list[str]:
    """Every preset's name (its file name without .toml), sorted."""
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in resources.files(_PACKAGE).iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIX)
    )


def load_preset(name: str) -> Policy:
    """The preset called `name`; its problems (if any) name it as "preset:NAME"."""
    names = preset_names()
    if name not in names:
        raise FwemuError(_unknown_preset(name, names))
    text = resources.files(_PACKAGE).joinpath(name + _SUFFIX).read_text(encoding="utf-8")
    return loads_policy(text, f"preset:{name}", default_name=name)


def resolve_policy(arg: str) -> Policy:
    """A command-line POLICY argument: an existing path or anything ending in .toml is a file,
    anything else a preset name."""
    if arg.endswith(_SUFFIX) or Path(arg).exists():
        return load_policy(arg)
    return load_preset(arg)


def _unknown_preset(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    known = f"presets: {', '.join(names)}" if names else "no presets are installed"
    return f"no policy file or preset named {name!r}{guess}; {known}"
