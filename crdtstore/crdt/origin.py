"""Origins: the names a region mints its events (dots) under, one per incarnation.

A dot ``(origin, counter)`` must name one event, forever, in every region. A
region numbers its events 1, 2, 3, ... from what its own data directory says
it has minted. That is only safe while the directory is the one that minted
them: a region that lost its disk, or was restored from an old copy, would
count again from a lower number and give new events the ids of events that
other regions already hold. Each side would then take the other's event for
one it has, so both writes survive in some regions and are missing in
others, forever (Riak shipped this bug: a vnode restored under its old
identity; its fix was an epoch in the actor id).

So a region mints under an *origin*: its region name and an incarnation,
``eu-west#3f9a1c0b7d2e``. A data directory that cannot prove it is the one
that minted its origin's newest events (it is new or empty, the operator
says so with ``--rejoin`` after a restore, a peer holds more of its events,
or its data file is evidently a copy) takes a fresh,
random incarnation before its first write. The old incarnation's events are
then ordinary events of another origin: peers that hold them send them back,
and version vectors carry one more entry. Region names never contain ``#``
(``crdtstore serve`` refuses such a name), so the region of an origin is
everything before the first ``#``; an origin without one is a region that
minted before incarnations existed, and is its own region. ``#`` sorts below
every character a region name may hold, so origins sort as their regions do
(``a#...`` before ``a-b#...``, as ``a`` before ``a-b``): a register's
tie-break between writes of equal timestamps follows the region names.

The incarnation is random rather than a counter because a counter would be
chosen from what the reachable peers know, and a peer that is partitioned
away may hold events of an incarnation nobody reachable has heard of.
48 random bits make two incarnations of one region colliding about as
likely as a disk returning wrong bytes that its checksums accept.
"""

from __future__ import annotations

__all__ = ["INCARNATION_HEX_DIGITS", "origin_of", "region_of"]

_MARK = "#"
INCARNATION_HEX_DIGITS = 12


def origin_of(region: str, incarnation: str) -> str:
    """The origin of ``region``'s incarnation ``incarnation`` (lowercase hex)."""
    if _MARK in region:
        raise ValueError(f"a region name cannot contain {_MARK!r}: {region!r}")
    if not incarnation or not all(c in "0123456789abcdef" for c in incarnation):
        raise ValueError(f"an incarnation is lowercase hexadecimal, got {incarnation!r}")
    return f"{region}{_MARK}{incarnation}"


def region_of(origin: str) -> str:
    """The region that minted under ``origin``."""
    return origin.partition(_MARK)[0]
