from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fwemu.core.timers import Timers


def drain(timers: Timers, now: float, limit: int = 1_000_000) -> list[int]:
    return sorted(timers.pop_due(now, limit))


def test_deadline_is_exact_not_the_bucket() -> None:
    timers = Timers(granularity=1.0)
    timers.set(0, 10.25)
    assert timers.next_deadline() == 10.25
    assert drain(timers, 10.2499) == []
    assert drain(timers, 10.25) == [0]
    assert timers.next_deadline() is None


def test_rearming_later_costs_no_filing_and_still_fires_on_time() -> None:
    timers = Timers()
    timers.set(0, 5.0)
    for t in range(1, 100):
        timers.set(0, 5.0 + t)  # traffic keeps re-arming: one array store each
    assert len(timers._buckets) == 1  # still filed once
    # The early wake-up at 5.0 only re-files.
    assert drain(timers, 5.0) == []
    assert timers.next_deadline() == 104.0
    assert drain(timers, 104.0) == [0]


def test_rearming_earlier_moves_the_deadline_up() -> None:
    timers = Timers()
    timers.set(0, 500.0)
    timers.set(0, 3.0)
    assert timers.next_deadline() == 3.0
    assert drain(timers, 3.0) == [0]
    assert drain(timers, 500.0) == []  # the stale filing is skipped


def test_earlier_deadline_within_the_same_bucket() -> None:
    timers = Timers(granularity=10.0)
    timers.set(0, 7.0)
    timers.set(1, 5.0)
    timers.set(0, 6.0)
    assert timers.next_deadline() == 5.0
    assert drain(timers, 6.0) == [0, 1]


def test_disarm_and_slot_reuse() -> None:
    timers = Timers()
    timers.set(3, 2.0)
    timers.set(3, None)
    assert timers.deadline(3) is None
    timers.set(3, 9.0)  # a new flow in the same slot
    assert drain(timers, 2.0) == []
    assert drain(timers, 9.0) == [3]


def test_limit_spreads_a_mass_expiry() -> None:
    timers = Timers()
    for slot in range(1000):
        timers.set(slot, 1.0)
    first = timers.pop_due(1.0, 300)
    assert len(first) == 300
    assert timers.next_deadline() == 1.0  # still due: the caller comes back
    rest = drain(timers, 1.0)
    assert sorted(first + rest) == list(range(1000))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.one_of(st.none(), st.floats(0, 100, allow_nan=False))),
        max_size=200,
    ),
    st.integers(1, 50),
    st.sampled_from([0.5, 1.0, 7.0]),
)
def test_matches_a_naive_model(
    ops: list[tuple[int, float | None]], limit: int, granularity: float
) -> None:
    """Whatever the order of arms and re-arms, each slot fires exactly at its last deadline."""
    timers = Timers(granularity=granularity)
    model: dict[int, float] = {}
    for slot, deadline in ops:
        timers.set(slot, deadline)
        if deadline is None:
            model.pop(slot, None)
        else:
            model[slot] = deadline
    fired: dict[int, float] = {}
    while (nxt := timers.next_deadline()) is not None:
        for slot in timers.pop_due(nxt, limit):
            fired[slot] = nxt
    assert fired == model
