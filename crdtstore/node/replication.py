"""The node's host of the replication driver: gRPC streams, the writer thread, the event loop's clock.

The protocol itself (what to send and when, relay holds, heartbeats,
trimming, state transfer) is the driver's (``crdtstore.replica.driver``),
the same code the simulator and the benchmarks run. This module feeds it
events from the streams and a monotonic clock, and carries out each
``Ready``: storage jobs that write run on the writer thread (one
transaction, and one fsync, each), the others on a worker thread; messages
go onto each peer's stream; the next tick is scheduled when the driver asks.

Streams: each pair of regions keeps one bidirectional ``Replication.Sync``
stream, opened by the region whose name sorts first and reopened with
bounded, jittered backoff when it breaks. gRPC keepalive pings detect a peer
that vanished without closing its connection. If a second stream for the same
peer arrives (the peer reconnected before this side noticed the old one
died), the newer one replaces the older. A peer's messages are read one at a
time: the next is read once what the last one asked to persist is durable.
Messages out wait in a queue per stream; an ack that finds it full is dropped
(a later one supersedes it), and a job that makes a large message waits for
room, so a slow peer holds up nobody else.

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

Messages: ``crdtstore.replica.wire`` translates between the stream's
protobuf and the driver's messages.

Access: with access control on, a peer that opens a stream must be
authenticated, by a client certificate that names its region (mutual TLS) or
by a token with the right ``replicate`` on every key, which a dialling node
presents from ``auth.peer_token_file`` or ``CRDTSTORE_PEER_TOKEN``. The
answering node presents its own token the same way, in the stream's initial
metadata, and without TLS (which authenticates it by its certificate) the
dialling node checks it before it takes anything from the stream: whoever
answers at a peer's address cannot feed this node data, or rules, unless it
holds ``replicate``. Either side ends the stream when the other's token
expires or is revoked, or the certificate expires: a session checks again
whenever the rules change and at the expiry.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from crdtstore.auth.policy import EVERY_KEY, Need
from crdtstore.auth.tokens import Principal
from crdtstore.crdt import CodecError, HybridLogicalClock, VersionVector
from crdtstore.node import tracing
from crdtstore.node.access import AccessControl, Refusal, bearer_token
from crdtstore.node.audit import AuditHeads
from crdtstore.node.clocks import PeerClock
from crdtstore.node.config import ConfigError, NodeConfig
from crdtstore.node.convergence import ConvergenceChecks
from crdtstore.node.lag import CommitLag
from crdtstore.node.metrics import NodeMetrics
from crdtstore.node.rejoin import RejoinGate
from crdtstore.node.requests import set_principal
from crdtstore.node.streams import (
    certificate_expiry,
    certificate_names,
    open_channel,
    server_options,
    sync_call,
)
from crdtstore.node.waits import ChangeSignal, VectorWaits
from crdtstore.node.writer import GroupCommitWriter
from crdtstore.replica.core import ReplicaCore
from crdtstore.replica.driver import Driver, Job, Ready
from crdtstore.replica.wire import Ack, Hello, Offer, Page, ProtocolError, parse, to_pb
from crdtstore.storage import LmdbStore
from crdtstore.storage.backup import clear_rejoin, rejoin_pending
from crdtstore.storage.replication import ReplicaStore
from crdtstore.v1 import replication_pb2 as rpb

__all__ = ["Replicator"]

if TYPE_CHECKING:
    from crdtstore.node.audit import StreamRefusals

log = logging.getLogger("crdtstore.replication")

_NEVER = 1 << 62
# How long a dialling node waits for the answering node's token (sent before anything else) when it needs one.
_PEER_TOKEN_WAIT_S = 10.0


@dataclass
class _Stream:
    """One stream with a peer: what goes out on it, and whether it has ended."""

    queue: asyncio.Queue[rpb.SyncMessage] = field(default_factory=asyncio.Queue)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set when the pump takes a message
    # Set when a newer stream with the same peer replaces this one: its session returns.
    replaced: asyncio.Event = field(default_factory=asyncio.Event)
    # Why the driver asked to close it (the peer broke the protocol).
    closed: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class _Link:
    name: str
    address: str
    epoch: int = 0
    stream: _Stream | None = None
    session: asyncio.Task[Any] | None = None
    clock: PeerClock = field(default_factory=PeerClock)
    # Why the peer last refused this node's stream (its token or certificate): logged once, not at every redial.
    refused: str = ""

    @property
    def clock_offset_ms(self) -> int | None:
        return self.clock.offset_ms

    @property
    def clock_error_ms(self) -> int:
        return self.clock.error_ms


class Replicator:
    def __init__(
        self,
        config: NodeConfig,
        store: LmdbStore,
        writer: GroupCommitWriter,
        clock: HybridLogicalClock,
        *,
        wall_ms: Callable[[], int] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics  # None when metrics are off
        self.lag = CommitLag(config.peers, metrics.replication_lag, time.monotonic) if metrics is not None else None
        if metrics is not None:
            for peer in config.peers:  # each peer's series from the start, at 0
                metrics.replication_lag.labels(peer)
                metrics.replication_sent_bytes.labels(peer)
                metrics.replication_received_bytes.labels(peer)
        self.convergence = (
            ConvergenceChecks(store, metrics, config.peers, config.replication.convergence_check_ms / 1000)
            if metrics is not None
            else None
        )
        self.settings = config.replication
        self.store = store
        self.writer = writer
        self.clock = clock
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        # Audit chain heads, compared with every peer's on acknowledgements (with or without metrics).
        self.audit_heads = AuditHeads(store, metrics, config.replication.audit_heads_ms / 1000, self._wall_ms)
        self.storage = ReplicaStore(store, clock, Path(config.data_dir))
        self.driver = Driver(config.region, sorted(config.peers), self.storage, self.settings)
        self.links = {name: _Link(name, address) for name, address in sorted(config.peers.items())}
        # Every region of the mesh, this one included: a peer token whose subject is one of them speaks for it alone.
        self._regions = frozenset([config.region, *config.peers])
        self._tls = config.tls.read() if config.tls.enabled else None
        sources: dict[str, Callable[[], VersionVector]] = {config.region: lambda: self.store.context.vv}
        for peer in sorted(config.peers):
            sources[peer] = functools.partial(self._acked_by, peer)
        self._waits = VectorWaits(sources)
        # Woken with the waits: the change feed's streams wait on it for the store's next change.
        self.changes = ChangeSignal()
        self._context_signalled = store.context
        self._wake = asyncio.Event()  # the driver wants a tick sooner than the tick loop planned
        self._wake_at_ms = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._stopping = asyncio.Event()  # set by close(): every stream session returns
        # Checks the peers that open streams, and hears of every write a peer's entries made.
        self.access: AccessControl | None = None
        self.stream_refusals: StreamRefusals | None = None  # refused streams to the audit trail (node.audit)
        self._peer_token_problem = ""  # why this node's peer token could not be read, last time it was asked
        # A directory laid down by ``crdtstore restore`` takes no writes until its peers have filled it in.
        self.rejoin = RejoinGate(config.peers, rejoin_pending(store), self._rejoin_over)

    @property
    def core(self) -> ReplicaCore:
        """What each peer has acknowledged, and how far behind it is (the status page reads it)."""
        return self.driver.core

    @property
    def skew_events(self) -> int:
        return self.driver.skew_events

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._tick_loop(), "tick")
        if self.convergence is not None:
            self._spawn(self.convergence.run(), "convergence checks")
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
        # gather, not a loop of awaits under suppress(CancelledError): that would swallow a cancellation of
        # close() itself as well as the tasks' own.
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in self.driver.shutdown(_monotonic_ms()).jobs:  # transfer spools in progress go
            with contextlib.suppress(Exception):
                job.run()
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
        if self.lag is not None:
            self.lag.committed(self.store.origin, self.store.context.vv.get(self.store.origin))
        self._handle(self.driver.local_committed(_monotonic_ms()))

    async def wait_seen(self, vector: VersionVector, timeout_s: float) -> bool:
        """Wait until this region has everything ``vector`` covers; False if ``timeout_s`` passes first."""
        return await self._waits.wait(vector, 1, timeout_s, among=(self.config.region,))

    async def wait_replicated(self, vector: VersionVector, regions: int, timeout_s: float) -> bool:
        """Wait until ``regions`` regions, this one included, have acknowledged ``vector``."""
        return await self._waits.wait(vector, regions, timeout_s)

    def _acked_by(self, peer: str) -> VersionVector:
        return self.driver.core.peers[peer].acked

    def rejoining(self) -> str | None:
        """While a restored region waits for its peers to fill it in, why; None once it takes writes."""
        return self.rejoin.waiting(self.store.context.vv)

    def _heard(self, peer: str, message: object) -> None:
        if isinstance(message, Hello):
            self.rejoin.heard(peer, message.vector)

    def _rejoin_over(self) -> None:
        self._spawn(asyncio.to_thread(clear_rejoin, self.store), "rejoin-over")

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
            and link.clock.offset_ms is not None
            and link.clock.measured_at >= fresh_after
            # Out of bounds even if the measurement erred as far as it can the other way.
            and abs(link.clock.offset_ms) - link.clock.error_ms > bound
        )
        return out * 2 > len(self.links)

    def connected(self, peer: str) -> bool:
        return self.links[peer].stream is not None

    # -- carrying out the driver's Ready ------------------------------------------------

    def _handle(self, ready: Ready) -> asyncio.Task[Any] | None:
        """Carry out ``ready``; the task persisting what a peer sent, if it asked for that.

        Never waits: messages are queued, jobs run as tasks, and the tick loop
        hears when the driver wants its next tick.
        """
        if self.metrics is not None:
            self._observe(ready)
        for outgoing in ready.messages:
            message = to_pb(outgoing.message)
            if isinstance(outgoing.message, Hello):
                message.hello.to = outgoing.peer  # the node that answers must be that region
            self._send_now(outgoing.peer, message, bulk=not isinstance(outgoing.message, Ack))
        for peer, why in ready.close:
            stream = self.links[peer].stream
            if stream is not None and not stream.closed.done():
                stream.closed.set_result(why)
        inbound = [job for job in ready.jobs if job.inbound]
        for job in ready.jobs:
            if not job.inbound:
                self._spawn(self._run_job(job), f"{job.kind} for {job.peer}")
        if ready.wake_at_ms < self._wake_at_ms:
            self._wake_at_ms = ready.wake_at_ms
            self._wake.set()
        self._waits.changed()  # the vector or a peer's acknowledgements may have moved
        context = self.store.context
        if context is not self._context_signalled:  # the store changed (not an ack or a tick): wake watch streams
            self._context_signalled = context
            self.changes.changed()
        if not inbound:
            return None
        return self._spawn(self._run_in_order(inbound), f"persisting from {inbound[0].peer}")

    def _observe(self, ready: Ready) -> None:
        """Metrics of a Ready: repairs begun and keys sent in them, and the lag of what peers acknowledged."""
        metrics = self.metrics
        assert metrics is not None
        for outgoing in ready.messages:
            message = outgoing.message
            if isinstance(message, Offer):
                metrics.repairs.labels(outgoing.peer).inc()
            elif isinstance(message, Page):
                metrics.keys_repaired.labels(outgoing.peer).inc(sum(1 for _, _, part in message.keys if part <= 1))
        if self.lag is not None:
            origin = self.store.origin
            for peer, state in self.driver.core.peers.items():
                self.lag.acked(peer, state.acked.get(origin))

    async def _run_in_order(self, jobs: list[Job]) -> None:
        for job in jobs:
            await self._run_job(job)

    async def _run_job(self, job: Job) -> None:
        if job.bulk and not await self._room(job.peer):
            return  # that stream ended: the driver starts over with the next connection
        try:
            if job.kind == "apply":  # entries a peer sent: traced, when tracing is on
                with tracing.span("replication apply", {"crdtstore.peer": job.peer}):
                    result = await self.writer.call(job.run)
            elif job.writes:
                result = await self.writer.call(job.run)
            else:
                result = await asyncio.to_thread(job.run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._handle(self.driver.failed(job, exc, _monotonic_ms()))
            return
        if job.kind in _CHANGES_RULES and self.access is not None:
            self.access.changed()  # what a peer sent may hold roles or revocations
        self._handle(self.driver.done(job, result, _monotonic_ms()))

    def _send_now(self, peer: str, message: rpb.SyncMessage, *, bulk: bool = True) -> None:
        stream = self.links[peer].stream
        if stream is None:
            return  # the peer learns everything at its next hello
        if not bulk and stream.queue.qsize() >= self.settings.outbound_messages_max:
            log.debug("the stream to %s is full; dropped a %s", peer, message.WhichOneof("body"))
            return
        stream.queue.put_nowait(message)

    async def _room(self, peer: str) -> bool:
        """Wait until ``peer``'s stream has room for a large message; False if it ends first."""
        stream = self.links[peer].stream
        while stream is not None and not stream.ended.is_set():
            if stream.queue.qsize() < self.settings.outbound_messages_max:
                return True
            stream.room.clear()
            room = asyncio.ensure_future(stream.room.wait())
            ended = asyncio.ensure_future(stream.ended.wait())
            try:
                await asyncio.wait({room, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()
                ended.cancel()
        return False

    async def _tick_loop(self) -> None:
        while not self._closing:
            delay_ms = self._wake_at_ms - _monotonic_ms()
            if delay_ms > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_ms / 1000):
                        await self._wake.wait()
                continue  # the time came, or something asked for a sooner tick
            self._wake_at_ms = _NEVER  # the tick's Ready says when the next is due
            try:
                # The driver's timers run on monotonic time: a wall clock stepped back must not stall them.
                self._handle(self.driver.tick(_monotonic_ms()))
                self.rejoining()  # a restored region leaves rejoin mode once caught up, written to or not
            except Exception:  # one bad round must not stop replication
                log.exception("replication round failed")
                self._wake_at_ms = _monotonic_ms() + self.settings.anti_entropy_ms

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
        channel = open_channel(link.address, link.name, self._tls, self.settings, self.config.message_bytes_max)
        try:
            call = sync_call(channel, self._peer_metadata(link.name))
            watch = await self._answering_peer(call, link.name)

            async def read() -> bytes | None:
                nonlocal answered
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    return None
                answered = True
                link.refused = ""
                assert isinstance(raw, bytes)
                return raw

            await self._session(link, read, call.write, None, watch)
        except grpc.aio.AioRpcError as exc:
            refused = exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            reason = f"{exc.code()} {exc.details()}"
            log.log(
                logging.WARNING if refused and reason != link.refused else logging.DEBUG,
                "stream to %s (%s) ended: %s",
                link.name,
                link.address,
                reason,
            )
            link.refused = reason if refused else ""
        except (ProtocolError, CodecError) as exc:
            log.warning("stream to %s closed: %s", link.name, exc)
        except Refusal as refusal:  # the answering node is not one this node may take data from
            log.log(
                logging.WARNING if refusal.message != link.refused else logging.DEBUG,
                "stream to %s (%s) closed: %s",
                link.name,
                link.address,
                refusal.message,
            )
            link.refused = refusal.message
        except Exception:  # whatever it was, the next attempt starts afresh
            log.exception("stream to %s failed", link.name)
        finally:
            await channel.close(grace=None)
        return answered

    def _peer_metadata(self, peer: str) -> tuple[tuple[str, str], ...]:
        """This node's peer token as metadata (read afresh, so a replaced file counts); none without one."""
        try:
            token = self.config.auth.peer_token()
        except ConfigError as exc:
            # Logged once while it lasts, not at every dial.
            level = logging.WARNING if str(exc) != self._peer_token_problem else logging.DEBUG
            log.log(level, "presenting no token to %s: %s", peer, exc)
            self._peer_token_problem = str(exc)
            return ()
        self._peer_token_problem = ""
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _answering_peer(
        self, call: grpc.aio.StreamStreamCall[Any, Any], peer: str
    ) -> Callable[[], Awaitable[None]] | None:
        """Check the token the answering node sent first; the watch that ends the stream when it lapses.

        Nothing to check without access control, or with TLS (the peer's certificate named its region).
        ``Refusal`` when the token is missing or does not hold ``replicate``.
        """
        access = self.access
        if access is None or not access.enabled or self._tls is not None:
            return None
        try:
            async with asyncio.timeout(_PEER_TOKEN_WAIT_S):
                metadata = await call.initial_metadata()
        except TimeoutError:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"peer {peer!r} presented no token within {_PEER_TOKEN_WAIT_S:g} s: is access control on there?",
            ) from None
        if call.done() or bearer_token(metadata) is None:
            # Headers without a token are also what a node that refused this one sends: say why it did.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    code = await call.code()
                metadata_none = grpc.aio.Metadata()
                raise grpc.aio.AioRpcError(code, metadata_none, metadata_none, await call.details())
        try:
            principal = access.authenticate(metadata)
            access.authorize(principal, (Need("replicate", EVERY_KEY),))
            _check_peer_subject(principal, peer, self._regions)
        except Refusal as refusal:
            raise Refusal(refusal.code, f"peer {peer!r} is not one to take data from: {refusal.message}") from None
        return functools.partial(self._watch_token, access, principal)

    def server_options(self) -> list[tuple[str, Any]]:
        """Options the gRPC server needs so that peers' keepalive pings are welcome."""
        return server_options(self.settings)

    async def serve_stream(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The server side of ``Replication.Sync``: the peer's Hello comes first and names it."""
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is shutting down")
        principal: Principal | None = None

        async def refuse(code: grpc.StatusCode, message: str) -> NoReturn:
            """End the stream with ``code``; logged, and recorded in the audit trail first (throttled)."""
            log.info("refused a replication stream from %s: %s", context.peer(), message)
            if self.stream_refusals is not None:
                who = principal.subject if principal is not None else ""
                await self.stream_refusals.record(code.name, message, str(context.peer() or ""), who)
            await context.abort(code, message)
            raise AssertionError("context.abort returns only by raising")  # pragma: no cover

        try:
            # Before anything the caller sent is read: an unauthenticated stream costs nothing.
            principal = await self._dialling_peer(context)
            raw = await context.read()
            if raw is grpc.aio.EOF:
                return
            assert isinstance(raw, bytes)
            link = self._hello_link(raw, principal, context)
        except Refusal as refusal:
            await refuse(refusal.code, refusal.message)

        async def read() -> bytes | None:
            raw = await context.read()
            if raw is grpc.aio.EOF:
                return None
            assert isinstance(raw, bytes)
            return raw

        try:
            await self._session(link, read, context.write, raw, self._dialling_watch(context, principal, link.name))
        except (ProtocolError, CodecError) as exc:
            log.warning("stream from %s closed: %s", link.name, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Refusal as refusal:
            log.warning("stream from %s closed: %s", link.name, refusal.message)
            await refuse(refusal.code, refusal.message)

    def _hello_link(
        self, raw: bytes, principal: Principal | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> _Link:
        """The link of the peer whose stream opens with ``raw`` (its hello); ``Refusal`` if it may not sync here."""
        try:
            first = rpb.SyncMessage.FromString(raw)
            if first.WhichOneof("body") != "hello":
                raise ProtocolError("the first message of a stream must be a hello")
        except DecodeError as exc:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT, f"a replication message that does not parse: {exc}"
            ) from None
        except ProtocolError as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if first.hello.to and first.hello.to != self.config.region:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this is region {self.config.region!r}, not {first.hello.to!r}: the address region "
                f"{first.hello.region!r} dials for {first.hello.to!r} reaches another node",
            )
        link = self.links.get(first.hello.region)
        if link is None:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"region {first.hello.region!r} is not a peer of region {self.config.region!r}; "
                f"add it with --peer on both sides",
            )
        if principal is not None:
            _check_peer_subject(principal, link.name, self._regions)
        if self.config.tls.require_client_cert and not certificate_names(context, link.name):
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client certificate does not name region {link.name!r}; a peer's certificate must carry "
                f"its region name as a DNS subject alternative name or common name",
            )
        return link

    async def _dialling_peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        """With access control: the dialling node's principal (None where mutual TLS names it), after this node
        sent its own token; ``Refusal`` for a dialling node without a token holding ``replicate``."""
        access = self.access
        if access is None or not access.enabled:
            return None
        principal = None
        if not self.config.tls.require_client_cert:
            principal = access.authenticate(context.invocation_metadata())
            set_principal(principal.subject)  # a refusal below is recorded with who it was (review)
            access.authorize(principal, (Need("replicate", EVERY_KEY),))
        if not self.config.tls.enabled:
            # This node's own token, before anything else: the dialling node checks it before it reads on. Over
            # TLS the certificate names this node, and the token would go to whoever dialled, unchecked (review).
            await context.send_initial_metadata(self._peer_metadata("the peer that dialled"))
        return principal

    def _dialling_watch(
        self, context: grpc.aio.ServicerContext[Any, Any], principal: Principal | None, peer: str
    ) -> Callable[[], Awaitable[None]] | None:
        """What ends a stream a peer opened when its token or certificate lapses; None without access control."""
        access = self.access
        if access is None or not access.enabled:
            return None
        if principal is not None:
            return functools.partial(self._watch_token, access, principal)
        return functools.partial(self._watch_certificate, certificate_expiry(context), peer)

    @staticmethod
    async def _watch_token(access: AccessControl, principal: Principal) -> None:
        """Return never; raise ``Refusal`` once the peer's token expires, is revoked or loses ``replicate``."""
        while True:
            until_expiry_s = principal.expires_at + access.settings.leeway_s - time.time()
            await access.wait_changed(max(0.0, min(until_expiry_s, 3600.0)))
            access.check_current(principal)
            access.authorize(principal, (Need("replicate", EVERY_KEY),))

    @staticmethod
    async def _watch_certificate(expires_at: float | None, peer: str) -> None:
        """Return never; raise ``Refusal`` once the peer's certificate expires."""
        if expires_at is None:
            await asyncio.Event().wait()  # no certificate to watch: nothing ends the stream from here
        assert expires_at is not None
        while (left_s := expires_at - time.time()) > 0:
            await asyncio.sleep(min(left_s, 3600.0))
        raise Refusal(grpc.StatusCode.UNAUTHENTICATED, f"the certificate of peer {peer!r} has expired")

    async def _session(  # noqa: PLR0915 (one stream's whole life: pump, receive, and how it ends)
        self,
        link: _Link,
        read: Callable[[], Awaitable[bytes | None]],
        write: Callable[[rpb.SyncMessage], Awaitable[None]],
        first: bytes | None,
        watch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if link.stream is not None:
            # The newer stream replaces the older, whose session returns: a server handler that
            # returns ends its call, where one cancelled from outside would leave the call open
            # (the peer would go on sending into a stream nobody reads).
            link.stream.replaced.set()
        link.epoch += 1
        epoch = link.epoch
        stream = _Stream()
        link.stream = stream
        link.session = asyncio.current_task()
        link.clock.new_stream()
        peer = link.name
        counts = _StreamCounts(self.metrics, peer, self.convergence, self._spawn)
        audit_heads = self.audit_heads
        audit_heads.new_stream(peer)

        async def pump() -> None:
            while True:
                message = await stream.queue.get()
                stream.room.set()
                # When it leaves, not when it was queued.
                stamps = link.clock.stamp(self._wall_ms(), time.monotonic())
                message.sent_wall_ms, message.echo_wall_ms, message.echo_held_ms = stamps
                audit_heads.stamp(peer, message)
                counts.sent(message)
                await write(message)

        async def receive() -> None:
            self._handle(self.driver.connected(peer, _monotonic_ms()))
            raw = first if first is not None else await read()
            while raw is not None:
                pb, message = parse(raw, peer)
                counts.received(pb, len(raw))
                if (compare := audit_heads.received(peer, pb)) is not None:
                    self._spawn(compare, f"audit heads from {peer}")
                self._heard(peer, message)
                link.clock.received(
                    pb.sent_wall_ms, pb.echo_wall_ms, pb.echo_held_ms, self._wall_ms(), time.monotonic()
                )
                persisting = self._handle(self.driver.received(peer, message, _monotonic_ms()))
                if persisting is not None:
                    await persisting  # the next message is read once this one's entries are durable
                raw = await read()

        async def closed() -> None:
            raise ProtocolError(await stream.closed)

        pumping = asyncio.ensure_future(pump())
        receiving = asyncio.ensure_future(receive())
        closing = asyncio.ensure_future(closed())
        stopping = asyncio.ensure_future(self._stopping.wait())
        replacing = asyncio.ensure_future(stream.replaced.wait())
        tasks: tuple[asyncio.Future[Any], ...] = (pumping, receiving, closing, stopping, replacing)
        if watch is not None:
            tasks = (*tasks, asyncio.ensure_future(watch()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended the stream
        finally:
            stream.ended.set()  # wakes anything waiting to queue on this stream
            for task in tasks:
                task.cancel()
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:  # even when this session is cancelled again meanwhile
                if link.epoch == epoch:
                    link.stream = None
                    link.session = None
                    self._handle(self.driver.disconnected(peer, _monotonic_ms()))


class _StreamCounts:
    """A stream's messages and bytes in the metrics, by peer and kind, and the convergence check's part in them.

    Nothing happens when metrics are off (``metrics`` and ``convergence`` None).
    """

    __slots__ = ("_convergence", "_metrics", "_peer", "_spawn")

    def __init__(
        self,
        metrics: NodeMetrics | None,
        peer: str,
        convergence: ConvergenceChecks | None,
        spawn: Callable[[Awaitable[Any], str], Any],
    ) -> None:
        self._metrics = metrics
        self._peer = peer
        self._convergence = convergence
        self._spawn = spawn

    def sent(self, message: rpb.SyncMessage) -> None:
        if (metrics := self._metrics) is not None:
            if self._convergence is not None:
                self._convergence.stamp(self._peer, message)
            metrics.replication_sent_messages.labels(self._peer, message.WhichOneof("body") or "none").inc()
            metrics.replication_sent_bytes.labels(self._peer).inc(message.ByteSize())

    def received(self, message: rpb.SyncMessage, size: int) -> None:
        if (metrics := self._metrics) is not None:
            metrics.replication_received_messages.labels(self._peer, message.WhichOneof("body") or "none").inc()
            metrics.replication_received_bytes.labels(self._peer).inc(size)
            if self._convergence is not None and (check := self._convergence.received(self._peer, message)):
                self._spawn(check, f"convergence check with {self._peer}")


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


# The jobs that may change roles or revocations here: applying a peer's entries, joining a state transfer.
_CHANGES_RULES = frozenset({"apply", "finish"})


def _check_peer_subject(principal: Principal, region: str, regions: frozenset[str]) -> None:
    """A peer token whose subject is a region's name speaks for that region alone.

    Without that, whatever answered at a peer's address could present a
    replicate token it had been sent (this node's own, say) and be taken for
    the peer, and one region could claim another's acknowledgements. A token
    whose subject names no region of the mesh (one token shared by every
    region, as a small setup may issue) is taken from any peer: it cannot
    tell the regions apart, which is safe only where its traffic cannot be
    read (loopback, or TLS); ``docs/auth.md`` recommends a token per region.
    """
    if principal.subject in regions and principal.subject != region:
        raise Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"a peer token for {principal.subject!r} presented for region {region!r}: a peer token whose subject "
            f"is a region's name speaks for that region alone (crdtstore token issue --subject {region} ...)",
        )
