"""Causal primitives: dots, version vectors and causal contexts.

A *dot* ``(region, counter)`` names one event: the ``counter``-th event that
``region`` originated. Every local mutation in crdtstore mints at least one
dot, so a region's dots are numbered 1, 2, 3, ... without gaps at the origin.

A *version vector* maps each region to the highest counter seen from it, and
stands for the set of dots ``{(r, 1) .. (r, vv[r])}`` for every ``r``: a
downward-closed set.

A *causal context* is the set of every dot a replica has seen, whether the
event is still visible in the state or was later overwritten or removed. When
deltas arrive out of order the set is not downward closed, so it is kept as a
compact version vector plus a *dot cloud* of the dots beyond it (Almeida,
Shoker, Baquero, "Delta State Replicated Data Types", JPDC 2018, on causal
contexts and dot clouds). Compaction moves each cloud dot that continues the vector's
contiguous run into the vector, so after anti-entropy the cloud is empty and
the context costs one integer per region.

The causal context is what replaces tombstones: a dot that is in the context
but not in the state was removed, and a join never brings it back.

All three types are immutable; every operation returns a new value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

__all__ = ["CausalContext", "Dot", "VersionVector"]


class Dot(NamedTuple):
    """One event: the ``counter``-th event originated by ``region``.

    A named tuple rather than a dataclass: dots are created and hashed by the
    million (one per set element), and tuples are the cheapest immutable,
    hashable, totally ordered record Python has.
    """

    region: str
    counter: int


class VersionVector:
    """An immutable map from region to the highest contiguous counter seen.

    Regions at zero are not stored, so two vectors that denote the same set of
    dots compare equal and encode to the same bytes.
    """

    __slots__ = ("_entries",)

    _entries: dict[str, int]

    def __init__(self, entries: Mapping[str, int] | None = None) -> None:
        if not entries:
            self._entries = {}
            return
        clean = dict(entries)
        if min(clean.values()) <= 0:
            # Rare: drop the zeros, refuse a negative.
            clean = {}
            for region, counter in entries.items():
                if counter < 0:
                    raise ValueError(f"version vector counter for {region!r} is negative: {counter}")
                if counter:
                    clean[region] = counter
        self._entries = clean

    @classmethod
    def _trusted(cls, entries: dict[str, int]) -> VersionVector:
        # Internal constructor for dicts that are already clean and owned by
        # the new vector (no zeros, never mutated afterwards).
        vv = cls.__new__(cls)
        vv._entries = entries
        return vv

    def get(self, region: str) -> int:
        return self._entries.get(region, 0)

    def items(self) -> Iterator[tuple[str, int]]:
        return iter(self._entries.items())

    def regions(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def contains(self, dot: Dot) -> bool:
        return dot.counter <= self._entries.get(dot.region, 0)

    def join(self, other: VersionVector) -> VersionVector:
        # Most joins are of a vector with one it already covers or that covers
        # it (an acknowledgement repeating what was sent): those build nothing.
        mine, theirs = self._entries, other._entries
        if mine == theirs:
            return self
        merged: dict[str, int] | None = None
        get = mine.get
        for region, counter in theirs.items():
            if counter > get(region, 0):
                if merged is None:
                    merged = mine.copy()
                merged[region] = counter
        if merged is None:
            return self
        if merged == theirs:
            return other
        return VersionVector._trusted(merged)

    def advance(self, region: str, counter: int) -> VersionVector:
        """This vector with ``region`` raised to at least ``counter``."""
        if counter <= self._entries.get(region, 0):
            return self
        merged = dict(self._entries)
        merged[region] = counter
        return VersionVector._trusted(merged)

    def dominates(self, other: VersionVector) -> bool:
        """True when every dot ``other`` stands for is also in ``self``."""
        mine = self._entries
        # A loop rather than all() over a generator: this runs on every message.
        for region, counter in other._entries.items():  # noqa: SIM110
            if counter > mine.get(region, 0):
                return False
        return True

    def concurrent(self, other: VersionVector) -> bool:
        return not self.dominates(other) and not other.dominates(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionVector) and self._entries == other._entries

    def __hash__(self) -> int:
        return hash(frozenset(self._entries.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{r}={c}" for r, c in sorted(self._entries.items()))
        return f"VersionVector({inner})"


class CausalContext:
    """An immutable set of dots: a compact version vector plus a dot cloud.

    Invariant (checked by ``_check``, kept by every constructor here): every
    cloud dot is above the vector, and no cloud dot is the next dot of the
    vector's contiguous run for its region (it would have been absorbed).
    Equal sets of dots therefore have equal representations.
    """

    __slots__ = ("_cloud", "_vv")

    _vv: VersionVector
    _cloud: frozenset[Dot]

    def __init__(self, vv: VersionVector | None = None, cloud: Iterable[Dot] = ()) -> None:
        base = vv if vv is not None else VersionVector()
        self._vv, self._cloud = _compact(base, frozenset(cloud))

    @classmethod
    def from_dots(cls, dots: Iterable[Dot]) -> CausalContext:
        return cls(None, dots)

    @classmethod
    def _trusted(cls, vv: VersionVector, cloud: frozenset[Dot]) -> CausalContext:
        # Internal constructor for a pair that is already compact (the codec
        # checks that on the way in): no dot of ``cloud`` is covered by ``vv``
        # or continues it.
        ctx = cls.__new__(cls)
        ctx._vv = vv
        ctx._cloud = cloud
        return ctx

    @property
    def vv(self) -> VersionVector:
        return self._vv

    @property
    def cloud(self) -> frozenset[Dot]:
        return self._cloud

    def contains(self, dot: Dot) -> bool:
        return dot.counter <= self._vv._entries.get(dot.region, 0) or dot in self._cloud

    __contains__ = contains

    def max_counter(self, region: str) -> int:
        """The highest counter from ``region`` in this context, cloud included."""
        top = self._vv.get(region)
        for dot in self._cloud:
            if dot.region == region and dot.counter > top:
                top = dot.counter
        return top

    def next_dot(self, region: str) -> Dot:
        """The dot ``region`` mints next, given that this context is its own.

        A region's own dots are contiguous in its own context, so this is one
        past the vector; the cloud is consulted only to stay correct if a
        caller hands in a context with a gap.
        """
        return Dot(region, self.max_counter(region) + 1)

    def add(self, dot: Dot) -> CausalContext:
        if self.contains(dot):
            return self
        return self._with(self._vv, self._cloud | {dot})

    def add_all(self, dots: Iterable[Dot]) -> CausalContext:
        fresh = [d for d in dots if not self.contains(d)]
        if not fresh:
            return self
        return self._with(self._vv, self._cloud.union(fresh))

    def add_run(self, region: str, first: int, last: int) -> CausalContext:
        """With the dots ``region:first..last`` added: ``add_all`` of the run, without a dot object per counter.

        A region's own writes are such a run right after its vector entry; the
        vector then moves to ``last`` and the cloud stays as it is.
        """
        top = self._vv.get(region)
        if first <= top + 1 and not any(dot.region == region for dot in self._cloud):
            return self if last <= top else CausalContext._trusted(self._vv.advance(region, last), self._cloud)
        return self.add_all(Dot(region, counter) for counter in range(first, last + 1))

    def join(self, other: CausalContext) -> CausalContext:
        if other is self or (not other._cloud and self._vv.dominates(other._vv)):
            return self
        if not self._cloud and other._vv.dominates(self._vv):
            return other
        vv = self._vv.join(other._vv)
        return self._with(vv, self._cloud | other._cloud)

    def dominates(self, other: CausalContext) -> bool:
        """True when every dot of ``other`` is in ``self``.

        Because ``self`` is compact, ``self.vv[r] < other.vv[r]`` means the dot
        right after ``self.vv[r]`` is in ``other`` and missing here.
        """
        if not self._vv.dominates(other._vv):
            return False
        return all(self.contains(d) for d in other._cloud)

    def concurrent(self, other: CausalContext) -> bool:
        return not self.dominates(other) and not other.dominates(self)

    def dots(self) -> Iterator[Dot]:
        """Every dot in the context. Its length is the sum of the counters."""
        for region, counter in self._vv.items():
            for c in range(1, counter + 1):
                yield Dot(region, c)
        yield from self._cloud

    def is_empty(self) -> bool:
        return not len(self._vv) and not self._cloud

    @staticmethod
    def _with(vv: VersionVector, cloud: frozenset[Dot]) -> CausalContext:
        ctx = CausalContext.__new__(CausalContext)
        ctx._vv, ctx._cloud = _compact(vv, cloud)
        return ctx

    def _check(self) -> None:
        for dot in self._cloud:
            assert dot.counter > self._vv.get(dot.region), f"cloud dot {dot} is covered by the vector"
            assert dot.counter != self._vv.get(dot.region) + 1, f"cloud dot {dot} was not absorbed"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CausalContext) and self._vv == other._vv and self._cloud == other._cloud

    def __hash__(self) -> int:
        return hash((self._vv, self._cloud))

    def __repr__(self) -> str:
        cloud = ", ".join(f"{d.region}:{d.counter}" for d in sorted(self._cloud))
        return f"CausalContext({self._vv!r}, cloud={{{cloud}}})"


def _compact(vv: VersionVector, cloud: frozenset[Dot]) -> tuple[VersionVector, frozenset[Dot]]:
    """Absorb the cloud dots that continue the vector and drop covered ones."""
    if not cloud:
        return vv, cloud
    tops = vv._entries
    if len(cloud) == 1:
        # The common case (one new dot): no grouping needed.
        (dot,) = cloud
        region, counter = dot
        if counter < 1:
            raise ValueError(f"dot counters start at 1, got {dot}")
        top = tops.get(region, 0)
        if counter <= top:
            return vv, frozenset()
        if counter == top + 1:
            return vv.advance(region, counter), frozenset()
        return vv, cloud
    # Usually (a join) every dot is covered by the vector or continues it:
    # find the dots beyond the vector first and group only those.
    beyond: list[Dot] = []
    continues = False  # some dot beyond the vector is right after its region's entry
    for dot in cloud:
        region, counter = dot
        if counter < 1:
            raise ValueError(f"dot counters start at 1, got {dot}")
        top = tops.get(region, 0)
        if counter > top:
            beyond.append(dot)
            continues = continues or counter == top + 1
    if not beyond:
        return vv, frozenset()
    if not continues:
        # Nothing to absorb (a delta's context, say: dots from the middle of each region's history).
        return vv, cloud if len(beyond) == len(cloud) else frozenset(beyond)
    if len(beyond) == 1:
        region, counter = beyond[0]
        if counter == tops.get(region, 0) + 1:
            return vv.advance(region, counter), frozenset()
        return vv, frozenset(beyond)
    by_region: dict[str, set[int]] = {}
    for region, counter in beyond:
        if region in by_region:
            by_region[region].add(counter)
        else:
            by_region[region] = {counter}
    entries: dict[str, int] | None = None
    rest: list[Dot] = []
    for region, counters in by_region.items():
        start = top = tops.get(region, 0)
        while top + 1 in counters:
            top += 1
            counters.discard(top)
        if top != start:
            if entries is None:
                entries = tops.copy()
            entries[region] = top
        rest.extend([Dot(region, c) for c in counters])
    new_vv = VersionVector._trusted(entries) if entries is not None else vv
    return new_vv, frozenset(rest)
