"""The replication driver: one protocol that the node, the simulator, the benchmarks and the tests all run.

In the style of etcd raft's RawNode: the host feeds the driver events and
carries out the ``Ready`` each event returns. The driver does no I/O and
reads no clock; time enters only with the events. What it owns: the replica
core (``core``: what each peer has, what to send it, when to trim), the
relay holds, heartbeats, the trimmed-horizon check, the early tick while a
large message applies, and the whole state-transfer sub-protocol (offer
digests, answer which buckets differ, send and join pages). What the host
owns: connections, a clock, and where storage work runs.

The loop, in every host::

      events: connected, disconnected, received, local_committed, tick(now), done(job)
         |
         v
      Driver ------> Ready(jobs, messages, close, wake_at_ms)
         ^              |
         |              +-- jobs:     run each (a job that ``writes`` where the store's writes run),
         |              |             then report it: done(job, result) -> another Ready
         |              +-- messages: send them, in order, on each peer's connection
         |              +-- close:    end those connections (the peer broke the protocol)
         |              +-- wake_at_ms: call tick(now) no later than this
         +--------------------------------+

Persist before send: a message that depends on a job (the ack of entries
applied, a page read from a spool) is only ever in the Ready of that job's
``done``. So a host may carry out a Ready's jobs and messages in any order,
with one rule for backpressure: jobs marked ``inbound`` persist what their
peer sent, in order, and the host reads nothing more from that peer until
they are done. Jobs marked ``bulk`` make a large message for their peer: the
host runs one when the peer's connection has room for it. The driver keeps
at most one bulk job per peer in flight.

Settings come from ``crdtstore.replica.settings.ReplicationSettings``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crdtstore.replica.core import Action, Apply, NeedsRepair, ReplicaCore, Send, SendLog, Trim
from crdtstore.replica.settings import ReplicationSettings
from crdtstore.replica.storage import Applied, LogRead, ReplicaStorage, Spool
from crdtstore.replica.wire import (
    DIGEST_BUCKETS,
    Ack,
    Entries,
    Hello,
    Message,
    Offer,
    Page,
    TransferItem,
    Want,
)

__all__ = ["Driver", "Job", "Outgoing", "Ready"]

log = logging.getLogger("crdtstore.replication")

# Entries that take long enough to apply for the other peers to hear of them first (the core's hint).
LARGE_MESSAGE_BYTES = 64 * 1024
# A transfer offer with no answer for this long is given up (the next anti-entropy round offers again).
WANT_TIMEOUT_MS = 60_000
# Transfers from a peer set aside as stale in a row; past this, ask for every bucket (which needs no comparison).
STALE_TRANSFERS_MAX = 3


@dataclass(eq=False)
class Job:
    """Storage work for the host: call ``run()``, then ``Driver.done(job, result)`` (or ``failed``)."""

    kind: str  # apply, read_log, trim, spool, digests, read_page, release, discard, stage, finish
    peer: str
    run: Callable[[], Any]
    # Run it where the store's writes run (the node's writer thread); otherwise on any thread.
    writes: bool = False
    # It persists what ``peer`` sent: run in order, and read nothing more from the peer until it is done.
    inbound: bool = False
    # It makes a large message for ``peer``: run it when the peer's connection has room.
    bulk: bool = False
    epoch: int = 0
    then: Callable[[Any, int], None] = field(default=lambda result, now_ms: None, repr=False)


@dataclass(frozen=True)
class Outgoing:
    peer: str
    message: Message
    heartbeat: bool = False  # an ack sent only because the peer heard nothing for a period


@dataclass
class Ready:
    jobs: list[Job] = field(default_factory=list)
    messages: list[Outgoing] = field(default_factory=list)
    close: list[tuple[str, str]] = field(default_factory=list)  # (peer, why): end these connections
    wake_at_ms: int = 0


@dataclass
class _Sending:
    """A state transfer this node is sending a peer."""

    epoch: int
    spool: Spool | None = None
    offered_at_ms: int = 0
    buckets: frozenset[int] | None = None  # set when the peer answered which buckets it wants
    page: int = 0
    keys_sent: int = 0
    bytes_sent: int = 0


@dataclass
class _Link:
    """What the driver keeps per peer; the connection fields start over with each connection."""

    epoch: int = 0
    connected: bool = False
    closing: bool = False  # the driver asked the host to end this connection
    greeted: bool = False
    last_sent_ms: int = 0
    reading_log: bool = False
    sending: _Sending | None = None
    # A transfer from the peer: its offer's digests, the next page expected (None between transfers:
    # only a page 0 may come then), transfers begun.
    offered: tuple[int, ...] | None = None
    next_page: int | None = None
    transfers: int = 0
    stale_transfers: int = 0  # kept across connections

    def reset(self, epoch: int, now_ms: int) -> None:
        """A new connection (``epoch``): everything kept per connection starts over."""
        self.epoch = epoch
        self.connected = True
        self.closing = self.greeted = self.reading_log = False
        self.last_sent_ms = now_ms
        self.offered = None
        self.next_page, self.transfers = None, 0


class Driver:
    def __init__(
        self,
        region: str,
        peers: Sequence[str],
        storage: ReplicaStorage,
        settings: ReplicationSettings | None = None,
        *,
        trace: Callable[[str], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings = settings or ReplicationSettings()
        self.storage = storage
        self.core = ReplicaCore(
            region,
            peers,
            storage.vector,
            batch_window_ms=settings.batch_window_ms,
            anti_entropy_ms=settings.anti_entropy_ms,
            relay_delay_ms=settings.relay_delay_ms,
            trimmed=storage.log_horizon,
            origin=storage.origin,
        )
        self.region = region
        self.links = {name: _Link() for name in self.core.peers}
        self._horizon = storage.log_horizon
        self._trace = trace
        self._log = logger or log
        self._out = Ready()
        self._dirty = False  # tick at once: something changed that the core acts on at its next tick
        # What the runs did, for status and the simulator's statistics.
        self.skew_events = 0
        self.transfers_joined = 0
        self.transfers_sent = 0

    # -- events --------------------------------------------------------------------

    def connected(self, peer: str, now_ms: int) -> Ready:
        link = self.links[peer]
        self._end_sending(peer)
        link.reset(link.epoch + 1, now_ms)
        self._act(self.core.connected(peer, now_ms), now_ms)
        return self._ready(now_ms)

    def disconnected(self, peer: str, now_ms: int) -> Ready:
        link = self.links[peer]
        if link.connected and link.greeted:
            self._say(logging.INFO, "lost the connection with %s", peer)
        link.connected = link.greeted = link.closing = link.reading_log = False
        self._end_sending(peer)
        self._act(self.core.disconnected(peer), now_ms)
        return self._ready(now_ms)

    def received(self, peer: str, message: Message, now_ms: int) -> Ready:
        link = self.links[peer]
        if not link.connected or link.closing:
            return self._ready(now_ms)
        if isinstance(message, Hello):
            if self.storage.peer_holds(peer, message.vector):
                self._say(logging.INFO, "%s holds more events of this node's origin: a new incarnation", peer)
            # A transfer from this peer that a broken connection cut short is void.
            self._job("discard", peer, lambda: self.storage.discard_transfer(peer), writes=True, inbound=True)
            link.greeted = True
            self._say(logging.INFO, "replicating with %s", peer)
            self._act(self.core.received(peer, message, now_ms), now_ms)
        elif isinstance(message, Entries | Ack):
            if isinstance(message, Entries) and sum(len(e.delta) for e in message.entries) > LARGE_MESSAGE_BYTES:
                # A tick while it applies tells the other peers what is on its way (the core's hint).
                self._dirty = True
            self._act(self.core.received(peer, message, now_ms), now_ms)
        elif isinstance(message, Offer):
            self._answer_offer(peer, link, message, now_ms)
        elif isinstance(message, Want):
            self._send_pages(peer, link, message.buckets)
        else:
            self._receive_page(peer, link, message)
        return self._ready(now_ms)

    def local_committed(self, now_ms: int) -> Ready:
        """Local writes committed: push them after the batching window."""
        self.core.origin = self.storage.origin  # storage may have taken a new incarnation in that commit
        self._act(self.core.local_committed(self.storage.vector), now_ms)
        self._dirty = True
        return self._ready(now_ms)

    def tick(self, now_ms: int) -> Ready:
        self._dirty = False
        if self.storage.vector != self.core.vector:
            # Entries applied before a causal gap ended their connection, or a write whose host
            # never said so (a cancelled request): the core catches up.
            self.core.origin = self.storage.origin
            self._act(self.core.local_committed(self.storage.vector), now_ms)
        for peer, link in self.links.items():
            if link.connected and not link.closing and now_ms - link.last_sent_ms >= self.settings.anti_entropy_ms:
                # Quiet for a period: a heartbeat keeps the peer's view of this node (and of its clock) fresh.
                self._act(self.core.heartbeat(peer, now_ms), now_ms, heartbeat=True)
            sending = link.sending
            offered = sending is not None and sending.buckets is None and sending.spool is not None
            if offered and sending is not None and now_ms - sending.offered_at_ms > WANT_TIMEOUT_MS:
                self._say(logging.INFO, "%s did not answer a transfer offer; the next round asks again", peer)
                self._end_sending(peer)
        self._act(self.core.tick(now_ms), now_ms)
        return self._ready(now_ms)

    def shutdown(self, now_ms: int) -> Ready:
        """The host is stopping: state transfers in progress end (their spools are released)."""
        for peer in self.links:
            self._end_sending(peer)
        return self._ready(now_ms)

    def done(self, job: Job, result: object, now_ms: int) -> Ready:
        """The host ran ``job``; ``result`` is what its ``run()`` returned."""
        job.then(result, now_ms)
        return self._ready(now_ms)

    def failed(self, job: Job, error: BaseException, now_ms: int) -> Ready:
        """``job``'s ``run()`` raised ``error``."""
        link = self.links.get(job.peer, _Link())
        if job.inbound:
            # What the peer sent could not be persisted (it does not decode, or the store refused it):
            # its connection ends, unless that one has already (a newer one did nothing wrong).
            if job.epoch == link.epoch:
                self._close(job.peer, f"{job.kind} of what {job.peer} sent failed: {error}")
        elif job.kind == "read_log" and job.epoch == link.epoch:
            link.reading_log = False
            self._dirty = True
        elif job.kind in ("spool", "read_page") and link.sending is not None and link.sending.epoch == job.epoch:
            self._end_sending(job.peer)
        self._log.error("replication %s for %s failed: %s", job.kind, job.peer, error, exc_info=error)
        return self._ready(now_ms)

    # -- what the core asked for ------------------------------------------------------

    def _act(self, actions: list[Action], now_ms: int, *, heartbeat: bool = False) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.peer, action.message, now_ms, heartbeat=heartbeat)
            elif isinstance(action, SendLog):
                self._read_log(action)
            elif isinstance(action, Apply):
                self._apply(action)
            elif isinstance(action, Trim):
                self._job("trim", self.region, functools.partial(self.storage.trim_log, action.vector), writes=True)
            elif isinstance(action, NeedsRepair):
                self._start_sending(action.peer, action)

    def _send(self, peer: str, message: Message, now_ms: int, *, heartbeat: bool = False) -> None:
        link = self.links[peer]
        if not link.connected or link.closing:
            return
        link.last_sent_ms = now_ms
        self._out.messages.append(Outgoing(peer, message, heartbeat))

    def _read_log(self, action: SendLog) -> None:
        peer = action.peer
        link = self.links[peer]
        if not link.connected or link.closing or link.reading_log:
            return  # one read at a time; when it is sent, the next tick asks for more
        link.reading_log = True
        after = action.after.join(self.core.peers[peer].sent)
        relay_delay_ms = self.settings.relay_delay_ms if action.hold_fresh_relays else None
        held, bytes_max = action.held, self.settings.message_bytes_max
        epoch = link.epoch

        def read() -> LogRead:
            return self.storage.read_log(after, bytes_max, relay_delay_ms=relay_delay_ms, held=held)

        def then(found: LogRead, now_ms: int) -> None:
            if link.epoch != epoch or not link.connected:
                return  # that connection ended: the next hello starts over
            link.reading_log = False
            if not found.entries:
                if found.held_since_ms is not None:
                    self.core.relay_held(peer, found.held_since_ms, found.wall_ms, now_ms)
                return
            self._send(peer, Entries.of(found.entries), now_ms)
            self.core.sent(peer, found.reached)

        self._job("read_log", peer, read, bulk=True, then=then)

    def _apply(self, action: Apply) -> None:
        peer, entries = action.peer, action.entries
        link = self.links[peer]
        epoch = link.epoch

        def then(applied: Applied, now_ms: int) -> None:
            if applied.clock_skews:
                self.skew_events += applied.clock_skews
                self._say(
                    logging.WARNING,
                    "%d register timestamp(s) from %s are too far ahead of this clock: applied, "
                    "but the clock did not follow them",
                    applied.clock_skews,
                    peer,
                )
            if link.epoch != epoch:
                self._dirty = True  # the core catches up with what did apply at the next tick
                return
            if applied.gap:
                # Entries arrived before something they depend on: both sides
                # start over from a hello, and the peer resends in causal order.
                self._close(peer, f"entries from {peer} arrived out of causal order; resynchronising")
                return
            if link.connected:
                self._act(self.core.applied(peer, self.storage.vector, now_ms), now_ms)
            self._dirty = True  # relay what is new to the other peers

        self._job("apply", peer, lambda: self.storage.apply(peer, entries), writes=True, inbound=True, then=then)

    # -- state transfer: sending ------------------------------------------------------

    def _start_sending(self, peer: str, action: NeedsRepair) -> None:
        link = self.links[peer]
        if not link.connected or link.closing or link.sending is not None:
            return  # not connected (its hello asks again), or one is on its way
        self._say(
            logging.WARNING,
            "peer %s lacks entries this node has trimmed from its log (it has %s): sending it a state transfer",
            peer,
            action.vector,
        )
        self.transfers_sent += 1
        link.sending = sending = _Sending(link.epoch)

        def then(spool: Spool, now_ms: int) -> None:
            if link.sending is not sending:
                self._release(peer, spool)  # the connection ended meanwhile
                return
            sending.spool = spool
            sending.offered_at_ms = now_ms
            self._send(peer, Offer(spool.digests), now_ms)

        self._job("spool", peer, lambda: self.storage.spool(peer), then=then)

    def _send_pages(self, peer: str, link: _Link, buckets: frozenset[int]) -> None:
        sending = link.sending
        if sending is None or sending.spool is None or sending.buckets is not None:
            return  # no offer of ours is waiting for this answer
        sending.buckets = buckets
        self._read_page(peer, link, sending)

    def _read_page(self, peer: str, link: _Link, sending: _Sending) -> None:
        spool, buckets = sending.spool, sending.buckets
        assert spool is not None and buckets is not None, "pages follow the peer's answer to an offer"
        bytes_max = self.settings.message_bytes_max

        def then(found: tuple[tuple[TransferItem, ...], bool], now_ms: int) -> None:
            if link.sending is not sending:
                return  # the connection ended; ending it released the spool
            keys, last = found
            page = Page(sending.page, keys, last, spool.context if last else None, buckets if last else frozenset())
            self._send(peer, page, now_ms)
            sending.page += 1
            sending.keys_sent += len(keys)
            sending.bytes_sent += sum(len(state) for _, state, _ in keys)
            if not last:
                self._read_page(peer, link, sending)
                return
            self._say(
                logging.INFO,
                "repaired %s: %d of %d buckets differed; sent %d of %d keys, %d bytes",
                peer,
                len(buckets),
                DIGEST_BUCKETS,
                sending.keys_sent,
                spool.keys,
                sending.bytes_sent,
            )
            self._end_sending(peer)

        self._job("read_page", peer, lambda: spool.page(buckets, bytes_max), bulk=True, then=then)

    def _end_sending(self, peer: str) -> None:
        link = self.links[peer]
        sending, link.sending = link.sending, None
        if sending is not None and sending.spool is not None:
            self._release(peer, sending.spool)

    def _release(self, peer: str, spool: Spool) -> None:
        self._job("release", peer, spool.close)

    # -- state transfer: receiving ----------------------------------------------------

    def _answer_offer(self, peer: str, link: _Link, offer: Offer, now_ms: int) -> None:
        link.offered = offer.digests  # the skipped buckets must still match when the transfer is joined
        if link.stale_transfers >= STALE_TRANSFERS_MAX:
            # Comparisons keep going stale before they can be joined (this
            # region keeps changing): ask for every bucket, which needs none.
            self._send(peer, Want(frozenset(range(DIGEST_BUCKETS))), now_ms)
            return
        epoch = link.epoch

        def then(mine: tuple[int, ...], now_ms: int) -> None:
            if link.epoch == epoch and link.connected:
                theirs = offer.digests
                self._send(peer, Want(frozenset(i for i in range(DIGEST_BUCKETS) if mine[i] != theirs[i])), now_ms)

        self._job("digests", peer, self.storage.bucket_digests, then=then)

    def _receive_page(self, peer: str, link: _Link, page: Page) -> None:
        if page.number == 0:  # a new transfer: whatever an earlier one left is void
            self._job("discard", peer, lambda: self.storage.discard_transfer(peer), writes=True, inbound=True)
            link.next_page = 0
            link.transfers += 1
        if page.number != link.next_page:
            # A page of a transfer that already ended (its last page overtook it) must not be taken for one of the
            # next: it would finish with that page's keys alone, and the join would drop every key not in it.
            wanted = "a new transfer's first page" if link.next_page is None else f"page {link.next_page}"
            self._close(peer, f"state transfer page {page.number} arrived, {wanted} was expected")
            return
        link.next_page = None if page.done else page.number + 1
        transfer = link.epoch * 1_000_000 + link.transfers  # unique per connection and transfer
        if page.keys:
            keys = page.keys
            self._job(
                "stage", peer, lambda: self.storage.stage_transfer(peer, transfer, keys), writes=True, inbound=True
            )
        if not page.done:
            return
        context, buckets, expected = page.context, page.buckets, link.offered
        assert context is not None, "the wire gives the last page a context"
        epoch = link.epoch

        def finish() -> int | None:
            return self.storage.finish_transfer(peer, transfer, context, buckets, expected)

        def then(changed: int | None, now_ms: int) -> None:
            if changed is None:
                link.stale_transfers += 1
                self._say(logging.INFO, "set aside a stale state transfer from %s; the next round compares again", peer)
                return
            link.stale_transfers = 0
            self.transfers_joined += 1
            self._say(logging.INFO, "joined a state transfer from %s: %d keys changed", peer, changed)
            if link.epoch == epoch and link.connected:
                self._act(self.core.applied(peer, self.storage.vector, now_ms), now_ms)
            self._dirty = True

        self._job("finish", peer, finish, writes=True, inbound=True, then=then)

    # -- plumbing ------------------------------------------------------------------------

    def _job(
        self,
        kind: str,
        peer: str,
        run: Callable[[], Any],
        *,
        writes: bool = False,
        inbound: bool = False,
        bulk: bool = False,
        then: Callable[[Any, int], None] | None = None,
    ) -> None:
        job = Job(kind, peer, run, writes, inbound, bulk, self.links[peer].epoch if peer in self.links else 0)
        if then is not None:
            job.then = then
        self._out.jobs.append(job)

    def _close(self, peer: str, why: str) -> None:
        link = self.links[peer]
        if link.closing or not link.connected:
            return
        link.closing = True
        self._say(logging.WARNING, "closing the connection with %s: %s", peer, why)
        self._out.close.append((peer, why))

    def _say(self, level: int, text: str, *args: object) -> None:
        self._log.log(level, text, *args)
        if self._trace is not None:
            self._trace(f"{self.region}: {text % args}")

    def _ready(self, now_ms: int) -> Ready:
        if self.storage.log_horizon != self._horizon:
            # Storage trimmed its log further (by acknowledgement, to keep its byte bound, or a transfer).
            self._horizon = self.storage.log_horizon
            self._act(self.core.log_trimmed(self._horizon), now_ms)
        out, self._out = self._out, Ready()
        if self._dirty:
            out.wake_at_ms = now_ms
            return out
        due = self.core.next_tick_ms()
        period = self.settings.anti_entropy_ms
        for link in self.links.values():
            if link.connected and not link.closing:
                due = min(due, link.last_sent_ms + period)
                if link.sending is not None and link.sending.spool is not None and link.sending.buckets is None:
                    due = min(due, link.sending.offered_at_ms + WANT_TIMEOUT_MS + 1)
        out.wake_at_ms = max(due, now_ms)
        return out


