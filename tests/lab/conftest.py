"""Fixtures for lab tests: real namespaces (root only), unique names, cleanup even on failure."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest

from fwemu.lab import LabPlan, down, up
from tests.e2e.conftest import require_root

_counter = itertools.count(1)


@pytest.fixture
def needs_root() -> None:
    require_root()


@pytest.fixture
def lab_name(needs_root: None) -> Iterator[Callable[[], str]]:
    """Hands out unique lab names ("fwemu-t<pid>-<n>") and removes those labs afterwards."""
    names: list[str] = []

    def new_name() -> str:
        names.append(f"fwemu-t{os.getpid()}-{next(_counter)}")
        return names[-1]

    yield new_name
    for name in names:
        down(name)


@pytest.fixture
def make_lab(lab_name: Callable[[], str]) -> Callable[[], LabPlan]:
    """Creates a lab with a unique name and index, removed after the test."""

    def make() -> LabPlan:
        name = lab_name()
        plan = LabPlan.create(name, index=next(_counter) % 250 + 1)
        up(plan)
        return plan

    return make
