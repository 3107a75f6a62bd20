"""What a change-feed consumer receives: ``Change``, ``Progress``, ``ResetBegin`` and ``ResetEnd``.

``Client.watch`` and ``AsyncClient.watch`` yield these, in order:

* ``ResetBegin``: a snapshot of the prefix follows (a watch without a token,
  or one whose token is older than the region's feed keeps). A projection
  forgets what it holds under the prefix: the snapshot replaces it.
* ``Change``: one key changed, or (``reset`` true) one key's state in the
  snapshot. ``entry`` is the key as ``get`` shows it. ``dot`` (origin and
  counter) identifies the event everywhere, for deduplication: each event of
  a request has its own (the request's last, the one its write token names,
  goes to its last key in key order).
* ``ResetEnd``: the snapshot is complete; its ``token`` is where changes follow from.
* ``Progress``: nothing matched for a while; the ``token`` advanced all the same.

A stream's token (``Change.token`` where ``group_end`` is true,
``ResetEnd.token``, ``Progress.token``) is a version vector of everything
delivered so far: store it with what was made of the events up to there, and
resume from it (``after=``) in this region or any other; the events it does
not cover come again, those it covers never. A request's changes to several
keys come as one group of ``Change`` items sharing a token; store a token only
at ``group_end``, or a crash between two of them loses the rest of the group.

``WatchDecoder`` turns the stream's messages into these items; both clients
use it, so the blocking and the asyncio client yield the same things. (It is
given the client's reader of ``KeyValue`` messages: ``crdtstore.client``
imports this module, not the other way round.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crdtstore.v1 import kv_pb2

if TYPE_CHECKING:
    from crdtstore.client import Entry

__all__ = ["Change", "Progress", "ResetBegin", "ResetEnd", "WatchDecoder", "WatchItem"]

_CHANGE_NAMES = {
    kv_pb2.CHANGE_KIND_SET: "set",
    kv_pb2.CHANGE_KIND_INCR: "incr",
    kv_pb2.CHANGE_KIND_ADD: "add",
    kv_pb2.CHANGE_KIND_REMOVE: "remove",
    kv_pb2.CHANGE_KIND_DELETE: "delete",
    kv_pb2.CHANGE_KIND_STATE: "state",
    kv_pb2.CHANGE_KIND_SNAPSHOT: "snapshot",
}


@dataclass(frozen=True, slots=True)
class Change:
    """One key's change (or, with ``reset``, its state in a snapshot)."""

    key: str
    # What the change did: "set", "incr", "add", "remove", "delete", "state" (a repair), "snapshot".
    changes: tuple[str, ...]
    entry: Entry  # the key's value as get shows it, when the region sent the event
    origin: str  # the origin the change was minted under ("" for a snapshot or a repair)
    region: str  # the region that made it
    counter: int  # with origin, the event's dot, its own (0 for a snapshot or a repair)
    wall_ms: int  # the newest register timestamp the change wrote (0 if none)
    logical: int
    applied_ms: int  # when the region that sent it applied it
    principal: str  # who made it, where known
    token: bytes  # the stream's token once this change's group is delivered
    group_end: bool  # the last change of its group: the token may be stored here
    reset: bool = False  # part of a snapshot

    @property
    def dot(self) -> tuple[str, int]:
        return self.origin, self.counter


@dataclass(frozen=True, slots=True)
class Progress:
    """Nothing matched for a while; ``token`` covers everything the region had then."""

    token: bytes


@dataclass(frozen=True, slots=True)
class ResetBegin:
    """A snapshot follows: the keys under the prefix as they are now replace what the consumer holds."""


@dataclass(frozen=True, slots=True)
class ResetEnd:
    """The snapshot is complete; changes follow from ``token``."""

    token: bytes


WatchItem = Change | Progress | ResetBegin | ResetEnd


class WatchDecoder:
    """The stream's messages as ``WatchItem``s; keeps the last complete token for a resume."""

    def __init__(self, entry_of: Callable[[kv_pb2.KeyValue], Entry], token: bytes = b"") -> None:
        self._entry_of = entry_of
        self.token = token  # where a resume starts: the last token a complete message carried
        self.snapshot_again = False  # a snapshot was cut off: the next stream starts with one
        self._in_reset = False
        self._partial: list[kv_pb2.WatchEvent] = []

    def items(self, message: kv_pb2.WatchResponse) -> Iterator[WatchItem]:
        if message.partial:
            # A group too large for one message: held until its last message, which carries the token.
            self._partial.extend(message.events)
            return
        events = [*self._partial, *message.events]
        self._partial = []
        token = bytes(message.token.vector)
        if not token:
            raise ValueError("a watch message without a token")
        if message.reset and not self._in_reset:
            self._in_reset = True
            yield ResetBegin()
        if message.progress and not events:
            self.token = token
            yield Progress(token)
            return
        if message.reset:
            for event in events:
                yield self._change(event, token, False, True)
        else:
            group: list[kv_pb2.WatchEvent] = []
            for event in events:
                group.append(event)
                if event.group_end:
                    # A change's events share the token its last one carries.
                    group_token = bytes(event.token.vector) or token
                    for i, member in enumerate(group):
                        yield self._change(member, group_token, i == len(group) - 1, False)
                    group = []
            if group:
                raise ValueError("a watch message ends in the middle of a change")
        if message.reset:
            if message.reset_done:
                self._in_reset = False
                self.token = token
                yield ResetEnd(token)
            return
        self.token = token

    def resumed(self) -> None:
        """A new stream begins (after a failure): a group or snapshot left half-way starts again.

        A snapshot left half-way must start again as a snapshot: the consumer
        has seen ``ResetBegin`` and forgotten what it held, and its token (the
        old one) might resume elsewhere without a reset. So the next stream
        asks for a snapshot, with no token.
        """
        self._partial = []
        if self._in_reset:
            self.token = b""
            self.snapshot_again = True
        self._in_reset = False

    def _change(self, event: kv_pb2.WatchEvent, token: bytes, last: bool, reset: bool) -> Change:
        try:
            changes = tuple(_CHANGE_NAMES[kind] for kind in event.changes)
        except KeyError as exc:
            raise ValueError(f"unknown change kind {exc.args[0]} (is the client older than the server?)") from None
        return Change(
            key=event.key,
            changes=changes,
            entry=self._entry_of(event.entry),
            origin=event.origin,
            region=event.region,
            counter=event.counter,
            wall_ms=event.wall_ms,
            logical=event.logical,
            applied_ms=event.applied_ms,
            principal=event.principal,
            token=token,
            group_end=last and not reset,
            reset=reset,
        )
