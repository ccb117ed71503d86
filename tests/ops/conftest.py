"""Helpers for the troubleshooting tools' tests: run the CLI in-process and read what it said."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fwemu.cli import main


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def fwemu(capsys: pytest.CaptureFixture[str]) -> Cli:
    """`fwemu(*argv)`: run the fwemu CLI in this process; its exit status and output."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run