def run_inline(
    driver: Driver,
    ready: Ready,
    now_ms: int,
    *,
    send: Callable[[Outgoing], None],
    close: Callable[[str, str], None],
    run: Callable[[Job], Any] | None = None,
) -> int:
    """Carry out ``ready`` at once, for a host whose storage work takes no time of its own.

    The simulator, the synchronisation-cost benchmark and the unit tests run
    every job inline, in order, and report it at the same instant; ``run``
    runs a job (``job.run()`` when not given, e.g. to time or watch it).
    Returns when the driver wants its next tick.
    """
    wake_at_ms = ready.wake_at_ms
    pending = [ready]
    while pending:
        ready = pending.pop(0)
        wake_at_ms = min(wake_at_ms, ready.wake_at_ms)
        for outgoing in ready.messages:
            send(outgoing)
        for peer, why in ready.close:
            close(peer, why)
        for job in ready.jobs:
            result = job.run() if run is None else run(job)
            pending.append(driver.done(job, result, now_ms))
    return wake_at_ms


class TickTimer:
    """When an inline host ticks its driver next: the soonest time asked for; later asks wait for it.

    ``after(ms, fn)`` is the host's scheduler (virtual time). A tick that a
    sooner one replaced does nothing when its time comes.
    """

    def __init__(self, after: Callable[[int, Callable[[], None]], None]) -> None:
        self._after = after
        self.at_ms: int | None = None

    def wake_at(self, at_ms: int, now_ms: int, tick: Callable[[], None]) -> None:
        if self.at_ms is not None and self.at_ms <= at_ms:
            return

        def fire() -> None:
            if self.at_ms == at_ms:
                self.at_ms = None
                tick()

        self.at_ms = at_ms
        self._after(max(0, at_ms - now_ms), fire)

    def cancel(self) -> None:
        self.at_ms = None
