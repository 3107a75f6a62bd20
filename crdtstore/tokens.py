"""Causal tokens as people read them: how far a region is behind a token.

A token is the encoded version vector of what a write or a read saw. A read
with ``after=TOKEN`` waits until the region's own vector covers it; when it
gives up, the node (and the command line, asking ``status`` when only its
own deadline spoke) says how many events of each origin the region still
lacks, so a lagging region is not taken for a dead one.

Written down, a token is base64 (what every command and ``--json`` prints)
or hex (how an audit record shows the token its request produced).
``parse_token`` takes either, checking that the bytes are a token; the
command line's ``--after`` and the clients' ``watch(after=...)`` use it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib

from crdtstore.crdt import CodecError, VersionVector, decode_as

__all__ = ["TOKEN_FORMS", "decode_token", "describe_behind", "events_behind", "parse_token"]

TOKEN_FORMS = "the base64 a command printed, or the hex an audit record shows"


def decode_token(token: bytes) -> VersionVector:
    """The vector a token encodes; ``ValueError`` for bytes that are not a token."""
    try:
        return decode_as(token, VersionVector)
    except CodecError as exc:
        raise ValueError(f"not a causal token: {exc}") from None


def parse_token(text: str) -> bytes:
    """The token ``text`` writes: base64 first, then hex, each checked by decoding it; ``ValueError`` otherwise.

    The error names both accepted forms (``TOKEN_FORMS``). An empty text is
    no token (``b""``), as an empty ``--after`` always was.
    """
    stripped = text.strip()
    if not stripped:
        return b""
    candidates: list[bytes] = []
    with contextlib.suppress(ValueError, UnicodeEncodeError, binascii.Error):
        candidates.append(base64.b64decode(stripped.encode("ascii"), validate=True))
    with contextlib.suppress(ValueError):
        candidates.append(bytes.fromhex(stripped))
    for raw in candidates:
        if not raw:
            continue
        try:
            decode_token(raw)
        except ValueError:
            continue
        return raw
    shown = text if len(text) <= 40 else text[:37] + "..."
    raise ValueError(f"{shown!r} is not a causal token: give {TOKEN_FORMS}")


def events_behind(seen: VersionVector, target: VersionVector) -> dict[str, int]:
    """Per origin, how many events of ``target`` lie beyond ``seen``; origins ``seen`` covers are left out."""
    return {origin: count - seen.get(origin) for origin, count in sorted(target.items()) if count > seen.get(origin)}


def describe_behind(behind: dict[str, int]) -> str:
    """``3 events behind it (from us-east 2, ap-south 1)``."""
    total = sum(behind.values())
    origins = ", ".join(f"{origin} {count}" for origin, count in behind.items())
    return f"{total} event{'s' if total != 1 else ''} behind it (from {origins})"
