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

Clocks: every message carries the sender's physical clock, and echoes the
last one it received from the peer with how long it held it. From that round
trip each node keeps the last measured offset to each peer and its error
(``crdtstore.node.clocks``): time in queues widens the error, it is not
taken for offset. Remote register timestamps move the hybrid logical clock forward,
except one beyond ``max_clock_offset_ms``: that delta is still applied
(convergence comes first, and causality, not the clock, decides overwrites)
but the clock ignores it, and it is counted and logged. A node whose own
clock is out of bounds against most of its peers, even allowing for each
measurement's error, refuses local writes until it is back in bounds
(CockroachDB fences a node the same way), because every register it wrote
would win or lose by its wrong clock.

Messages: ``crdtstore.node.wire`` translates between the stream's protobuf
and the core's messages.

Waiting: causal-token reads and ``replicated:N`` writes wait for conditions
on the node's vector and its peers' acknowledgements. Waiters are checked
whenever either changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import msgpack

from crdtstore.crdt import CausalContext, CodecError, HybridLogicalClock, VersionVector, decode_as, encode
from crdtstore.node.clocks import clock_sample
from crdtstore.node.config import NodeConfig
from crdtstore.node.waits import VectorWaits
from crdtstore.node.wire import (
    SYNC_METHOD,
    ProtocolError,
    ack_from_pb,
    bitmap_of,
    buckets_of,
    delta_bytes,
    entries_from_pb,
    hello_from_pb,
    message_pb,
    parse,
)
from crdtstore.node.writer import GroupCommitWriter
from crdtstore.replica.core import (
    Action,
    Apply,
    Entries,
    Message,
    NeedsRepair,
    ReplicaCore,
    Send,
    SendLog,
    Trim,
)
from crdtstore.storage import (
    DIGEST_BUCKETS,
    LmdbStore,
    RawLogEntry,
    RemoteOutcome,
    StaleTransfer,
    bucket_of,
)
from crdtstore.v1 import replication_pb2 as rpb

__all__ = ["Replicator"]

log = logging.getLogger("crdtstore.replication")

_TRIM_BUDGET = 10_000
_LARGE_MESSAGE_BYTES = 64 * 1024  # entries that take long enough to apply for the peers to hear of them first
_SPOOL_SUFFIX = ".spool"
_WANT_TIMEOUT_S = 60.0
_STALE_TRANSFERS_MAX = 3


@dataclass
class _Stream:
    """One stream with a peer: what goes out on it, and whether it has ended."""

    queue: asyncio.Queue[rpb.SyncMessage]
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    epoch: int = 0  # the link's stream number
    next_page: int = 0  # the next state-transfer page expected from the peer on this stream
    transfer: int = 0  # state transfers begun by the peer on this stream
    offered_digests: list[int] | None = None  # the peer's bucket digests from its last offer


