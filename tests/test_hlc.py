"""The hybrid logical clock: monotonic, bounded against skew, restartable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import ClockSkew, HybridLogicalClock, Timestamp
from crdtstore.testing.clock import FakeClock

events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(-2_000, 2_000)),
        st.tuples(st.just("now"), st.just(0)),
        st.tuples(st.just("recv"), st.integers(-5_000, 5_000), st.integers(0, 3)),
    ),
    max_size=60,
)


@given(events)
def test_timestamps_never_go_backwards_whatever_the_physical_clock_does(script: list[tuple[object, ...]]) -> None:
    phys = FakeClock(10_000)
    clock = HybridLogicalClock(phys, max_offset_ms=1_000)
    issued: list[Timestamp] = []
    for step in script:
        if step[0] == "tick":
            phys.advance(int(step[1]))  # type: ignore[call-overload]
        elif step[0] == "now":
            issued.append(clock.now())
        else:
            remote = Timestamp(max(0, phys.now_ms + int(step[1])), int(step[2]))  # type: ignore[call-overload]
            skew = clock.receive(remote)
            if skew is None:
                assert clock.high_water >= remote
                issued.append(clock.now())
                assert issued[-1] > remote, "a timestamp after a receive sorts after what was received"
            else:
                assert remote.wall_ms - phys.now_ms > 1_000
                assert skew.ahead_ms > skew.max_offset_ms
    assert issued == sorted(issued)
    assert len(set(issued)) == len(issued), "no timestamp is issued twice"


def test_a_remote_timestamp_too_far_ahead_is_reported_and_does_not_drag_the_clock() -> None:
    phys = FakeClock(1_000)
    clock = HybridLogicalClock(phys, max_offset_ms=500)
    skew = clock.receive(Timestamp(10_000, 0))
    assert skew == ClockSkew(Timestamp(10_000, 0), 1_000, 500)
    assert skew.ahead_ms == 9_000
    assert clock.now() == Timestamp(1_000, 0)
    assert clock.receive(Timestamp(1_400, 7)) is None
    assert clock.now() == Timestamp(1_400, 8)


def test_the_clock_follows_physical_time_when_it_moves_forward() -> None:
    phys = FakeClock(1_000)
    clock = HybridLogicalClock(phys)
    assert clock.now() == Timestamp(1_000, 0)
    assert clock.now() == Timestamp(1_000, 1)
    phys.advance(5)
    assert clock.now() == Timestamp(1_005, 0)
    phys.set(900)  # the wall clock steps back
    assert clock.now() == Timestamp(1_005, 1)


def test_a_restored_clock_never_reissues_a_timestamp() -> None:
    phys = FakeClock(5_000)
    first = HybridLogicalClock(phys)
    for _ in range(3):
        first.now()
    mark = first.high_water
    phys.set(4_000)  # restart with a clock that went back
    second = HybridLogicalClock(phys, floor=mark)
    assert second.now() > mark


def test_out_of_bounds_detection() -> None:
    phys = FakeClock(10_000)
    clock = HybridLogicalClock(phys, max_offset_ms=100)
    clock.now()
    assert not clock.is_out_of_bounds()
    phys.set(9_000)
    assert clock.is_out_of_bounds()


def test_max_offset_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_offset_ms"):
        HybridLogicalClock(FakeClock(), max_offset_ms=0)
