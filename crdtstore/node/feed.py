"""The change feed's server side: ``KV.Watch`` streams over the store's feed index.

A stream is a loop over the index (``crdtstore.storage.feed``): read a page
of changes after its position, send those under the prefix that its token
does not cover, and, at the end of the index, wait for the next commit or
apply (``waits.ChangeSignal``) or for the progress interval. Its token is a version
vector: the join of what it started from and every change it passed (sent,
or not under its prefix), and, at the end of the index, of everything this
node had then. That is why a token from any region resumes here: the changes
it lacks are exactly the records it does not cover.

Resources: a stream holds one page at a time and reads the index at its own
pace, so a slow consumer never holds back writers or replication and never
makes the node buffer. gRPC's flow control makes a send wait while the
consumer's window is full; a send that waits ``server.watch_stall_s`` ends
the stream with ``RESOURCE_EXHAUSTED`` (the consumer resumes from its token).
At most ``server.watch_streams_max`` streams at once.

Retention: ``FeedRetention`` trims the index by age and size every
second, through the writer thread (one write transaction at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from crdtstore.auth.policy import Need
from crdtstore.crdt import CodecError, KeyState, VersionVector, decode_as, encode
from crdtstore.crdt.origin import region_of
from crdtstore.node.access import Refusal, is_reserved
from crdtstore.node.periodic import Periodic
from crdtstore.node.requests import abort as _abort
from crdtstore.node.values import key_value_pb
from crdtstore.storage.feed import (
    KIND_ADD,
    KIND_DELETE,
    KIND_INCR,
    KIND_REMOVE,
    KIND_SET,
    KIND_STATE,
    FeedRecord,
    must_restart,
    pass_record,
)
from crdtstore.v1 import kv_pb2 as pb

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState

__all__ = ["FeedRetention", "WatchStreams", "read_need"]

log = logging.getLogger("crdtstore.feed")

_KINDS = (
    (KIND_SET, pb.CHANGE_KIND_SET),
    (KIND_INCR, pb.CHANGE_KIND_INCR),
    (KIND_ADD, pb.CHANGE_KIND_ADD),
    (KIND_REMOVE, pb.CHANGE_KIND_REMOVE),
    (KIND_DELETE, pb.CHANGE_KIND_DELETE),
    (KIND_STATE, pb.CHANGE_KIND_STATE),
)
# Records of the index read per page, and keys: a page's values are read in one go.
_PAGE_RECORDS = 256
_PAGE_KEYS = 1024
# Streams that read the store at once (each in a thread of the default executor, which replication shares).
_READERS = 2
# A token names each origin once (a region and an incarnation): far less than this.
_TOKEN_BYTES_MAX = 64 * 1024
# The shortest progress interval a request may ask for.
_PROGRESS_MS_MIN = 100
# Records trimmed per write transaction (``LmdbStore.trim_feed``'s budget).
_TRIM_BATCH = 10_000


class WatchStreams:
    """Serves ``KV.Watch``; one per node."""

    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.signal = node.replicator.changes
        self.open = 0
        self.readers = asyncio.Semaphore(_READERS)
        # Counted for status and metrics: events sent, and streams cut because the consumer stalled.
        self.events_sent = 0
        self.cut_stalled = 0

    async def watch(
        self,
        request: pb.WatchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        still_allowed: Callable[[], None],
        *,
        principals: bool = False,
    ) -> None:
        """Serve one stream; ``still_allowed`` raises ``Refusal`` once the caller may no longer read the prefix.

        With ``principals`` (the caller may read the audit trail) each event
        names the principal whose request made it, from the change's audit record.

        A caller allowed ``read`` on the prefix may read every key under it
        (grants are prefixes), so keys are not checked one by one; the
        permission (and the token's expiry and revocation) is checked again
        before every page, on the event loop.
        """
        settings = self.node.config.server
        if self.node.draining or self.signal.closed:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "the node is shutting down; watch another region")
        start = request.start or "snapshot"
        on_expired = request.on_expired or "reset"
        if start not in ("snapshot", "now"):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"start is 'snapshot' or 'now', not {start!r}")
        if on_expired not in ("reset", "error"):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"on_expired is 'reset' or 'error', not {on_expired!r}"
            )
        if request.after.vector and request.start:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "give either after (a token) or start, not both")
        if is_reserved(request.prefix):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "a prefix starting with a NUL character names the node's own records, which are not watched",
            )
        token = VersionVector()
        if len(request.after.vector) > _TOKEN_BYTES_MAX:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the after token is {len(request.after.vector)} bytes; a token is at most {_TOKEN_BYTES_MAX}",
            )
        if request.after.vector:
            try:
                token = decode_as(request.after.vector, VersionVector)
            except CodecError:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the after token is not one crdtstore issued")
        if self.open >= settings.watch_streams_max:
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this node already serves {self.open} watch streams (server.watch_streams_max); "
                f"watch another region, or retry later",
            )
        self.open += 1
        try:
            stream = _Stream(self, request, context, token, still_allowed)
            stream.principals = principals
            if request.after.vector:
                await stream.resume()
            elif start == "now":
                stream.position, head = await asyncio.to_thread(self.node.store.feed_head)
                stream.token = stream.token.join(head)
                # At once, so that the consumer holds a token to resume from whatever happens next.
                await stream.progress()
            else:
                await stream.snapshot()
            await stream.follow()
        finally:
            self.open -= 1


class _Stream:
    def __init__(
        self,
        streams: WatchStreams,
        request: pb.WatchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        token: VersionVector,
        still_allowed: Callable[[], None],
    ) -> None:
        self.streams = streams
        self.store = streams.node.store
        self.settings = streams.node.config.server
        self.prefix = request.prefix
        self.on_expired = request.on_expired or "reset"
        self.context = context
        self.token = token
        self.still_allowed = still_allowed
        self.position = 0  # the last index record passed
        interval_ms = max(request.progress_interval_ms or self.settings.watch_progress_interval_ms, _PROGRESS_MS_MIN)
        self.progress_s = interval_ms / 1000
        self.last_sent = time.monotonic()
        self._regions: dict[str, str] = {}
        self.principals = False  # whether events name who made them (the caller may read the audit trail)
        self.restart_why = ""  # why the last page could not be passed (``_prepare``), for OUT_OF_RANGE

    def _wanted(self, key: str) -> bool:
        return key.startswith(self.prefix) and not is_reserved(key)

    async def _send(self, response: pb.WatchResponse) -> None:
        # Counted when handed to gRPC: a consumer that has its events and closes the stream at once
        # cancels the write that delivered them (found by the cluster metrics test).
        self.streams.events_sent += len(response.events)
        try:
            async with asyncio.timeout(self.settings.watch_stall_s):
                await self.context.write(response)
        except TimeoutError:
            self.streams.cut_stalled += 1
            await _abort(
                self.context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the consumer read nothing for {self.settings.watch_stall_s:g} s (server.watch_stall_s): the stream "
                f"is closed so that the node does not hold its changes; resume from the last token received",
            )
        self.last_sent = time.monotonic()

    async def _check_allowed(self) -> None:
        """End the stream once the caller may no longer read the prefix.

        Checked again after each page is read, before any of it is sent: a
        revocation applied while the page was read may come before changes in
        that page, and those must not go (found by the revoked-watch test, on
        a loaded machine: the revocation and the next change both landed while
        a page was being read).
        """
        try:
            self.still_allowed()
        except Refusal as refusal:
            await _abort(self.context, refusal.code, f"the watch ends: {refusal.message}")

    async def progress(self) -> None:
        await self._send(pb.WatchResponse(token=_token(self.token), progress=True))

    async def resume(self) -> None:
        start = await asyncio.to_thread(self.store.feed_start, self.token)
        if start is None:
            await self.expired()
        elif await self._caught_up():
            self.position = start
        else:
            await self.expired(
                f"region {self.store.region} has not seen, within server.watch_catch_up_s "
                f"({self.settings.watch_catch_up_s:g} s), every change the token covers (its origin may be cut off "
                f"or gone)"
            )

    async def _caught_up(self) -> bool:
        """Wait (with progress messages, the token unchanged) until this region has seen everything the token covers.

        Values are read from this region: read before it had what the consumer
        already received elsewhere, a key could show an older value, and the
        change that would correct it never come (the token covers it). A read
        with ``after`` waits the same way.
        """
        deadline = time.monotonic() + self.settings.watch_catch_up_s
        replicator = self.streams.node.replicator
        while not self.store.context.vv.dominates(self.token):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not await replicator.wait_seen(self.token, min(left, self.progress_s)):
                await self.progress()
        return True

    async def expired(self, why: str = "") -> None:
        """The token cannot resume here: OUT_OF_RANGE, or (the default) a snapshot."""
        if self.on_expired == "error":
            why = why or (
                f"the token is older than region {self.store.region}'s change feed keeps "
                f"(storage.watch_retention_s, watch_retention_bytes_max)"
            )
            await _abort(
                self.context,
                grpc.StatusCode.OUT_OF_RANGE,
                f"{why}: start again from a snapshot (on_expired = 'reset', or no token), or in another region",
            )
        await self.snapshot()

    async def snapshot(self) -> None:
        """The current state of every key under the prefix, as reset pages; then changes follow from its point.

        The pages are read one transaction each, after the point is taken: a
        key may show a change made after it, whose event then follows (its
        value is the current one again). Until the last page the token stays
        what it was, so a consumer that resumes mid-snapshot gets a snapshot again.
        The last page's token is the point itself, not joined with the old
        token: what that token held beyond the point is not in the snapshot,
        and must come again if it ever arrives here.
        """
        self.position, point = await asyncio.to_thread(self.store.feed_head)
        settings = self.settings
        after = b""
        while True:
            entries, after = await asyncio.to_thread(
                self.store.scan_bounded,
                self.prefix,
                after,
                settings.scan_page_max,
                settings.scan_page_bytes_max,
                settings.get_members_max,
            )
            await self._check_allowed()
            events = [
                _event(key, state, omitted, pb.CHANGE_KIND_SNAPSHOT)
                for key, state, omitted in entries
                if self._wanted(key)
            ]
            done = not after
            if done:
                self.token = point
            await self._send(pb.WatchResponse(events=events, token=_token(self.token), reset=True, reset_done=done))
            if done:
                return

    async def follow(self) -> None:
        """Changes after the position, as they come; a progress message when none matched for a while."""
        signal = self.streams.signal
        while True:
            if signal.closed:
                await _abort(
                    self.context,
                    grpc.StatusCode.UNAVAILABLE,
                    "the node is shutting down; resume on another region with the last token received",
                )
            await self._check_allowed()
            wake = signal.current()
            # A page of the index, what of it this stream sends, and the keys' values: one hop to a thread.
            async with self.streams.readers:  # a few streams read at once: replication's reads keep their threads
                messages, at_end = await asyncio.to_thread(self._prepare)
            await self._check_allowed()
            if messages is None:
                # Records this stream had not passed were trimmed (it fell further behind than the
                # index keeps), or a repair cannot be passed exactly: start again from a snapshot,
                # never a history with a hole in it.
                await self.expired(self.restart_why)
                continue
            for message in messages:
                await self._send(message)
            if not at_end:
                continue
            idle = time.monotonic() - self.last_sent
            if idle >= self.progress_s:
                await self.progress()
                idle = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.progress_s - idle):
                    await wake.wait()

    def _prepare(self) -> tuple[list[pb.WatchResponse] | None, bool]:
        """The next page's messages (the changes under the prefix that the token lacks); whether the index ended.

        The changes of a page go in as few messages as ``scan_page_bytes_max``
        allows, each change's last event marked ``group_end`` with the token
        after it (one gRPC write per change would cost the event loop more
        than the change). Advances the position and the token past the page.
        """
        page = self.store.feed_read(self.position, _PAGE_RECORDS, _PAGE_KEYS)
        if not self.token.dominates(page.floor):
            self.restart_why = ""  # the token is older than the index
            return None, False
        token = self.token
        chosen: list[tuple[FeedRecord, list[tuple[str, int, int]], VersionVector]] = []
        at_end = page.at_end
        for record in page.records:
            if must_restart(record, token):
                if not chosen:  # a transfer may have deleted keys this region never had: a snapshot
                    self.restart_why = (
                        f"the token holds changes region {self.store.region} lacked before a repair it applied "
                        f"since, which may have deleted keys it never had"
                    )
                    return None, False
                at_end = False  # send what comes before it; the next page starts at it
                break
            keys, token = pass_record(record, token, self._wanted)
            chosen.append((record, keys, token))
        out = _Messages(self.settings.scan_page_bytes_max)
        members_max = self.settings.get_members_max
        for i, (record, keys, token_after) in enumerate(chosen):
            self.position, self.token = record.seq, token_after
            if keys:
                # Read a change's values only when it goes: memory stays within the byte budget (and one change).
                states = self.store.get_many_bounded([key for key, _, _ in keys], members_max)
                events = [self._event(record, change, *state) for change, state in zip(keys, states, strict=True)]
                if self.principals and record.origin:  # a change's record: the request that made it (docs/audit.md)
                    audit = self.store.audit_record_at(record.origin, record.last)
                    if audit is not None and audit.first == record.first:
                        for event in events:
                            event.principal = audit.principal
                events[-1].group_end = True
                events[-1].token.vector = encode(token_after)
                out.add(events, token_after)
            if out.full and i < len(chosen) - 1:
                return out.done(self.token), False  # the rest of the page next time: a stream holds one page's worth
        if at_end:
            self.token = self.token.join(page.reached)
        return out.done(self.token), at_end

    def _event(
        self, record: FeedRecord, change: tuple[str, int, int], state: KeyState | None, omitted: int
    ) -> pb.WatchEvent:
        key, bits, counter = change  # as pass_record gives it
        event = _event(key, state, omitted, *(kind for bit, kind in _KINDS if bits & bit))
        event.origin, event.region, event.counter = record.origin, self._region(record.origin), counter
        if record.hlc is not None:
            event.wall_ms, event.logical = record.hlc
        event.applied_ms = record.applied_ms
        return event

    def _region(self, origin: str) -> str:
        region = self._regions.get(origin)
        if region is None:
            region = self._regions[origin] = region_of(origin) if origin else ""
        return region


class _Messages:
    """A page's changes as messages of about ``budget`` bytes at most; a change split only when larger alone."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.messages: list[pb.WatchResponse] = []
        self.events: list[pb.WatchEvent] = []
        self.size = 0
        self.sent = 0  # bytes in finished messages
        self.token: VersionVector | None = None  # after the last whole change in ``events``

    @property
    def full(self) -> bool:
        return self.sent + self.size > self.budget

    def add(self, events: list[pb.WatchEvent], token: VersionVector) -> None:
        size = sum(e.ByteSize() for e in events)
        if self.events and self.size + size > self.budget:
            self._flush(self.token)
        if size > self.budget:
            # One change too large for one message: its events in several (partial), the token with the last.
            for event in events[:-1]:
                n = event.ByteSize()
                if self.events and self.size + n > self.budget:
                    self.messages.append(pb.WatchResponse(events=self.events, partial=True))
                    self.sent += self.size
                    self.events, self.size = [], 0
                self.events.append(event)
                self.size += n
            events = events[-1:]
            size = events[0].ByteSize()
        self.events.extend(events)
        self.size += size
        self.token = token

    def _flush(self, token: VersionVector | None) -> None:
        assert token is not None
        self.messages.append(pb.WatchResponse(events=self.events, token=_token(token)))
        self.sent += self.size
        self.events, self.size = [], 0

    def done(self, token: VersionVector) -> list[pb.WatchResponse]:
        """The messages; the last carries ``token`` (the stream's, past every change of the page)."""
        if self.events:
            self._flush(token)
        return self.messages


class FeedRetention(Periodic):
    """Trims the feed's index by age and size, every ``interval_s``, through the writer's thread."""

    what = "trimming the change feed's index"

    async def trim_once(self) -> int:
        """One pass: everything past the bounds goes; returns how many records went."""
        store, options = self.node.store, self.node.config.storage
        removed = 0
        while True:
            older_than = store.wall_ms() - options.watch_retention_s * 1000
            n = await self.node.writer.call(
                functools.partial(store.trim_feed, older_than, options.watch_retention_bytes_max, _TRIM_BATCH)
            )
            removed += n
            if n < _TRIM_BATCH:
                return removed


def _token(vv: VersionVector) -> pb.CausalToken:
    return pb.CausalToken(vector=encode(vv))


def _event(key: str, state: KeyState | None, omitted: int, *kinds: pb.ChangeKind) -> pb.WatchEvent:
    return pb.WatchEvent(key=key, changes=kinds, entry=key_value_pb(key, state, omitted))


def read_need(request: pb.WatchRequest) -> Sequence[Need]:
    """A watch needs ``read`` on its prefix."""
    return (Need("read", request.prefix),)
