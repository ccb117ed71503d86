"""Command-line POLICY arguments: files by path, presets by name (fwemu/presets/*.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwemu.errors import FwemuError
from fwemu.policy import PolicyError, load_preset, preset_names, resolve_policy

PRESETS = Path(__file__).parents[2] / "fwemu" / "presets"


def test_preset_names_are_the_shipped_files() -> None:
    assert preset_names() == sorted(p.stem for p in PRESETS.glob("*.toml"))
    assert "linux" in preset_names()


def test_load_preset() -> None:
    policy = load_preset("linux")
    assert policy.origin == "preset:linux"
    assert resolve_policy("linux") == policy


def test_unknown_preset_suggests_and_lists() -> None:
    with pytest.raises(FwemuError) as caught:
        load_preset("linus")
    assert str(caught.value) == (
        "no policy file or preset named 'linus' (did you mean 'linux'?); presets: "
        + ", ".join(preset_names())
    )


def test_files_by_suffix_or_existence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("linux").write_text('[policy]\nname = "a file, not the preset"\n')
    assert resolve_policy("linux").name == "a file, not the preset"
    with pytest.raises(PolicyError, match=r"^linux\.toml: cannot read: No such file"):
        resolve_policy("linux.toml")
