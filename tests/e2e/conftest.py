"""End-to-end fixtures: real namespaces, iptables, NFQUEUE and kernels (root only; never skipped
under CI)."""

from __future__ import annotations

import os

import pytest


def require_root() -> None:
    if os.geteuid() != 0:
        reason = "end-to-end tests create network namespaces and iptables rules: they need root"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so not skipping)")
        pytest.skip(reason)


# Figures a test module measured (e.g. timer lateness), printed at the end of the run.
FIGURES = pytest.StashKey[list[str]]()


def report_figures(config: pytest.Config, text: str) -> None:
    config.stash.setdefault(FIGURES, []).append(text)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for text in config.stash.get(FIGURES, []):
        terminalreporter.write_sep("-", "measured")
        terminalreporter.write_line(text)
