"""`fwemu COMMAND` imports only that command: what a command needs, not what the others do.

Which modules load is checked, not how long it takes (timings belong in benchmarks): pyroute2,
the harness, the demo and the run loop together took an ops command to ~0.7 s.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fwemu.cli import build_parser, command_names

HEAVY = ("pyroute2", "fwemu.testing", "fwemu.demo", "fwemu.lab.netns", "fwemu.adapters.runtime")
OPS = ("flows", "events", "top", "expire", "reload", "ps", "check")


def loaded_after(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter holds once the parser for `argv` is built."""
    code = (
        "import json, sys\n"
        "from fwemu.cli import build_parser\n"
        f"build_parser({argv!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("command", OPS)
def test_an_ops_command_loads_none_of_the_heavy_modules(command: str) -> None:
    assert loaded_after([command, "--help"]) & set(HEAVY) == set()


def test_version_loads_no_command() -> None:
    loaded = loaded_after(["--version"])
    assert not any(name.endswith("_cmd") for name in loaded)


def test_help_and_usage_errors_still_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["flwos"]):
        with pytest.raises(SystemExit):
            build_parser(argv).parse_args(argv)
        out = capsys.readouterr()
        for name in command_names():
            assert name in out.out + out.err, (argv, name)
