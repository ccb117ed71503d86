"""The daemon's timer turns: a mass expiry is spread over turns of bounded time, so the queue is
polled (and verdicts given) every few milliseconds while 100k flows expire (issue 6 item 4)."""

from __future__ import annotations

import pytest

from fwemu.adapters.daemon import TIMER_BATCH, TIMER_BUDGET
from fwemu.clock import Clock
from fwemu.core.decision import NO_EFFECTS, Effects
from fwemu.core.engine import Engine

from .test_daemon import POLICY, make_daemon

# Seconds of (fake) clock per expiry: about what reset-both costs (bench/scale.py), and a silent
# expiry with nobody reading events, a tenth of it.
RESET_COST, SILENT_COST = 100e-6, 10e-6


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MassExpiry(Engine):
    """`due` flows all due at once; expiring each one moves the clock on by `cost`."""

    def __init__(self, due: int, clock: FakeClock, cost: float) -> None:
        super().__init__(POLICY)
        self.due = due
        self.clock = clock
        self.cost = cost

    def next_deadline(self) -> float | None:
        return 0.0 if self.due else None

    def handle_timer(self, *, now: float, limit: int = 10_000) -> Effects:
        count = min(limit, self.due)
        self.due -= count
        self.clock.now += count * self.cost
        return NO_EFFECTS


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(Clock, "now", staticmethod(fake))
    return fake


def test_a_mass_expiry_yields_to_the_queue_within_the_budget(clock: FakeClock) -> None:
    engine = MassExpiry(100_000, clock, RESET_COST)
    daemon, _, _ = make_daemon(engine)
    turns = 0
    while engine.due:
        start = clock.now
        poll_timeout = daemon._run_due(None)
        turns += 1
        # One turn never holds the queue longer than the budget plus the call that crosses it.
        assert clock.now - start <= TIMER_BUDGET + TIMER_BATCH * RESET_COST
        assert poll_timeout == (0.0 if engine.due else -1.0)  # more due: poll without waiting
    assert turns >= 100_000 * RESET_COST / (TIMER_BUDGET + TIMER_BATCH * RESET_COST)


def test_cheap_expiries_fill_the_budget_with_several_batches(clock: FakeClock) -> None:
    engine = MassExpiry(100 * TIMER_BATCH, clock, SILENT_COST)
    daemon, _, _ = make_daemon(engine)
    start = clock.now
    assert daemon._run_due(None) == 0.0
    expired = 100 * TIMER_BATCH - engine.due
    assert TIMER_BATCH < expired < 100 * TIMER_BATCH
    assert TIMER_BUDGET <= clock.now - start <= TIMER_BUDGET + TIMER_BATCH * SILENT_COST
