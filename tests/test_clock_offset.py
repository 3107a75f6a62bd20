"""Measuring a peer's clock offset over a round trip, so that time in queues is not taken for offset."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.node.clocks import ClockSample, clock_sample


def test_a_symmetric_round_trip_measures_the_offset_exactly() -> None:
    # This clock: sent at 1,000, answer back at 1,030. The peer (clock 200 ahead) held it 10 ms.
    # Each way took 10 ms: the peer received at 1,010 + 200 and answered at 1,020 + 200.
    assert clock_sample(echoed_ms=1_000, held_ms=10, peer_sent_ms=1_220, now_ms=1_030) == ClockSample(200, 10)


def test_regression_time_in_queues_is_not_taken_for_clock_offset() -> None:
    # Found by the chaos runner: under load, messages waited seconds in queues, and
    # "sent minus received" made healthy regions look 1-8 s apart, so they fenced
    # themselves. The clocks agree here; the answer sat 8 s in a queue on the way back.
    sample = clock_sample(echoed_ms=1_000, held_ms=5, peer_sent_ms=1_010, now_ms=9_010)
    assert sample is not None
    assert abs(sample.offset_ms) - sample.error_ms <= 0  # cannot tell the clocks apart: never fenced for it


def test_a_clock_that_stepped_back_gives_no_sample() -> None:
    assert clock_sample(echoed_ms=5_000, held_ms=0, peer_sent_ms=5_000, now_ms=4_000) is None


@given(
    offset=st.integers(-(10**7), 10**7),
    out_ms=st.integers(0, 10**6),
    back_ms=st.integers(0, 10**6),
    held_ms=st.integers(0, 10**6),
    sent=st.integers(10**12, 2 * 10**12),
)
def test_the_true_offset_is_always_within_the_error(
    offset: int, out_ms: int, back_ms: int, held_ms: int, sent: int
) -> None:
    # Whatever the delays each way, the truth lies within the reported error.
    peer_sent = sent + out_ms + held_ms + offset
    now = sent + out_ms + held_ms + back_ms
    sample = clock_sample(sent, held_ms, peer_sent, now)
    assert sample is not None
    assert abs(sample.offset_ms - offset) <= sample.error_ms
