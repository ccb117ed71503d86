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
