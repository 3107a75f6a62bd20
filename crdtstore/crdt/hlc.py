"""Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014).

A timestamp is ``(wall_ms, logical)``: ``wall_ms`` is the highest physical time
(milliseconds) the clock has seen, from its own source or from a message, and
``logical`` counts events within the same ``wall_ms``. Timestamps are totally
ordered, stay close to physical time, and never run backwards, even when the
physical source does.

In crdtstore the clock orders only *concurrent* register writes. Which write
overwrites which is decided by causality (dots in the causal context), never by
the clock: a write that has seen another write replaces it whatever the clocks
say. So a bad clock can make a concurrent write lose a tie-break, but it cannot
make an acknowledged, causally later write disappear.

Bounding skew: a remote timestamp more than ``max_offset_ms`` ahead of the
local physical time does not drag the clock forward (that would let one bad
clock push every register of every region into the future). ``receive`` reports
it to the caller, who counts and logs it.

Durability: ``high_water`` is the last timestamp issued. A node persists a mark
at or above it and restores the clock with ``floor=`` so that after a restart
no timestamp is ever issued twice, even if the wall clock stepped back.

The clock does no I/O: physical time comes from a callable the caller passes
in (``time.time_ns() // 1_000_000`` in production, a fake in tests and the
simulator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = ["ClockSkew", "HybridLogicalClock", "Timestamp"]


class Timestamp(NamedTuple):
    """A hybrid logical timestamp; tuple order is timestamp order."""

    wall_ms: int
    logical: int


ZERO = Timestamp(0, 0)


class ClockSkew(NamedTuple):
    """A remote timestamp that was too far ahead to be accepted into the clock."""

    remote: Timestamp
    local_wall_ms: int
    max_offset_ms: int

    @property
    def ahead_ms(self) -> int:
        return self.remote.wall_ms - self.local_wall_ms


class HybridLogicalClock:
    """A monotonic hybrid logical clock over an injected physical time source."""

    __slots__ = ("_last", "_max_offset_ms", "_physical_ms")

    def __init__(
        self,
        physical_ms: Callable[[], int],
        *,
        max_offset_ms: int = 500,
        floor: Timestamp = ZERO,
    ) -> None:
        if max_offset_ms <= 0:
            raise ValueError(f"max_offset_ms must be positive, got {max_offset_ms}")
        self._physical_ms = physical_ms
        self._max_offset_ms = max_offset_ms
        self._last = floor

    @property
    def high_water(self) -> Timestamp:
        """The last timestamp issued or received; persist a mark at or above it."""
        return self._last

    @property
    def max_offset_ms(self) -> int:
        return self._max_offset_ms

    def now(self) -> Timestamp:
        """A fresh timestamp for a local event or an outgoing message."""
        physical = self._physical_ms()
        last = self._last
        ts = Timestamp(physical, 0) if physical > last.wall_ms else Timestamp(last.wall_ms, last.logical + 1)
        self._last = ts
        return ts

    def receive(self, remote: Timestamp) -> ClockSkew | None:
        """Merge a timestamp seen on a message; report it if it is too far ahead.

        A remote timestamp within the bound is folded in, so the next local
        timestamp is above it (a write made after reading a remote write sorts
        after it even if it was made in a region whose clock is behind). One
        beyond the bound is ignored for the clock and returned as ``ClockSkew``.
        """
        physical = self._physical_ms()
        if remote.wall_ms - physical > self._max_offset_ms:
            return ClockSkew(remote, physical, self._max_offset_ms)
        self._last = max(self._last, remote)
        return None

    def is_out_of_bounds(self) -> bool:
        """True when the clock's own mark is more than the bound ahead of physical time.

        That happens when the physical source jumped backwards after timestamps
        were issued; the node may refuse writes until it is back in bounds.
        """
        return self._last.wall_ms - self._physical_ms() > self._max_offset_ms
