"""Register: a multi-value register read as last-writer-wins.

State: a dot fun ``dot -> Version(timestamp, value)``. A write by region ``r``
mints a fresh dot ``d`` and produces the delta

    store   = {d: (hlc_now, value)}
    context = {d} | every dot currently in the register

so the write replaces exactly the writes its region had seen. Writes that were
concurrent (neither saw the other) both survive as *siblings*; that is the
multi-value register of Preguica et al., "Dotted Version Vectors" (2012), in
delta form.

Reading picks one winner among the siblings by ``(timestamp, region, counter)``,
the same on every replica because it depends on the state alone. The clock only
matters for that tie-break: a write that causally follows another has removed
it from the state, so it wins whatever the two clocks said ("causal overwrite
beats a higher wall clock"). The next write from anywhere that has seen the
siblings collapses them into one value.

Metadata: one dot and one timestamp per live sibling; in steady state (no
concurrent writes) that is one of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from crdtstore.crdt.causal import CausalContext, Dot
from crdtstore.crdt.dotstore import Causal, DotFunStore
from crdtstore.crdt.hlc import Timestamp

__all__ = ["Register", "Sibling", "Version"]


class Version(NamedTuple):
    """The payload of one register write."""

    timestamp: Timestamp
    value: bytes


class Sibling(NamedTuple):
    """A live register write as a reader sees it."""

    dot: Dot
    timestamp: Timestamp
    value: bytes


def _rank(dot: Dot, version: Version) -> tuple[Timestamp, str, int]:
    return (version.timestamp, dot.region, dot.counter)


@dataclass(frozen=True, slots=True)
class Register(DotFunStore[Version]):
    """A dot fun ``dot -> Version``; see the module docstring."""

    # -- mutators: each returns only the delta -------------------------------

    def write(self, value: bytes, timestamp: Timestamp, dot: Dot) -> Causal[Register]:
        if not isinstance(value, bytes):
            raise TypeError(f"register values are bytes, got {type(value).__name__}")
        return Causal(
            Register({dot: Version(timestamp, value)}),
            CausalContext.from_dots([dot, *self.entries]),
        )

    # -- reads ----------------------------------------------------------------

    def siblings(self) -> list[Sibling]:
        """Every live write, the winner first, then by descending rank."""
        ranked = sorted(self.entries.items(), key=lambda kv: _rank(*kv), reverse=True)
        return [Sibling(dot, v.timestamp, v.value) for dot, v in ranked]

    def winner(self) -> Sibling | None:
        if not self.entries:
            return None
        dot, version = max(self.entries.items(), key=lambda kv: _rank(*kv))
        return Sibling(dot, version.timestamp, version.value)

    def value(self) -> bytes | None:
        win = self.winner()
        return None if win is None else win.value