@dataclass
class _Link:
    name: str
    address: str
    epoch: int = 0
    stream: _Stream | None = None
    session: asyncio.Task[Any] | None = None
    send_task: asyncio.Task[Any] | None = None  # reading and queueing log entries for this peer
    clock_offset_ms: int | None = None  # the peer's clock minus this node's, as last measured
    clock_error_ms: int = 0  # that measurement is right to within this
    offset_at: float = 0.0  # monotonic time of that measurement
    # The last message from the peer on this stream: its sent_wall_ms, and when it arrived (monotonic).
    peer_sent_wall_ms: int = 0
    peer_received_at: float = 0.0
    greeted: bool = False  # the current stream's hello arrived
    transfer: asyncio.Task[Any] | None = None  # a state transfer to this peer, while it runs
    transfers_sent: int = 0
    want: asyncio.Future[frozenset[int]] | None = None  # the peer's answer to a digest offer
    stale_transfers: int = 0  # transfers from this peer refused in a row; past a few, ask for every bucket


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
            relay_delay_ms=self.settings.relay_delay_ms,
            trimmed=store.log_horizon,
            clock=_monotonic_ms,
            origin=store.origin,
        )
        self.links = {name: _Link(name, address) for name, address in sorted(config.peers.items())}
        self._tls = config.tls.read() if config.tls.enabled else None
        self._horizon = store.log_horizon
        sources: dict[str, Callable[[], VersionVector]] = {config.region: lambda: self.store.context.vv}
        for peer in sorted(config.peers):
            sources[peer] = functools.partial(self._acked_by, peer)
        self._waits = VectorWaits(sources)
        self._dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._stopping = asyncio.Event()  # set by close(): every stream session returns
        self.skew_events = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        # Spools of state transfers a killed process left behind.
        for stale in Path(self.config.data_dir).glob(f"transfer-*{_SPOOL_SUFFIX}"):
            stale.unlink(missing_ok=True)
        self._spawn(self._tick_loop(), "tick")
        for name, link in self.links.items():
            if self.config.region < name:
                self._spawn(self._dial_loop(link), f"dial {name}")

    async def close(self) -> None:
        """Stop dialling and ticking, end every stream, and release every waiter."""
        self._closing = True
        self._stopping.set()
        # Streams peers opened end by returning from their handlers, so that
        # the server sees those calls finish and does not wait out its grace
        # period for them. (A handler task cancelled from outside leaves its
        # call open.)
        inbound = [
            link.session
            for link in self.links.values()
            if link.session is not None and link.session not in self._tasks and not link.session.done()
        ]
        if inbound:
            await asyncio.wait(inbound, timeout=2.0)
        tasks = list(self._tasks)
        tasks += [link.session for link in self.links.values() if link.session is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._waits.cancel_all()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"crdtstore-replication {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what the services ask -------------------------------------------------------

    def local_committed(self) -> None:
        """A client write committed: push it after the batching window, and wake waiters."""
        self.core.origin = self.store.origin  # storage may have taken a new incarnation in that commit
        self.core.local_committed(self.store.context.vv)
        if self.links:
            self._dirty.set()
        self._check_horizon()
        self._notify()

    def _check_horizon(self) -> None:
        """Tell the core when storage trimmed its log further (by acknowledgement, bytes, or a transfer)."""
        if self.store.log_horizon != self._horizon:
            self._horizon = self.store.log_horizon
            self._start_repairs(self.core.log_trimmed(self._horizon))

    async def wait_seen(self, vector: VersionVector, timeout_s: float) -> bool:
        """Wait until this region has everything ``vector`` covers; False if ``timeout_s`` passes first."""
        return await self._waits.wait(vector, 1, timeout_s, among=(self.config.region,))

    async def wait_replicated(self, vector: VersionVector, regions: int, timeout_s: float) -> bool:
        """Wait until ``regions`` regions, this one included, have acknowledged ``vector``."""
        return await self._waits.wait(vector, regions, timeout_s)

    def _acked_by(self, peer: str) -> VersionVector:
        return self.core.peers[peer].acked

    def _notify(self) -> None:
        self._waits.changed()

    def clock_fenced(self) -> bool:
        """True while this node's clock is out of bounds against most of its peers."""
        if not self.links:
            return False
        bound = self.clock.max_offset_ms
        # Idle streams carry a heartbeat every anti-entropy period; older measurements do not count.
        fresh_after = time.monotonic() - 3 * self.settings.anti_entropy_ms / 1000
        out = sum(
            1
            for link in self.links.values()
            if link.stream is not None
            and link.clock_offset_ms is not None
            and link.offset_at >= fresh_after
            # Out of bounds even if the measurement erred as far as it can the other way.
            and abs(link.clock_offset_ms) - link.clock_error_ms > bound
        )
        return out * 2 > len(self.links)

    def connected(self, peer: str) -> bool:
        return self.links[peer].stream is not None

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
        channel = self._open_channel(link)
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

    def _open_channel(self, link: _Link) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(link.address, options=self._channel_options())
        cert, key, ca = self._tls
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        # The peer's certificate must name its region, whatever address it is dialled at.
        options = [*self._channel_options(), ("grpc.ssl_target_name_override", link.name)]
        return grpc.aio.secure_channel(link.address, credentials, options=options)

    def _keepalive_options(self) -> list[tuple[str, Any]]:
        s = self.settings
        return [
            ("grpc.keepalive_time_ms", s.keepalive_ms),
            ("grpc.keepalive_timeout_ms", s.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def _channel_options(self) -> list[tuple[str, Any]]:
        s = self.settings
        return [
            *self._keepalive_options(),
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
            *self._keepalive_options(),
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
            first = parse(raw)
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
        if self.config.tls.require_client_cert and not _certificate_names(context, link.name):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client certificate does not name region {link.name!r}; a peer's certificate must carry "
                f"its region name as a DNS subject alternative name or common name",
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
        stream = _Stream(asyncio.Queue(self.settings.outbound_messages_max), epoch=epoch)
        link.stream = stream
        link.session = asyncio.current_task()
        link.greeted = False
        link.peer_sent_wall_ms = 0

        async def pump() -> None:
            while True:
                message = await stream.queue.get()
                message.sent_wall_ms = self._wall_ms()  # when it leaves, not when it was queued
                if link.peer_sent_wall_ms:
                    message.echo_wall_ms = link.peer_sent_wall_ms
                    message.echo_held_ms = round((time.monotonic() - link.peer_received_at) * 1000)
                await write(message)

        async def receive() -> None:
            await self._run(self.core.connected(link.name))
            if first is not None:
                await self._on_message(link, first)
            while (raw := await read()) is not None:
                await self._on_message(link, parse(raw))

        pumping = asyncio.ensure_future(pump())
        receiving = asyncio.ensure_future(receive())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({pumping, receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended the stream
        finally:
            stream.ended.set()  # wakes anything waiting to queue on this stream
            for task in (pumping, receiving, stopping):
                task.cancel()
            for task in (pumping, receiving, stopping):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if link.epoch == epoch:
                link.stream = None
                link.session = None
                self.core.disconnected(link.name)
                if link.greeted:
                    log.info("lost the stream with %s", link.name)

    def _measure_clock(self, link: _Link, message: rpb.SyncMessage) -> None:
        if not message.sent_wall_ms:
            return
        link.peer_sent_wall_ms = message.sent_wall_ms  # echoed back with the next message to the peer
        link.peer_received_at = time.monotonic()
        if message.echo_wall_ms:
            sample = clock_sample(message.echo_wall_ms, message.echo_held_ms, message.sent_wall_ms, self._wall_ms())
            if sample is not None:
                link.clock_offset_ms, link.clock_error_ms = sample
                link.offset_at = link.peer_received_at

    async def _on_message(self, link: _Link, message: rpb.SyncMessage) -> None:
        self._measure_clock(link, message)
        body = message.WhichOneof("body")
        core_message: Message
        if body == "hello":
            core_message = hello = hello_from_pb(message.hello, link.name)
            self.store.peer_holds(link.name, hello.vector)
            # A transfer from this peer that a broken stream cut short is void.
            await self.writer.call(lambda: self.store.discard_snapshot(link.name))
            link.greeted = True
            log.info("replicating with %s", link.name)
        elif body == "entries":
            core_message = entries_from_pb(message.entries)
        elif body == "ack":
            core_message = ack_from_pb(message.ack)
        elif body == "snapshot":
            await self._receive_snapshot(link, message.snapshot)
            self._notify()
            return
        elif body == "digests":
            stream = link.stream
            assert stream is not None, "messages arrive only on a live stream"
            # Hashing our state takes a moment: off the receive loop, which must keep reading.
            self._spawn(self._answer_digests(link, stream, message.digests.digests), f"digests for {link.name}")
            return
        elif body == "want":
            if link.want is not None and not link.want.done():
                link.want.set_result(buckets_of(message.want.buckets))
            return
        else:
            raise ProtocolError("a message with no body")
        await self._run(self.core.received(link.name, core_message))
        # Acks, and entries a peer sends (it has them), both tell what the peer has.
        self._notify()

    # -- carrying out the core's actions --------------------------------------------

    async def _run(self, actions: list[Action]) -> None:
        """Carry out the core's actions. Never waits on the network: a slow peer must not stall the others.

        Messages are queued without waiting (an Ack that finds the queue full
        is dropped: a later one supersedes it, and anti-entropy asks again);
        log and state transfers run as one task per peer that waits for room.
        Only persisting (on the writer thread) is awaited, since it comes first.
        """
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, Send):
                self._send_now(action.peer, message_pb(action.message))
            elif isinstance(action, SendLog):
                self._start_send_log(action)
            elif isinstance(action, Apply):
                if delta_bytes(action.entries) > _LARGE_MESSAGE_BYTES:
                    # A tick while it applies tells the peers what is on its way (the core's incoming hint).
                    self._dirty.set()
                await self._apply(action.peer, action.entries)
                pending.extend(self.core.applied(action.peer, self.store.context.vv))
                self._dirty.set()  # relay what is new to the other peers
                self._notify()
            elif isinstance(action, Trim):
                await self._trim(action.vector)
            elif isinstance(action, NeedsRepair):
                self._start_repairs([action])

    def _send_now(self, peer: str, message: rpb.SyncMessage) -> bool:
        stream = self.links[peer].stream
        if stream is None:
            return False  # the peer learns everything at its next hello
        try:
            stream.queue.put_nowait(message)
        except asyncio.QueueFull:
            log.debug("the stream to %s is full; dropped a %s", peer, message.WhichOneof("body"))
            return False
        return True

    async def _put(self, stream: _Stream, message: rpb.SyncMessage) -> bool:
        """Queue ``message`` on ``stream``, waiting for room; False if the stream ends first."""
        if stream.ended.is_set():
            return False
        put = asyncio.ensure_future(stream.queue.put(message))
        ended = asyncio.ensure_future(stream.ended.wait())
        try:
            await asyncio.wait({put, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not put.done():
                put.cancel()
        return put.done() and not put.cancelled()

    def _start_send_log(self, action: SendLog) -> None:
        peer, hold_fresh_relays = action.peer, action.hold_fresh_relays
        link = self.links[peer]
        if link.stream is None:
            return
        if link.send_task is not None and not link.send_task.done():
            return  # one at a time; it asks for another round if there is more
        relayed_before_ms = self._wall_ms() - self.settings.relay_delay_ms if hold_fresh_relays else None
        sending = self._send_log(link, link.stream, action.after, relayed_before_ms, action.held)
        link.send_task = self._spawn(sending, f"log to {peer}")

    async def _send_log(
        self,
        link: _Link,
        stream: _Stream,
        after: VersionVector,
        relayed_before_ms: int | None,
        held: VersionVector,
    ) -> None:
        peer = link.name
        # Entries the core's view now covers went out while this waited.
        after = after.join(self.core.peers[peer].sent)
        entries, reached, held_since = await asyncio.to_thread(
            lambda: self.store.log_since(
                after, self.settings.message_bytes_max, relayed_before_ms=relayed_before_ms, held=held
            )
        )
        if not entries and held_since is not None:
            self.core.relay_held(peer, held_since, self._wall_ms())
        if not entries or link.stream is not stream:
            return
        if not await self._put(stream, message_pb(Entries(tuple(entries)))) or link.stream is not stream:
            return  # that stream ended: the next hello starts over
        self.core.sent(peer, reached)
        if not self.core.peers[peer].sent.dominates(self.core.vector):
            self._dirty.set()  # more than one message's worth: go on at the next tick

    async def _apply(self, peer: str, entries: tuple[object, ...]) -> None:
        raw = [e for e in entries if isinstance(e, RawLogEntry)]
        store, clock = self.store, self.clock

        def apply() -> tuple[int, bool]:
            # On the writer thread: decoding is CPU work, and the clock belongs to this thread.
            outcomes, skews = store.apply_raw(raw, peer, clock)
            return skews, RemoteOutcome.GAP in outcomes

        skews, gap = await self.writer.call(apply)
        if skews:
            self.skew_events += skews
            log.warning(
                "%d register timestamp(s) from %s are more than %d ms ahead of this clock: applied, "
                "but the clock did not follow them",
                skews,
                peer,
                self.clock.max_offset_ms,
            )
        self._check_horizon()
        if gap:
            # Entries arrived before something they depend on: both sides
            # start over from a hello, and the peer resends in causal order.
            raise ProtocolError(f"entries from {peer} arrived out of causal order; resynchronising")

    async def _trim(self, upto: VersionVector) -> None:
        store = self.store
        while await self.writer.call(lambda: store.trim_log(upto, _TRIM_BUDGET)) >= _TRIM_BUDGET:
            pass
        self._check_horizon()

    def _start_repairs(self, actions: list[Action]) -> None:
        for action in actions:
            if not isinstance(action, NeedsRepair):
                continue
            link = self.links[action.peer]
            if link.stream is None or (link.transfer is not None and not link.transfer.done()):
                continue  # not connected (its hello asks again), or one is on its way
            log.warning(
                "peer %s lacks entries this node has trimmed from its log (it has %s): sending it a state transfer",
                action.peer,
                action.vector,
            )
            link.transfer = self._spawn(self._send_snapshot(link, link.stream), f"transfer to {link.name}")

    async def _send_snapshot(self, link: _Link, stream: _Stream) -> None:
        """Repair ``link``'s peer: the keys of every bucket whose digest differs, from one consistent read.

        The read is spooled to a file in the data directory first, so no read
        transaction stays open while the peer takes its time. Then the
        bucket digests go out, the peer answers which buckets differ, and
        only their keys follow, the last page with the context of the read.
        """
        link.transfers_sent += 1
        path = Path(self.config.data_dir) / f"transfer-{link.name}-{link.transfers_sent}{_SPOOL_SUFFIX}"
        try:
            context, count, digests = await asyncio.to_thread(self.store.spool_snapshot, path)
            buckets = await self._ask_which_buckets(link, stream, digests)
            if buckets is None:
                return  # the stream ended or the peer did not answer: the next round asks again
            sent = await self._send_pages(stream, path, buckets, context)
            if sent is not None:
                log.info(
                    "repaired %s: %d of %d buckets differed; sent %d of %d keys, %d bytes",
                    link.name,
                    len(buckets),
                    DIGEST_BUCKETS,
                    sent[0],
                    count,
                    sent[1],
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("repairing %s failed; the next anti-entropy round asks again", link.name)
        finally:
            link.want = None
            path.unlink(missing_ok=True)

    async def _ask_which_buckets(self, link: _Link, stream: _Stream, digests: list[int]) -> frozenset[int] | None:
        want: asyncio.Future[frozenset[int]] = asyncio.get_running_loop().create_future()
        link.want = want
        offer = rpb.SyncMessage()
        offer.digests.digests = b"".join(d.to_bytes(16, "big") for d in digests)
        if not await self._put(stream, offer):
            return None
        ended: asyncio.Future[Any] = asyncio.ensure_future(stream.ended.wait())
        waiting: set[asyncio.Future[Any]] = {want, ended}
        try:
            await asyncio.wait(waiting, timeout=_WANT_TIMEOUT_S, return_when=FIRST_COMPLETED)
        finally:
            ended.cancel()
        return want.result() if want.done() and not want.cancelled() else None

    async def _send_pages(
        self, stream: _Stream, path: Path, buckets: frozenset[int], context: CausalContext
    ) -> tuple[int, int] | None:
        """Send the spooled keys of ``buckets`` in pages; (keys, bytes) sent, or None if the stream ended."""
        bytes_max = self.settings.message_bytes_max
        with path.open("rb") as spool:
            unpacker = msgpack.Unpacker(spool, raw=False, max_buffer_size=self.config.message_bytes_max)

            def next_page() -> tuple[list[tuple[str, bytes]], bool]:
                page: list[tuple[str, bytes]] = []
                size = 0
                for key, body in unpacker:
                    if bucket_of(key) not in buckets:
                        continue
                    page.append((key, body))
                    size += len(key) + len(body)
                    if size >= bytes_max:
                        return page, False
                return page, True

            number = sent_keys = sent_bytes = 0
            while True:
                page, last = await asyncio.to_thread(next_page)
                message = rpb.SyncMessage()
                message.snapshot.page = number
                for key, body in page:
                    message.snapshot.keys.add(key=key, state=body)
                    sent_bytes += len(body)
                sent_keys += len(page)
                if last:
                    message.snapshot.done = True
                    message.snapshot.context = encode(context)
                    message.snapshot.buckets = bitmap_of(buckets)
                if not await self._put(stream, message):
                    return None  # the stream ended: the peer's next hello asks again
                number += 1
                if last:
                    return sent_keys, sent_bytes

    async def _answer_digests(self, link: _Link, stream: _Stream, digests: bytes) -> None:
        """A peer offers a repair: tell it which buckets differ from ours."""
        if len(digests) != 16 * DIGEST_BUCKETS:
            log.warning("%s offered %d bytes of digests, not %d; ignored", link.name, len(digests), 16 * DIGEST_BUCKETS)
            return
        theirs = [int.from_bytes(digests[16 * i : 16 * (i + 1)], "big") for i in range(DIGEST_BUCKETS)]
        stream.offered_digests = theirs  # the skipped buckets must still match when the transfer is joined
        if link.stale_transfers >= _STALE_TRANSFERS_MAX:
            # Comparisons keep going stale before they can be joined (this
            # region keeps changing): ask for every bucket, which needs none.
            differ = frozenset(range(DIGEST_BUCKETS))
        else:
            mine = await asyncio.to_thread(self.store.bucket_digests)
            differ = frozenset(i for i in range(DIGEST_BUCKETS) if mine[i] != theirs[i])
        answer = rpb.SyncMessage()
        answer.want.buckets = bitmap_of(differ)
        await self._put(stream, answer)

    async def _receive_snapshot(self, link: _Link, snapshot: rpb.SyncSnapshot) -> None:
        stream = link.stream
        assert stream is not None, "messages arrive only on a live stream"
        store = self.store
        if snapshot.page == 0:  # a new transfer: whatever an earlier one left is void
            await self.writer.call(lambda: store.discard_snapshot(link.name))
            stream.next_page = 0
            stream.transfer += 1
        if snapshot.page != stream.next_page:
            raise ProtocolError(f"state transfer page {snapshot.page} arrived, {stream.next_page} was expected")
        stream.next_page += 1
        keys = [(k.key, k.state) for k in snapshot.keys]
        transfer = stream.epoch * 1_000_000 + stream.transfer  # unique per stream and transfer
        if keys:
            await self.writer.call(lambda: store.stage_snapshot(link.name, transfer, keys))
        if not snapshot.done:
            return
        context = decode_as(snapshot.context, CausalContext)
        covered = buckets_of(snapshot.buckets)
        expected = stream.offered_digests
        try:
            changed = await self.writer.call(
                lambda: store.finish_snapshot(link.name, transfer, context, covered, expected)
            )
        except StaleTransfer as exc:
            await self.writer.call(lambda: store.discard_snapshot(link.name))
            link.stale_transfers += 1
            log.info("set aside a state transfer from %s (%s); the next round compares again", link.name, exc)
            return
        link.stale_transfers = 0
        log.info("joined a state transfer from %s: %d keys changed", link.name, changed)
        self._dirty.set()
        actions = self.core.applied(link.name, self.store.context.vv)
        self._check_horizon()
        await self._run(actions)

    async def _tick_loop(self) -> None:
        anti_entropy_s = self.settings.anti_entropy_ms / 1000
        window_s = self.settings.batch_window_ms / 1000
        pending = False
        while True:
            if pending:
                # Something waits for its batching window: a write after a
                # quiet spell goes at once, the ones right behind it together.
                await asyncio.sleep(window_s)
            else:
                try:
                    await asyncio.wait_for(self._dirty.wait(), anti_entropy_s)
                except TimeoutError:
                    # Quiet: a heartbeat keeps each peer's view of this
                    # node's vector and of its clock fresh.
                    for name in self.links:
                        self._send_now(name, message_pb(self.core.heartbeat(name)))
            self._dirty.clear()
            if self.store.context.vv != self.core.vector:
                # A write committed whose caller went away before telling us (a cancelled request).
                self.local_committed()
            try:
                # The core's timers run on monotonic time: a wall clock stepped back must not stall them.
                await self._run(self.core.tick(_monotonic_ms()))
            except Exception:  # one bad round must not stop replication
                log.exception("replication round failed")
            pending = any(
                state.connected and not state.needs_repair and not state.sent.dominates(self.core.vector)
                for state in self.core.peers.values()
            )


def _certificate_names(context: grpc.aio.ServicerContext[Any, Any], region: str) -> bool:
    """Whether the caller's verified certificate names ``region``."""
    auth = context.auth_context()
    names = [*auth.get("x509_subject_alternative_name", []), *auth.get("x509_common_name", [])]
    return region.encode() in names


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000
