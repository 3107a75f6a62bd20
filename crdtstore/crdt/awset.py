"""Set: an add-wins observed-remove set without tombstones.

State: a dot map ``member -> dot set``; a member is in the set while it holds
at least one dot. This is the optimised OR-set of Bieniusa et al., "An
optimized conflict-free replicated set" (2012), in the delta form of Almeida
et al. (JPDC 2018): the causal context replaces the tombstones of the original
OR-set, so a removed member costs nothing once removed.

An add of ``x`` by region ``r`` mints a dot ``d`` and produces the delta

    store   = {x: {d}}
    context = {d} | x's current dots

and a remove of ``x`` produces ``store = {x: {}}``, ``context = {d} | x's
current dots``. The empty entry names ``x`` so that ``join_delta`` visits that
member alone; a state never keeps it. The remove mints a dot too: every
mutation is an event, which keeps the context's version vector equal to
"every event this replica has applied".

Both deltas name one member and a handful of dots, so their size does not
depend on the size of the set. (The npm ``delta-crdts`` 0.10.3 add-wins set
returns its whole state from an add, so its "deltas" grow with the set:
``python -m benchmarks.peers`` measures both side by side.)

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
        """True when no member holds a dot (a delta may still name members)."""
        return not any(self.entries.values())

    def dots(self) -> Iterator[Dot]:
        for dots in self.entries.values():
            yield from dots

    def join(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        members = self.entries.keys() | other.entries.keys()
        return self._join_members(other, self_ctx, other_ctx, members, keep_empty=False)

    def join_delta(self, delta: Self, self_ctx: CausalContext, delta_ctx: CausalContext) -> Self:
        return self._join_members(delta, self_ctx, delta_ctx, delta.entries.keys(), keep_empty=False)

    def combine(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        # Both sides are deltas that name what they touch, so members that
        # ``other`` does not name are unaffected by it: visit only its members,
        # and folding a batch of n operations into one delta costs O(n).
        return self._join_members(other, self_ctx, other_ctx, other.entries.keys(), keep_empty=True)

    def emptied(self) -> Self:
        return type(self)(dict.fromkeys(self.entries, _NO_DOTS))

    def _join_members(
        self,
        other: Self,
        self_ctx: CausalContext,
        other_ctx: CausalContext,
        members: Iterable[str],
        *,
        keep_empty: bool,
    ) -> Self:
        # The copy of the member index is a C-level dict copy; the join work
        # (the Python loop) is only over ``members``.
        mine, theirs = self.entries, other.entries
        out = dict(mine)
        for member in members:
            dots, other_dots = mine.get(member, _NO_DOTS), theirs.get(member, _NO_DOTS)
            if dots is other_dots and dots:
                continue  # one dot set shared by both sides (states from one base): already in ``out``
            joined = join_dot_set(dots, self_ctx, other_dots, other_ctx)
            if joined or keep_empty:
                out[member] = joined
            else:
                out.pop(member, None)
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
            AWSet({member: _NO_DOTS}),  # names the member so join_delta visits it
            CausalContext.from_dots([dot, *self.entries.get(member, _NO_DOTS)]),
        )

    # -- reads --------------------------------------------------------------------

    def value(self) -> frozenset[str]:
        return frozenset(m for m, dots in self.entries.items() if dots)

    def __contains__(self, member: object) -> bool:
        return bool(self.entries.get(member, _NO_DOTS))  # type: ignore[call-overload]


def _check_member(member: object) -> None:
    if not isinstance(member, str):
        raise TypeError(f"set members are strings, got {type(member).__name__}")
