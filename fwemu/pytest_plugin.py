"""fwemu's pytest plugin (the `pytest11` entry point `fwemu`): put your code behind an emulated
firewall in a test.

    @pytest.mark.fwemu("aws-nlb", speed=100)
    def test_pool_survives_the_nlb(fwemu):
        server = fwemu.server_socket(); ...
        fwemu.wait_for_event("expire")

Fixtures: `fwemu` (a lab with `fwemu run` inline, as the test's `fwemu` marker says) and
`fwemu_factory` (start more, each with its own policy). Both are `fwemu.testing.Firewall`s and
are torn down after the test. When a test that used them fails, its report gets a section with
fwemu's events (`--fwemu-events` changes when). Importing this module does nothing; the fixtures
act only in tests that ask for them. Needs root to run such tests (skipped otherwise, failed
under CI).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from fwemu.scenario.timeline import describe
from fwemu.testing import Firewall, inline_firewall

MARKER = "fwemu"
_FIREWALLS = pytest.StashKey[list[Firewall]]()
_WHEN = ("failed", "always", "never")

FirewallFactory = Callable[..., Firewall]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fwemu", "fwemu firewall emulation")
    group.addoption(
        "--fwemu-events",
        choices=_WHEN,
        default="failed",
        help="when to add fwemu's events to a test's report: failed (default), always, never",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(policy=None, *, toml=None, speed=1.0): the policy (a preset name or a policy "
        "file; default linux), policy text, and speed of the `fwemu` fixture's firewall",
    )


def require_root(what: str = "fwemu's fixtures") -> None:
    """Skip a test that needs root when not root, except under CI (`CI` set), where a skip would
    hide a broken set-up: fail instead."""
    if os.geteuid() != 0:
        reason = f"{what} create network namespaces and iptables rules: they need root"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so not skipping)")
        pytest.skip(reason)


@pytest.fixture
def fwemu_factory(request: pytest.FixtureRequest) -> Iterator[FirewallFactory]:
    """start(policy=None, *, toml=None, speed=1.0, extra_args=()) -> Firewall: each call
    brings up a lab with fwemu inline; all are removed after the test."""
    require_root()
    firewalls = request.node.stash.setdefault(_FIREWALLS, [])
    with ExitStack() as stack:

        def start(
            policy: str | Path | None = None,
            *,
            toml: str | None = None,
            speed: float = 1.0,
            extra_args: tuple[str, ...] = (),
        ) -> Firewall:
            fw = stack.enter_context(
                inline_firewall(policy, toml=toml, speed=speed, extra_args=extra_args)
            )
            firewalls.append(fw)
            return fw

        yield start


@pytest.fixture
def fwemu(request: pytest.FixtureRequest, fwemu_factory: FirewallFactory) -> Firewall:
    """A lab with fwemu inline, configured by the test's `fwemu` marker (default: the linux
    preset at speed 1)."""
    marker = request.node.get_closest_marker(MARKER)
    args: tuple[Any, ...] = marker.args if marker else ()
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    return fwemu_factory(*args, **kwargs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    firewalls = item.stash.get(_FIREWALLS, [])
    when = item.config.getoption("--fwemu-events")
    if (
        firewalls
        and report.when == "call"
        and (when == "always" or (report.failed and when != "never"))
    ):
        for fw in firewalls:
            lines = [describe(record) for record in fw.events()] or ["(no events)"]
            report.sections.append((f"fwemu events ({fw.plan.name})", "\n".join(lines)))
    return report
