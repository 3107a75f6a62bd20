"""Causal tokens as people read them: how far a region is behind a token.

A token is the encoded version vector of what a write or a read saw. A read
with ``after=TOKEN`` waits until the region's own vector covers it; when it
gives up, the node (and the command line, asking ``status`` when only its
own deadline spoke) says how many events of each origin the region still
lacks, so a lagging region is not taken for a dead one.
"""

from __future__ import annotations

from crdtstore.crdt import CodecError, VersionVector, decode_as

__all__ = ["decode_token", "describe_behind", "events_behind"]


def decode_token(token: bytes) -> VersionVector:
    """The vector a token encodes; ``ValueError`` for bytes that are not a token."""
    try:
        return decode_as(token, VersionVector)
    except CodecError as exc:
        raise ValueError(f"not a causal token: {exc}") from None


def events_behind(seen: VersionVector, target: VersionVector) -> dict[str, int]:
    """Per origin, how many events of ``target`` lie beyond ``seen``; origins ``seen`` covers are left out."""
    return {origin: count - seen.get(origin) for origin, count in sorted(target.items()) if count > seen.get(origin)}


def describe_behind(behind: dict[str, int]) -> str:
    """``3 events behind it (from us-east 2, ap-south 1)``."""
    total = sum(behind.values())
    origins = ", ".join(f"{origin} {count}" for origin, count in behind.items())
    return f"{total} event{'s' if total != 1 else ''} behind it (from {origins})"
