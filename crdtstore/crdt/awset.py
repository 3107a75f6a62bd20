"""Set: an add-wins observed-remove set without tombstones.

State: a dot map ``member -> dot set``; a member is in the set while it holds
at least one dot. This is the optimised OR-set of Bieniusa et al., "An
optimized conflict-free replicated set" (2012), in the delta form of Almeida
et al. (JPDC 2018): the causal context replaces the tombstones of the original
OR-set, so a removed member costs nothing once removed.

An add of ``x`` by region ``r`` mints a dot ``d`` and produces the delta

    store   = {x: {d}}
    context = {d} | x's current dots

and a remove of ``x`` produces ``store = {}``, ``context = {d} | x's current
dots`` (the remove mints a dot too: every mutation is an event, which keeps the
context's version vector equal to "every event this replica has applied").

Both deltas name one member and a handful of dots, so their size does not
depend on the size of the set. (The npm ``delta-crdts`` add-wins set ships the
whole causal context with each add, so its deltas grow with the state.)

Add wins: an add concurrent with a remove carries a dot the remove never saw,
so the join keeps it. Removing a member that was never seen is a no-op.
Because an add replaces the member's earlier dots, a member normally holds one
dot; it holds several only after concurrent adds, until the next add or remove
of that member collapses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Self

from crdtstore.crdt.causal import CausalContext, Dot
from crdtstore.crdt.dotstore import Causal, join_dot_set

__all__ = ["AWSet"]

_NO_DOTS: frozenset[Dot] = frozenset()


@dataclass(frozen=True, slots=True)
class AWSet:
    entries: Mapping[str, frozenset[Dot]] = field(default_factory=dict)

    @classmethod
    def bottom(cls) -> Self:
        return cls()

    def is_bottom(self) -> bool:
        return not self.entries

    def dots(self) -> Iterator[Dot]:
        for dots in self.entries.values():
            yield from dots

    def join(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        if not other.entries and not self.entries:
            return self
        out: dict[str, frozenset[Dot]] = {}
        mine, theirs = self.entries, other.entries
        for member, dots in mine.items():
            joined = join_dot_set(dots, self_ctx, theirs.get(member, _NO_DOTS), other_ctx)
            if joined:
                out[member] = joined
        for member, dots in theirs.items():
            if member not in mine:
                joined = join_dot_set(_NO_DOTS, self_ctx, dots, other_ctx)
                if joined:
                    out[member] = joined
        return type(self)(out)

    # -- mutators ---------------------------------------------------------------

    def add(self, member: str, dot: Dot) -> Causal[AWSet]:
        _check_member(member)
        return Causal(
            AWSet({member: frozenset((dot,))}),
            CausalContext.from_dots([dot, *self.entries.get(member, _NO_DOTS)]),
        )

    def remove(self, member: str, dot: Dot) -> Causal[AWSet]:
        _check_member(member)
        return Causal(
            AWSet(),
            CausalContext.from_dots([dot, *self.entries.get(member, _NO_DOTS)]),
        )

    # -- reads --------------------------------------------------------------------

    def value(self) -> frozenset[str]:
        return frozenset(self.entries)

    def __contains__(self, member: object) -> bool:
        return member in self.entries


def _check_member(member: object) -> None:
    if not isinstance(member, str):
        raise TypeError(f"set members are strings, got {type(member).__name__}")


def members_sorted(members: Iterable[str]) -> list[str]:
    """Members in the order every face shows them: by code point."""
    return sorted(members)
