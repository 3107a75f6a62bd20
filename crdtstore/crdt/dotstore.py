"""Dot stores and the causal join they share.

Every crdtstore type is a *causal CRDT* (Almeida, Shoker, Baquero, "Delta State
Replicated Data Types", JPDC 2018): a *dot store* paired with a
causal context. The dot store holds the events that are still visible; the
context holds every event ever seen. Joining two replicas ``(s1, c1)`` and
``(s2, c2)`` keeps

* what both stores hold,
* what only one store holds, as long as the other side never saw it
  (a dot the other side saw but no longer holds was removed there).

That single rule gives observed-remove semantics to every type: a removal is
just "the context grew and the store did not", so there are no tombstones, and
an update concurrent with a removal survives because its dot was not seen.

Three shapes of dot store appear in the paper and here:

* dot set   -- ``frozenset[Dot]``                 (an element's adds in a set)
* dot fun   -- ``dict[Dot, V]``, V immutable      (register writes, counter shares)
* dot map   -- ``dict[K, DotStore]``              (set members, the store's keys)

The types (``Register``, ``Counter``, ``AWSet``, ``KeyState``) follow one
contract, ``DotStore`` below, so the map can embed any of them, and
``Causal[T]`` pairs any of them with a context. A mutator returns a delta
``Causal[T]`` and the only way state changes is ``state.join(delta)``, so the
local path and the receive path are the same function.

Immutability: states are frozen dataclasses holding dicts that are built fresh
by every operation and never mutated afterwards. Python has no frozen dict; the
discipline is kept here and checked by the tests (a delta handed to the log is
compared before and after it is joined).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeVar

from crdtstore.crdt.causal import CausalContext, Dot

__all__ = ["Causal", "DotStore", "join_dot_fun", "join_dot_set"]

V = TypeVar("V")


class DotStore(Protocol):
    """What every embedded type answers."""

    @classmethod
    def bottom(cls) -> Self:
        """The empty state, identity of join."""
        ...

    def is_bottom(self) -> bool: ...

    def dots(self) -> Iterator[Dot]:
        """Every dot still visible in this store."""
        ...

    def join(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self: ...


S = TypeVar("S", bound=DotStore)


@dataclass(frozen=True, slots=True)
class Causal(Generic[S]):
    """A dot store with its causal context: a full replica state, or a delta."""

    store: S
    context: CausalContext

    def join(self, other: Causal[S]) -> Causal[S]:
        return Causal(
            self.store.join(other.store, self.context, other.context),
            self.context.join(other.context),
        )

    def next_dot(self, region: str) -> Dot:
        return self.context.next_dot(region)


def join_dot_set(s1: frozenset[Dot], c1: CausalContext, s2: frozenset[Dot], c2: CausalContext) -> frozenset[Dot]:
    """``(s1 & s2) | (s1 - c2) | (s2 - c1)``."""
    if s1 == s2:
        return s1
    kept = [d for d in s1 if d in s2 or not c2.contains(d)]
    kept.extend(d for d in s2 if d not in s1 and not c1.contains(d))
    return frozenset(kept)


def join_dot_fun(
    f1: Mapping[Dot, V],
    c1: CausalContext,
    f2: Mapping[Dot, V],
    c2: CausalContext,
    join_values: Callable[[V, V], V] | None = None,
) -> dict[Dot, V]:
    """The dot-set rule on the keys; a dot held on both sides keeps one value.

    A dot names one event, so both sides hold the same value for it; a
    ``join_values`` may be given for value types that are themselves lattices.
    """
    out: dict[Dot, V] = {}
    for dot, value in f1.items():
        if dot in f2:
            other = f2[dot]
            out[dot] = value if join_values is None else join_values(value, other)
        elif not c2.contains(dot):
            out[dot] = value
    for dot, value in f2.items():
        if dot not in f1 and not c1.contains(dot):
            out[dot] = value
    return out
