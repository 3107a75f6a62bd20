"""The replication driver: runs the replica core over gRPC streams, the store and the writer.

The core (``crdtstore.replica.core``) decides what to send and what to apply;
this module does the I/O, on the event loop, in the order the core asks:
persist first (on the writer thread, one transaction and one fsync per
message), then send, then report back.

Streams: each pair of regions keeps one bidirectional ``Replication.Sync``
stream, opened by the region whose name sorts first and reopened with
bounded, jittered backoff when it breaks. gRPC keepalive pings detect a peer
that vanished without closing its connection. If a second stream for the same
peer arrives (the peer reconnected before this side noticed the old one
died), the newer one replaces the older.

Clocks: every message carries the sender's physical clock. From it each node
keeps the last measured offset to each peer. Remote register timestamps move
the hybrid logical clock forward, except one beyond ``max_clock_offset_ms``:
that delta is still applied (convergence comes first, and causality, not the
clock, decides overwrites) but the clock ignores it, and it is counted and
logged. A node whose own clock is out of bounds against most of its peers
refuses local writes until it is back in bounds (CockroachDB fences a node
the same way), because every register it wrote would win or lose by its
wrong clock.

Waiting: causal-token reads and ``replicated:N`` writes wait for conditions
on the node's vector and its peers' acknowledgements. Waiters are checked
whenever either changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from crdtstore.crdt import CausalContext, CodecError, HybridLogicalClock, StoreMap, VersionVector, decode_as, encode
from crdtstore.node.config import NodeConfig
from crdtstore.node.writer import GroupCommitWriter
from crdtstore.replica.core import (
    Ack,
    Action,
    Apply,
    Entries,
    Hello,
    Message,
    NeedsRepair,
    ReplicaCore,
    Send,
    SendLog,
    Trim,
)
from crdtstore.storage import LmdbStore, LogEntry, RawLogEntry, RemoteOutcome
from crdtstore.v1 import replication_pb2 as rpb

__all__ = ["PROTOCOL_VERSION", "SYNC_METHOD", "ProtocolError", "Replicator"]

log = logging.getLogger("crdtstore.replication")

PROTOCOL_VERSION = 1
SYNC_METHOD = "/crdtstore.v1.Replication/Sync"
_TRIM_BUDGET = 10_000


class ProtocolError(Exception):
    """A peer sent something the protocol does not allow; the stream is closed."""


@dataclass
class _Link:
    name: str
    address: str
    epoch: int = 0
    queue: asyncio.Queue[rpb.SyncMessage] | None = None
    session: asyncio.Task[Any] | None = None
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    clock_offset_ms: int | None = None
    greeted: bool = False  # the current stream's hello arrived
    transfer: asyncio.Task[Any] | None = None  # a state transfer to this peer, while it runs
    entries_received: int = 0
    entries_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class Replicator:
    def __init__(
        self,
        config: NodeConfig,
        store: LmdbStore,
        writer: GroupCommitWriter,
        clock: HybridLogicalClock,
        *,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.settings = config.replication
        self.store = store
        self.writer = writer
        self.clock = clock
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.core = ReplicaCore(
            config.region,
            config.peers,
            store.context.vv,
            batch_window_ms=self.settings.batch_window_ms,
            anti_entropy_ms=self.settings.anti_entropy_ms,
            trimmed=store.log_horizon,
        )
        self.links = {name: _Link(name, address) for name, address in sorted(config.peers.items())}
        self._horizon = store.log_horizon
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.skew_events = 0
        # The most events of this region any peer has said it holds.
        self._own_events_seen = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._tick_loop(), "tick")
        for name, link in self.links.items():
            if self.config.region < name:
                self._spawn(self._dial_loop(link), f"dial {name}")

    async def close(self) -> None:
        """Stop dialling and ticking, end every stream, and release every waiter."""
        self._closing = True
        tasks = list(self._tasks)
        tasks += [link.session for link in self.links.values() if link.session is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(asyncio.CancelledError())
        self._waiters.clear()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"crdtstore-replication {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what the services ask -------------------------------------------------------

    def local_committed(self) -> None:
        """A client write committed: push it after the batching window, and wake waiters."""
        self.core.local_committed(self.store.context.vv)
        if self.links:
            self._dirty.set()
        if self.store.log_horizon != self._horizon:
            self._horizon = self.store.log_horizon
            self._note_repairs(self.core.log_trimmed(self._horizon))
        self._notify()

    def has_seen(self, vector: VersionVector) -> bool:
        return self.store.context.vv.dominates(vector)

    def replicas_with(self, vector: VersionVector) -> int:
        """How many regions, this one included, have acknowledged everything in ``vector``."""
        count = 1 if self.has_seen(vector) else 0
        return count + sum(1 for state in self.core.peers.values() if state.acked.dominates(vector))

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds (checked whenever the vector or an acknowledgement changes)."""
        if predicate():
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
            return True
        except TimeoutError:
            return predicate()
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _notify(self) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)

    def clock_fenced(self) -> bool:
        """True while this node's clock is out of bounds against most of its peers."""
        if not self.links:
            return False
        bound = self.clock.max_offset_ms
        out = sum(
            1
            for link in self.links.values()
            if link.queue is not None and link.clock_offset_ms is not None and abs(link.clock_offset_ms) > bound
        )
        return out * 2 > len(self.links)

    @property
    def lost_own_history(self) -> bool:
        """True while a peer holds events of this region that this node lacks (restored or lost data).

        Writing then would mint event ids the peer already holds for other
        changes. Peers send the events back (they are in their logs), and
        writes resume once this node has them all again.
        """
        return self.store.context.vv.get(self.config.region) < self._own_events_seen

    def connected(self, peer: str) -> bool:
        return self.links[peer].queue is not None

    # -- streams ---------------------------------------------------------------------

    async def _dial_loop(self, link: _Link) -> None:
        backoff_max = self.settings.reconnect_backoff_max_ms / 1000
        delay = min(0.05, backoff_max)
        while not self._closing:
            if await self._dial_once(link):
                delay = min(0.05, backoff_max)  # it worked: start over from a short wait
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, backoff_max)

    async def _dial_once(self, link: _Link) -> bool:
        """One stream to ``link``'s peer, until it breaks; True if the peer answered at all."""
        answered = False
        channel = grpc.aio.insecure_channel(link.address, options=self._channel_options())
        try:
            call: grpc.aio.StreamStreamCall[Any, Any] = channel.stream_stream(
                SYNC_METHOD, request_serializer=rpb.SyncMessage.SerializeToString, response_deserializer=None
            )()

            async def read() -> bytes | None:
                nonlocal answered
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    return None
                answered = True
                assert isinstance(raw, bytes)
                return raw

            await self._session(link, read, call.write, None)
        except grpc.aio.AioRpcError as exc:
            log.debug("stream to %s (%s) ended: %s %s", link.name, link.address, exc.code(), exc.details())
        except (ProtocolError, CodecError) as exc:
            log.warning("stream to %s closed: %s", link.name, exc)
        except Exception:  # whatever it was, the next attempt starts afresh
            log.exception("stream to %s failed", link.name)
        finally:
            await channel.close(grace=None)
        return answered

    def _channel_options(self) -> list[tuple[str, Any]]:
        s = self.settings
        return [
            ("grpc.keepalive_time_ms", s.keepalive_ms),
            ("grpc.keepalive_timeout_ms", s.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", self.config.message_bytes_max),
            ("grpc.max_send_message_length", self.config.message_bytes_max),
            ("grpc.min_reconnect_backoff_ms", s.reconnect_backoff_max_ms),
            ("grpc.max_reconnect_backoff_ms", s.reconnect_backoff_max_ms),
            ("grpc.enable_retries", 0),
        ]

    def server_options(self) -> list[tuple[str, Any]]:
        """Options the gRPC server needs so that peers' keepalive pings are welcome."""
        s = self.settings
        return [
            ("grpc.keepalive_time_ms", s.keepalive_ms),
            ("grpc.keepalive_timeout_ms", s.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", max(100, s.keepalive_ms // 2)),
            ("grpc.http2.min_ping_interval_without_data_ms", max(100, s.keepalive_ms // 2)),
        ]

    async def serve_stream(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The server side of ``Replication.Sync``: the peer's Hello comes first and names it."""
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is shutting down")
        raw = await context.read()
        if raw is grpc.aio.EOF:
            return
        assert isinstance(raw, bytes)
        try:
            first = _parse(raw)
            if first.WhichOneof("body") != "hello":
                raise ProtocolError("the first message of a stream must be a hello")
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        link = self.links.get(first.hello.region)
        if link is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"region {first.hello.region!r} is not a peer of region {self.config.region!r}; "
                f"add it with --peer on both sides",
            )

        async def read() -> bytes | None:
            raw = await context.read()
            if raw is grpc.aio.EOF:
                return None
            assert isinstance(raw, bytes)
            return raw

        try:
            await self._session(link, read, context.write, first)
        except (ProtocolError, CodecError) as exc:
            log.warning("stream from %s closed: %s", link.name, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _session(
        self,
        link: _Link,
        read: Callable[[], Awaitable[bytes | None]],
        write: Callable[[rpb.SyncMessage], Awaitable[None]],
        first: rpb.SyncMessage | None,
    ) -> None:
        if link.session is not None and not link.session.done():
            link.session.cancel()  # the newer stream replaces the older
        link.epoch += 1
        epoch = link.epoch
        queue: asyncio.Queue[rpb.SyncMessage] = asyncio.Queue(self.settings.outbound_messages_max)
        link.queue = queue
        link.session = asyncio.current_task()
        link.greeted = False

        async def pump() -> None:
            while True:
                await write(await queue.get())

        async def receive() -> None:
            await self._run(self.core.connected(link.name))
            if first is not None:
                await self._on_message(link, first)
            while (raw := await read()) is not None:
                await self._on_message(link, _parse(raw))

        pumping = asyncio.ensure_future(pump())
        receiving = asyncio.ensure_future(receive())
        try:
            done, _ = await asyncio.wait({pumping, receiving}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended the stream
        finally:
            for task in (pumping, receiving):
                task.cancel()
            for task in (pumping, receiving):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if link.epoch == epoch:
                link.queue = None
                link.session = None
                self.core.disconnected(link.name)
                if link.greeted:
                    log.info("lost the stream with %s", link.name)

    async def _on_message(self, link: _Link, message: rpb.SyncMessage) -> None:
        if message.sent_wall_ms:
            link.clock_offset_ms = message.sent_wall_ms - self._wall_ms()
        body = message.WhichOneof("body")
        core_message: Message
        if body == "hello":
            hello = message.hello
            if hello.region != link.name:
                raise ProtocolError(f"peer {link.name!r} introduced itself as {hello.region!r}")
            if hello.protocol != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"peer {link.name!r} speaks protocol {hello.protocol}, this node {PROTOCOL_VERSION}"
                )
            vector = decode_as(hello.vector, VersionVector)
            theirs = vector.get(self.config.region)
            mine = self.store.context.vv.get(self.config.region)
            self._own_events_seen = max(self._own_events_seen, theirs)
            if theirs > mine:
                log.error(
                    "peer %s has %d events of region %s, this node only %d: the data directory was restored or "
                    "lost; local writes are refused until the peers have sent the missing events back",
                    link.name,
                    theirs,
                    self.config.region,
                    mine,
                )
            core_message = Hello(hello.region, vector)
            # A transfer from this peer that a broken stream cut short is void.
            await self.writer.call(lambda: self.store.discard_snapshot(link.name))
            link.greeted = True
            log.info("replicating with %s", link.name)
        elif body == "entries":
            raw_entries: list[RawLogEntry] = []
            top: dict[str, int] = {}
            for e in message.entries.entries:
                if not e.origin or e.first < 1 or e.last < e.first:
                    raise ProtocolError(f"a log entry {e.origin!r}:{e.first}..{e.last} is malformed")
                raw_entries.append(RawLogEntry(e.origin, e.first, e.last, e.delta))
                top[e.origin] = max(top.get(e.origin, 0), e.last)
                link.bytes_received += len(e.delta)
            core_message = Entries(tuple(raw_entries), VersionVector(top))
        elif body == "ack":
            core_message = Ack(decode_as(message.ack.vector, VersionVector))
        elif body == "snapshot":
            await self._receive_snapshot(link, message.snapshot)
            self._notify()
            return
        else:
            raise ProtocolError("a message with no body")
        await self._run(self.core.received(link.name, core_message))
        # Acks, and entries a peer sends (it has them), both tell what the peer has.
        self._notify()

    # -- carrying out the core's actions --------------------------------------------

    async def _run(self, actions: list[Action]) -> None:
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, Send):
                await self._send(action.peer, _message_pb(action.message))
            elif isinstance(action, SendLog):
                await self._send_log(action.peer, action.after)
            elif isinstance(action, Apply):
                await self._apply(action.peer, action.entries)
                pending.extend(self.core.applied(action.peer, self.store.context.vv))
                self._dirty.set()  # relay what is new to the other peers
                self._notify()
            elif isinstance(action, Trim):
                await self._trim(action.vector)
            elif isinstance(action, NeedsRepair):
                self._note_repairs([action])

    async def _send(
        self, peer: str, message: rpb.SyncMessage, stream: asyncio.Queue[rpb.SyncMessage] | None = None
    ) -> bool:
        """Queue ``message`` on ``peer``'s stream; with ``stream``, only if that stream is still the current one.

        A message prepared for a stream that has since been replaced must not
        go out on the new one before its hello. Returns whether it was queued.
        """
        queue = self.links[peer].queue
        if queue is None or (stream is not None and queue is not stream):
            return False  # the peer learns everything at its next hello
        message.sent_wall_ms = self._wall_ms()
        await queue.put(message)
        return True

    async def _send_log(self, peer: str, after: VersionVector) -> None:
        link = self.links[peer]
        async with link.send_lock:
            stream = link.queue
            if stream is None:
                return
            # Entries the core's view now covers went out while this waited.
            after = after.join(self.core.peers[peer].sent)
            entries, reached = await asyncio.to_thread(self.store.log_since, after, self.settings.message_bytes_max)
            if not entries:
                return
            message = rpb.SyncMessage()
            for e in entries:
                message.entries.entries.add(origin=e.origin, first=e.first, last=e.last, delta=e.delta)
            if not await self._send(peer, message, stream):
                return
            link.entries_sent += len(entries)
            link.bytes_sent += sum(len(e.delta) for e in entries)
            self.core.sent(peer, reached)
            if not self.core.peers[peer].sent.dominates(self.core.vector):
                self._dirty.set()  # more than one message's worth: go on at the next tick

    async def _apply(self, peer: str, entries: tuple[object, ...]) -> None:
        raw = [e for e in entries if isinstance(e, RawLogEntry)]
        store, clock = self.store, self.clock

        def apply() -> tuple[int, int, bool]:
            # On the writer thread: decoding checks every invariant of the
            # delta, and the clock belongs to this thread.
            decoded = [LogEntry(e.origin, e.first, e.last, peer, decode_as(e.delta, StoreMap)) for e in raw]
            outcomes = store.apply_remote(decoded, source=peer)
            applied = skews = 0
            gap = False
            for entry, outcome in zip(decoded, outcomes, strict=True):
                gap = gap or outcome is RemoteOutcome.GAP
                if outcome is not RemoteOutcome.APPLIED:
                    continue
                applied += 1
                latest = entry.delta.latest_timestamp()
                if latest is not None and clock.receive(latest) is not None:
                    skews += 1
            return applied, skews, gap

        applied, skews, gap = await self.writer.call(apply)
        self.links[peer].entries_received += applied
        if skews:
            self.skew_events += skews
            log.warning(
                "%d register timestamp(s) from %s are more than %d ms ahead of this clock: applied, "
                "but the clock did not follow them",
                skews,
                peer,
                self.clock.max_offset_ms,
            )
        if self.store.log_horizon != self._horizon:
            self._horizon = self.store.log_horizon
            self._note_repairs(self.core.log_trimmed(self._horizon))
        if gap:
            # Entries arrived before something they depend on: both sides
            # start over from a hello, and the peer resends in causal order.
            raise ProtocolError(f"entries from {peer} arrived out of causal order; resynchronising")

    async def _trim(self, upto: VersionVector) -> None:
        store = self.store
        while await self.writer.call(lambda: store.trim_log(upto, _TRIM_BUDGET)) >= _TRIM_BUDGET:
            pass
        self._horizon = self.store.log_horizon

    def _note_repairs(self, actions: list[Action]) -> None:
        for action in actions:
            if not isinstance(action, NeedsRepair):
                continue
            link = self.links[action.peer]
            if link.transfer is None or link.transfer.done():
                log.warning(
                    "peer %s lacks entries this node has trimmed from its log (it has %s): sending it a state transfer",
                    action.peer,
                    action.vector,
                )
                link.transfer = self._spawn(self._send_snapshot(link), f"transfer to {link.name}")

    async def _send_snapshot(self, link: _Link) -> None:
        """Send ``link``'s peer every key's state from one consistent read, then the context of that read."""
        pages: queue.Queue[tuple[list[tuple[str, bytes]], CausalContext | None] | None] = queue.Queue(maxsize=2)
        stop = threading.Event()
        bytes_max = self.settings.message_bytes_max

        def deliver(page: list[tuple[str, bytes]], context: CausalContext | None) -> bool:
            while not stop.is_set():
                try:
                    pages.put((page, context), timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                self.store.read_snapshot(bytes_max, deliver)
            finally:
                with contextlib.suppress(queue.Full):
                    pages.put_nowait(None)

        stream = link.queue
        if stream is None:
            return  # not connected: its next hello asks again
        reader = asyncio.ensure_future(asyncio.to_thread(read))
        keys = sent_bytes = 0
        try:
            while True:
                item = await asyncio.to_thread(pages.get)
                if item is None:
                    raise ProtocolError("the snapshot read ended early")
                page, context = item
                message = rpb.SyncMessage()
                for key, body in page:
                    message.snapshot.keys.add(key=key, state=body)
                    sent_bytes += len(body)
                keys += len(page)
                if context is not None:
                    message.snapshot.done = True
                    message.snapshot.context = encode(context)
                if not await self._send(link.name, message, stream):
                    return  # the stream broke: the next hello starts over
                if context is not None:
                    log.info("sent %s a state transfer of %d keys, %d bytes", link.name, keys, sent_bytes)
                    return
        except Exception:
            log.exception("state transfer to %s failed", link.name)
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    pages.get_nowait()
            await reader

    async def _receive_snapshot(self, link: _Link, snapshot: rpb.SyncSnapshot) -> None:
        keys = [(k.key, k.state) for k in snapshot.keys]
        store = self.store
        await self.writer.call(lambda: store.stage_snapshot(link.name, keys))
        if not snapshot.done:
            return
        context = decode_as(snapshot.context, CausalContext)
        changed = await self.writer.call(lambda: store.finish_snapshot(link.name, context))
        log.info("joined a state transfer from %s: %d keys changed", link.name, changed)
        self._dirty.set()
        actions = self.core.applied(link.name, self.store.context.vv)
        self._horizon = self.store.log_horizon
        self._note_repairs(self.core.log_trimmed(self._horizon))
        await self._run(actions)

    async def _tick_loop(self) -> None:
        anti_entropy_s = self.settings.anti_entropy_ms / 1000
        window_s = self.settings.batch_window_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), anti_entropy_s)
            except TimeoutError:
                pass
            else:
                await asyncio.sleep(window_s)  # let more writes join the push
            self._dirty.clear()
            try:
                await self._run(self.core.tick(self._wall_ms()))
            except Exception:  # one bad round must not stop replication
                log.exception("replication round failed")


def _parse(raw: bytes) -> rpb.SyncMessage:
    try:
        return rpb.SyncMessage.FromString(raw)
    except Exception as exc:
        raise ProtocolError(f"a replication message that does not parse: {exc}") from None


def _message_pb(message: Message) -> rpb.SyncMessage:
    out = rpb.SyncMessage()
    if isinstance(message, Hello):
        out.hello.region = message.region
        out.hello.vector = encode(message.vector)
        out.hello.protocol = PROTOCOL_VERSION
    elif isinstance(message, Ack):
        out.ack.vector = encode(message.vector)
    else:
        for e in message.entries:
            assert isinstance(e, RawLogEntry)
            out.entries.entries.add(origin=e.origin, first=e.first, last=e.last, delta=e.delta)
    return out
