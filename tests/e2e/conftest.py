"""End-to-end fixtures: real namespaces, iptables, NFQUEUE and kernels (root only; never skipped
under CI)."""

from __future__ import annotations

import pytest

from fwemu.pytest_plugin import require_root as plugin_require_root


def require_root() -> None:
    plugin_require_root("end-to-end tests")


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
