"""The deterministic simulator: regions, clients, a network and faults in virtual time, from one seed.

What is real here is what production runs: the replication driver
(``crdtstore.replica.driver``, with its core, its timers, its relay holds and
its state transfers), the CRDTs, and the storage (``LmdbStore`` on LMDB, with
its causal-delivery check, its delta log, its trimming and its state-transfer
staging, through the same ``ReplicaStore`` adapter as the node), each region
in its own directory. Only fsync is
off (``StorageOptions.sync``): a simulated crash loses exactly what a real
one loses with sync on, the requests waiting for the next group commit, and
keeps everything committed.

What this module supplies instead of the asyncio node: the virtual clock of
each region (with skew and jumps), the network (one connection per pair of
regions, opened by the region whose name sorts first, carrying messages
that may be delayed, dropped, duplicated or reordered, and broken by
partitions, crashes and protocol errors), the group commit, the clients
(with deadlines and idempotent retries) and the nemesis. A region hosts
the driver as the node does, but runs its storage work inline, at the
instant it is asked for (``run_inline``), and ticks it when it asks to be.

The regions audit every request as nodes do (``Scenario.audit``, on by
default): the simulator notes on each operation the audit record each of
its answers wrote (``Op.audit``, the audit checker's ground truth, as the
token is the other checkers'), and at the end reads every region's trail
(``simulations.audit``). About 2% of the requests are built to be refused.

One ``random.Random(seed)`` decides everything, and events at the same
virtual time run in the order they were scheduled, so a seed replays the
same history byte for byte (``SimResult.digest``).

Not modelled (see the README's Simulations section): the node's
clock fence, TLS, and message sizes beyond the byte counts. A lost disk
(the ``disk`` fault) is modelled: the region comes back with an empty
directory and so a new incarnation (``crdtstore.crdt.origin``).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from crdtstore.crdt import (
    Dot,
    HybridLogicalClock,
    KeyState,
    Register,
    ValueType,
    VersionVector,
    encode,
)
from crdtstore.crdt.origin import region_of
from crdtstore.node.config import ServerSettings
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.replica.driver import Driver, Job, Outgoing, Ready, TickTimer, run_inline
from crdtstore.replica.settings import ReplicationSettings
from crdtstore.replica.wire import Message, size_of
from crdtstore.storage import (
    Applied,
    Failed,
    LmdbStore,
    StorageConfig,
    StorageOptions,
    WriteRequest,
)
from crdtstore.storage.audit import RequestInfo
from crdtstore.storage.errors import StoreFull
from crdtstore.storage.replication import ReplicaStore
from simulations.audit import read_trail
from simulations.faults import (
    FINAL_HEAL,
    PARTITION_SHAPES,
    RUNNER_KINDS,
    bridge_sides,
    halves,
    links_text,
    parse_faults,
    region_names,
    ring_neighbours,
)
from simulations.history import AuditRead, FinalRead, KeyRead, Meta, Nemesis, Op, Record, Sibling, dump
from simulations.watcher import Watcher

__all__ = ["FAULT_KINDS", "Scenario", "SimResult", "Simulation", "region_names"]

FAULT_KINDS = RUNNER_KINDS["simulator"]  # the kinds this runner injects (simulations.faults)

# The node's settings, from where the node takes its defaults; messages smaller than the
# node's 1 MiB so that transfers span several pages.
SETTINGS = replace(ReplicationSettings(), message_bytes_max=64 * 1024)
_MAX_CLOCK_OFFSET_MS = ServerSettings().max_clock_offset_ms
# What the driver logs, a region says in the trace instead (thousands of simulated regions would flood a log).
_QUIET = logging.getLogger("simulations.region")
_QUIET.disabled = True
# Physical clocks start here, so that skewing one backwards stays positive.
_EPOCH_MS = 1_700_000_000_000
_CLIENT_DEADLINE_MS = 1_000
_CLIENT_ATTEMPTS = 6
_CLIENT_BACKOFF_MS = (100, 1_000)  # after a refused attempt: doubling from the first, at most the second
_STALL_CHANCE = 0.01  # with crash faults: a commit stalls (a slow fsync, a long pause) ...
_STALL_MS = (300, 1_500)  # ... this long, so clients give up and retry while it is still queued
_SETTLE_LIMIT_MS = 300_000
_REGISTER_KEYS = 24
_COUNTER_KEYS = 3
_SET_KEYS = 12
# Of the requests, this share is built to be refused (a register write and an increment of one key): their
# audit records are checked like the rest. Drawn from a generator of its own, so the rest of a run is unchanged.
_REFUSED_SHARE = 0.02


@dataclass(frozen=True)
class Scenario:
    seed: int
    regions: int = 5
    ops: int = 1000
    clients: int = 8
    faults: str = "all"  # all, none, or a comma-separated subset of FAULT_KINDS
    # Whether the regions audit every request (as nodes do by default) and their trails are read and checked.
    # A run takes about twice as long with it: the records are most of the keys a state transfer carries.
    audit: bool = True

    def fault_kinds(self) -> tuple[str, ...]:
        return parse_faults(self.faults, "simulator")

    def command(self) -> str:
        """The command that replays this scenario."""
        return (
            f"python -m simulations replay --seed {self.seed} --regions {self.regions} --ops {self.ops} "
            f"--clients {self.clients} --faults {self.faults}" + ("" if self.audit else " --audit off")
        )


@dataclass
class SimResult:
    scenario: Scenario
    history: list[Record]
    digest: str  # sha256 of the history as JSON lines: the same seed gives the same digest
    converged_after_ms: int | None  # virtual time from the final heal until every region agreed
    messages: int
    bytes: int
    keys: int
    trace: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # Wall seconds spent in the production store's commits and applies (``write_batch``,
    # ``apply_raw``): a floor under the run's time that no change to the simulator removes.
    store_seconds: float = 0.0


# -- clients ---------------------------------------------------------------------------------------


@dataclass
class _Request:
    op: Op
    operations: list[Operation]
    idempotency_key: bytes
    attempt: int = 0
    reached: bool = False  # some attempt reached a live region: it may have applied
    done: bool = False
    applied: bool = False  # a commit applied it (whether or not its client hears)

    def write_request(self) -> WriteRequest:
        info = RequestInfo(principal=f"client-{self.op.client}", request_id=f"op-{self.op.id}", method="Mutate")
        return WriteRequest(self.operations, self.idempotency_key, info)


# -- the network -------------------------------------------------------------------------------


@dataclass
class _Connection:
    a: str  # the dialling side (its name sorts first)
    b: str
    up: bool = False
    epoch: int = 0
    dialing: bool = False
    backoff_ms: int = 50
    last_delivery: dict[str, int] = field(default_factory=dict)  # per sender: FIFO unless reordering
    # Per sender: messages sent while its direction is cut. TCP holds them
    # (retransmitting) until the cut heals or keepalive gives up on the
    # connection; then they are delivered in order, or lost with it.
    held: dict[str, list[Message]] = field(default_factory=dict)


class _Region:
    """One region: production storage and the production replication driver, on a virtual clock."""

    def __init__(self, sim: Simulation, name: str, peers: list[str]) -> None:
        self.sim = sim
        self.name = name
        self.peers = peers
        self.path = sim.root / name
        # Incarnation ids from the seed, apart from the main stream so that they shift no other choice.
        self.incarnations = random.Random(f"{sim.scenario.seed}/{name}")
        self.offset_ms = 0
        self.up = False
        self.boot = 0
        self.queue: list[_Request] = []
        self.commit_scheduled = False
        self.ticks = TickTimer(self.sim.after)
        self.skew_events = 0  # over every boot
        self.start()

    # -- lifecycle -------------------------------------------------------------------

    def physical_ms(self) -> int:
        return _EPOCH_MS + self.sim.now + self.offset_ms

    def start(self) -> None:
        options = StorageOptions(
            audit=self.sim.scenario.audit,  # as a node: every request its writer answers leaves a record
            sync=False,
            map_size_bytes=8 * 1024 * 1024,
            delta_log_bytes_max=self.sim.log_bytes_max,
            set_part_members=self.sim.set_part_members,
        )
        self.store = LmdbStore(
            StorageConfig(self.path, self.name, options),
            wall_ms=self.physical_ms,
            incarnations=lambda: f"{self.incarnations.getrandbits(48):012x}",
        )
        self.clock = HybridLogicalClock(self.physical_ms, max_offset_ms=_MAX_CLOCK_OFFSET_MS, floor=self.store.hlc_mark)
        storage = ReplicaStore(self.store, self.clock, self.sim.root)
        self.driver = Driver(self.name, self.peers, storage, SETTINGS, trace=self.sim.trace_line, logger=_QUIET)
        self.up = True
        self.boot += 1
        self.ticks = TickTimer(self.sim.after)  # a crash takes the old one's ticks with it
        self._schedule_tick(self.sim.now)

    def crash(self) -> None:
        """Lose the process: what waits for the next commit is gone; what is committed stays."""
        self.up = False
        self.queue = []
        self.commit_scheduled = False
        self.skew_events += self.driver.skew_events
        self.handle(self.driver.shutdown(self.sim.now))  # the spools of transfers in progress go
        self.store.close()

    def close(self) -> None:
        if self.up:
            self.crash()

    # -- the node's loops ------------------------------------------------------------

    def _schedule_tick(self, at_ms: int) -> None:
        """Tick at ``at_ms`` unless a tick is due sooner (the node's tick loop, woken early by events)."""
        ticks = self.ticks

        def tick() -> None:
            if self.up and ticks is self.ticks:
                self.handle(self.driver.tick(self.sim.now))

        ticks.wake_at(at_ms, self.sim.now, tick)

    def submit(self, request: _Request) -> None:
        self.queue.append(request)
        if not self.commit_scheduled:
            self.commit_scheduled = True
            boot = self.boot
            # The writer picks the queue up, commits it in one transaction, and fsyncs.
            self.sim.after(self.sim.commit_delay(self.name), lambda: self._commit(boot))

    def _commit(self, boot: int) -> None:
        if not self.up or self.boot != boot:
            return
        batch, self.queue = self.queue, []
        self.commit_scheduled = False
        before = self.store.context.vv
        started = time.perf_counter()
        results = self.store.write_batch([r.write_request() for r in batch], self.clock)
        self.sim.store_seconds += time.perf_counter() - started
        if self.sim.scenario.audit:
            self._note_records(batch, results, before)
        self.handle(self.driver.local_committed(self.sim.now))
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, Applied) and result.replayed:
                self.sim.stats["idempotent_replays"] += 1
            if isinstance(result, Applied) and not request.applied:
                request.applied = True
                self.sim.applied(self, request, result)
            self.sim.reply(self, request, result)

    def _note_records(self, batch: list[_Request], results: list[Applied | Failed], before: VersionVector) -> None:
        """Note on each request the audit record its answer wrote (ground truth for the audit checker).

        A batch's requests take consecutive events of the store's origin in
        order: a write runs to its token's counter (its record's own dot), a
        replay or a refusal takes one event (its record alone). A full map
        refuses with nothing written.
        """
        origin = self.store.origin
        event = before.get(origin)
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, Failed) and isinstance(result.error, StoreFull):
                continue
            if isinstance(result, Applied) and not result.replayed:
                kind, event = "write", result.token.vv.get(origin)
            else:
                kind, event = ("replay" if isinstance(result, Applied) else "refused"), event + 1
            request.op.audit.append([kind, origin, event])
        # Every event of the batch is some request's: a writer that skipped a record, or wrote two, breaks this.
        assert event == self.store.context.vv.get(origin), (
            f"region {self.name}'s batch ran to event {self.store.context.vv.get(origin)} of {origin}, "
            f"but its requests' records account for events up to {event}"
        )

    # -- the driver's host -------------------------------------------------------------

    def handle(self, ready: Ready) -> None:
        """Carry out what the driver asks: storage work inline, messages onto the network."""
        wake_at_ms = run_inline(self.driver, ready, self.sim.now, send=self._send, close=self._close, run=self._run_job)
        if self.up:
            self._schedule_tick(wake_at_ms)

    def _send(self, outgoing: Outgoing) -> None:
        self.sim.send(self.name, outgoing.peer, outgoing.message)

    def _close(self, peer: str, why: str) -> None:
        self.sim.break_connection(self.name, peer, why)

    def _run_job(self, job: Job) -> object:
        if job.kind == "finish":
            before = self._keys()
            changed = job.run()
            if changed is not None:
                self.sim.stats["transfers_joined"] += 1
                self.sim.stats["keys_removed_by_transfers"] += len(before - self._keys())
            return changed
        if not job.writes:
            return job.run()
        started = time.perf_counter()
        try:
            return job.run()
        finally:
            self.sim.store_seconds += time.perf_counter() - started

    def connected(self, peer: str) -> None:
        self.handle(self.driver.connected(peer, self.sim.now))

    def disconnected(self, peer: str) -> None:
        self.handle(self.driver.disconnected(peer, self.sim.now))

    def receive(self, peer: str, message: Message) -> None:
        self.handle(self.driver.received(peer, message, self.sim.now))

    # -- reading -------------------------------------------------------------------------

    def _keys(self) -> set[str]:
        keys: set[str] = set()
        after = _CLIENT_KEYS_AFTER  # past the system keyspace (the audit trail), which is most of the keys
        while True:
            page, after = self.store.scan("", after=after, limit=1000)
            keys.update(key for key, state in page if state.read() is not None)
            if not after:
                return keys

    def final_read(self) -> FinalRead:
        keys: dict[str, KeyRead] = {}
        digest = hashlib.sha256(encode(self.store.context))
        after = b""
        while True:
            page, after = self.store.scan("", after=after, limit=1000)
            for key, state in page:
                digest.update(key.encode() + b"\x00" + encode(state))
                read = read_state(state) if _client_key(key) else None
                if read is not None:
                    keys[key] = read
            if not after:
                break
        return FinalRead(self.name, keys, digest.hexdigest())

    def audit_read(self) -> AuditRead:
        return read_trail(self.name, self.store, self.store.context.vv)

    def state_digest(self) -> tuple[VersionVector, tuple[int, ...]]:
        return self.store.context.vv, tuple(self.store.bucket_digests())


# Client keys never start with NUL: a scan from here (the LMDB key of none) passes over the system keyspace.
_CLIENT_KEYS_AFTER = b"\x01"


def _client_key(key: str) -> bool:
    """Not the system keyspace (audit records): the checkers' model knows nothing of it."""
    return not key.startswith("\x00")


def read_state(state: KeyState | None) -> KeyRead | None:
    """A key's state as the history records it; None when it reads as absent."""
    value = None if state is None else state.read()
    if state is None or value is None:
        return None
    return _key_read(state.slots.get(value.type), value.type, value.value)


def _key_read(slot: object, vtype: ValueType, value: object) -> KeyRead:
    if vtype is ValueType.REGISTER:
        assert isinstance(slot, Register) and isinstance(value, bytes)
        siblings = [
            Sibling(s.value.decode(), region_of(s.dot.region), [s.timestamp.wall_ms, s.timestamp.logical])
            for s in slot.siblings()
        ]
        return KeyRead("register", value.decode(), siblings)
    if vtype is ValueType.COUNTER:
        assert isinstance(value, int)
        return KeyRead("counter", value)
    assert isinstance(value, frozenset)
    return KeyRead("set", sorted(value))


# -- the simulation ------------------------------------------------------------------------


class Simulation:
    def __init__(self, scenario: Scenario, root: Path, *, trace: bool = False) -> None:
        self.scenario = scenario
        self.root = Path(root)
        self.random = random.Random(scenario.seed)
        self._refusals = random.Random(f"{scenario.seed}/refused")
        self.kinds = scenario.fault_kinds()
        self.now = 0
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.tracing = trace
        self.trace: list[str] = []
        self.history: list[Record] = []
        self.messages = 0
        self.bytes = 0
        self.store_seconds = 0.0
        # What the run exercised (state transfers, resets, retries), so a test can tell a run did something.
        self.stats: Counter[str] = Counter()
        # Per seed: a log small enough that partitions and crashes need state transfers, or a roomy one.
        self.log_bytes_max = self.random.choice([4 * 1024, 16 * 1024, 64 * 1024, 64 * 1024 * 1024])
        # Per seed: sets sent in parts of a few members and joined member by member in repairs (the path of sets
        # larger than set_part_members), or whole. From a generator of its own, so the rest of a seed is unchanged.
        self.set_part_members = random.Random(f"{scenario.seed}/set-parts").choice([2, 5, 4096])
        names = region_names(scenario.regions, what="a simulation")
        self.names = names
        self.latency = {
            (a, b): self.random.randint(1, 40) for a in names for b in names if a != b
        }  # one way, per direction
        self.cut: set[tuple[str, str]] = set()
        self.drop = self.duplicate = 0.0
        self.reorder = False
        self.connections = {(a, b): _Connection(a, b) for a, b in itertools.combinations(names, 2)}
        self.regions = {name: _Region(self, name, [n for n in names if n != name]) for name in names}
        # A change-feed consumer moving between regions; it only reads, from a generator of its own.
        self.watcher = Watcher(scenario.seed, self.regions, read_state)
        self._added: dict[str, list[str]] = {}  # set members added per key, for removes to choose from
        self.settling = False  # every fault healed: the nemesis starts nothing new
        self._next_op = 0
        self._open: dict[int, _Request] = {}  # requests whose clients have not heard yet, by operation id
        self._clients_done = 0
        self._ops_issued = 0
        self.history.append(
            Meta(
                "simulator",
                names,
                seed=scenario.seed,
                faults=scenario.faults,
                detail={
                    "ops": scenario.ops,
                    "clients": scenario.clients,
                    "log_bytes_max": self.log_bytes_max,
                    "set_part_members": self.set_part_members,
                    "audit": scenario.audit,
                    # Every operation a commit applied carries its token, even if its client never heard.
                    "ground_truth": True,
                },
            )
        )

    # -- the event loop ----------------------------------------------------------------

    def after(self, ms: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now + ms, next(self._seq), fn))

    def _step(self) -> None:
        when, _, fn = heapq.heappop(self._events)
        self.now = when
        fn()

    def trace_line(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now:>8} ms  {text}")

    def record(self, record: Record) -> None:
        self.history.append(record)
        if self.tracing:
            self.trace_line(dump(record))

    # -- network ---------------------------------------------------------------------

    def connection(self, a: str, b: str) -> _Connection:
        return self.connections[(a, b) if a < b else (b, a)]

    def send(self, src: str, dst: str, message: Message) -> None:
        conn = self.connection(src, dst)
        if not conn.up:
            return
        self.messages += 1
        self.bytes += size_of(message)
        held = conn.held.setdefault(src, [])
        if (src, dst) in self.cut or held:
            held.append(message)
            return
        if self.drop and self.random.random() < self.drop:
            # A stream delivers in order or not at all: loss on the wire ends the connection.
            self.break_connection(src, dst, "message lost")
            return
        self._transmit(conn, src, dst, message)

    def _transmit(self, conn: _Connection, src: str, dst: str, message: Message) -> None:
        # Duplicates and reordering go beyond what a stream does; the protocol must survive them anyway.
        copies = 2 if self.duplicate and self.random.random() < self.duplicate else 1
        for _ in range(copies):
            delay = self.latency[(src, dst)] + self.random.randint(0, 5)
            arrive = self.now + delay
            if not self.reorder:
                arrive = max(arrive, conn.last_delivery.get(src, 0))
                conn.last_delivery[src] = arrive
            deliver: Callable[[], None] = functools.partial(self._deliver, conn, conn.epoch, src, dst, message)
            heapq.heappush(self._events, (arrive, next(self._seq), deliver))

    def _deliver(self, conn: _Connection, epoch: int, src: str, dst: str, message: Message) -> None:
        region = self.regions[dst]
        if conn.up and conn.epoch == epoch and region.up:
            region.receive(src, message)

    def break_connection(self, a: str, b: str, why: str) -> None:
        conn = self.connection(a, b)
        if not conn.up:
            return
        conn.up = False
        conn.epoch += 1
        conn.last_delivery.clear()
        conn.held.clear()
        self.stats["connection_resets"] += 1
        self.trace_line(f"connection {conn.a}-{conn.b} broke: {why}")
        # Each side hears of it as an event of its own, at once, never inside the driver call that is being
        # carried out (a lost send, a close the driver asked for): a host calls its driver one event at a time,
        # and the rest of that call's work (a transfer's next page, say) then finds the connection gone.
        for side, other in ((conn.a, conn.b), (conn.b, conn.a)):
            region = self.regions[side]
            if region.up:
                self.after(0, functools.partial(self._disconnected, region, region.boot, other))
        self._dial_later(conn)

    def _disconnected(self, region: _Region, boot: int, peer: str) -> None:
        if region.up and region.boot == boot:
            region.disconnected(peer)

    def _dial_later(self, conn: _Connection) -> None:
        if conn.dialing:
            return
        conn.dialing = True
        delay = max(1, int(conn.backoff_ms * self.random.uniform(0.5, 1.0)))
        conn.backoff_ms = min(conn.backoff_ms * 2, SETTINGS.reconnect_backoff_max_ms)
        self.after(delay, lambda: self._dial(conn))

    def _dial(self, conn: _Connection) -> None:
        conn.dialing = False
        if conn.up:
            return
        a, b = self.regions[conn.a], self.regions[conn.b]
        if not a.up:
            return  # it dials again when it restarts
        if not b.up or (conn.a, conn.b) in self.cut or (conn.b, conn.a) in self.cut:
            self._dial_later(conn)
            return
        conn.up = True
        conn.epoch += 1
        conn.backoff_ms = 50
        self.trace_line(f"connection {conn.a}-{conn.b} up")
        a.connected(conn.b)
        if conn.up:
            b.connected(conn.a)

    def _watch_cut(self, src: str, dst: str) -> None:
        """Keepalives notice a cut connection after a few seconds; then it breaks."""
        conn = self.connection(src, dst)
        epoch = conn.epoch

        def detect() -> None:
            if conn.up and conn.epoch == epoch and ((conn.a, conn.b) in self.cut or (conn.b, conn.a) in self.cut):
                self.break_connection(conn.a, conn.b, "keepalive timed out")

        self.after(self.random.randint(2_000, 4_000), detect)

    # -- clients ---------------------------------------------------------------------

    def _client(self, client: int) -> None:
        if self._ops_issued >= self.scenario.ops:
            self._clients_done += 1
            return
        self._ops_issued += 1
        op_id = self._next_op
        self._next_op += 1
        region = self.random.choice(self.names)
        f, key, value, operations = self._choose(op_id)
        if self._refusals.random() < _REFUSED_SHARE:
            # Instead of the chosen one (still drawn, so the main stream is unchanged): refused by every store.
            key = f"x/{op_id}"
            f, value, operations = "bad", "type-mismatch", [SetRegister(key, b"x"), Increment(key, 1)]
        idempotency_key = f"c{client}-{op_id}"
        op = Op(op_id, client, region, f, key, value, "unknown", self.now, idempotency_key=idempotency_key)
        request = _Request(op, operations, idempotency_key.encode())
        self._open[op_id] = request
        self._attempt(client, request)

    def _skewed(self, keys: int) -> int:
        """A few hot keys and a long tail of cold ones (a key deleted while cold stays deleted a while)."""
        return min(keys - 1, int(self.random.paretovariate(1.0)) - 1)

    def _choose(self, op_id: int) -> tuple[str, str, str | int | list[str] | None, list[Operation]]:
        r = self.random.random()
        if r < 0.30:
            key = f"r/{self._skewed(_REGISTER_KEYS)}"
            value = f"v{op_id}"
            return "set", key, value, [SetRegister(key, value.encode())]
        if r < 0.55:
            key = f"c/{self.random.randrange(_COUNTER_KEYS)}"
            amount = self.random.choice([-3, -2, -1, 1, 2, 3, 4, 5])
            return "incr", key, amount, [Increment(key, amount)]
        if r < 0.90:
            key = f"s/{self._skewed(_SET_KEYS)}"
            added = self._added.setdefault(key, [])
            if r < 0.78 or not added:
                member = f"m{op_id}"
                added.append(member)
                return "sadd", key, [member], [AddMembers(key, (member,))]
            members = sorted(set(self.random.sample(added, min(2, len(added)))))
            return "srem", key, members, [RemoveMembers(key, tuple(members))]
        # Deletes pick uniformly: they reach the cold keys too.
        key = self.random.choice(
            [f"r/{self.random.randrange(_REGISTER_KEYS)}", f"s/{self.random.randrange(_SET_KEYS)}"]
        )
        return "del", key, None, [DeleteKey(key)]

    def _attempt(self, client: int, request: _Request) -> None:
        request.attempt += 1
        attempt = request.attempt
        region = self.regions[request.op.region]
        latency = self.random.randint(1, 3)
        refused = not region.up
        if region.up:
            request.reached = True
            boot = region.boot

            def arrive() -> None:
                if region.up and region.boot == boot and not request.done:
                    region.submit(request)

            if not (self.drop and self.random.random() < self.drop):  # else the request is lost on the way
                self.after(latency, arrive)

        def deadline() -> None:
            if request.done or request.attempt != attempt:
                return
            if request.attempt < _CLIENT_ATTEMPTS:
                self.stats["client_retries"] += 1
                self._attempt(client, request)  # the same idempotency key: it applies at most once
                return
            request.done = True
            request.op.outcome = "unknown" if request.reached else "fail"
            request.op.error = "no answer within the deadline" if request.reached else "the region was down"
            self._complete(request)

        if refused:
            # Connection refused at once: back off (doubling), long enough to outlast a restart.
            first, most = _CLIENT_BACKOFF_MS
            self.after(latency + min(most, first << (attempt - 1)), deadline)
        else:
            self.after(_CLIENT_DEADLINE_MS, deadline)

    def commit_delay(self, region: str) -> int:
        if "crash" in self.kinds and not self.settling and self.random.random() < _STALL_CHANCE:
            stall = self.random.randint(*_STALL_MS)
            self.record(Nemesis(self.now, "stall", [region], f"the next commit waits {stall} ms"))
            return stall
        return self.random.randint(1, 3)

    def applied(self, region: _Region, request: _Request, result: Applied) -> None:
        """A commit applied ``request``: its token goes on the operation even if its client never hears.

        The checkers then judge a write whose outcome is unknown to its
        client by what it really did (``Meta.detail["ground_truth"]``).
        """
        request.op.token = dict(result.token.vv.items())
        request.op.origin = region.store.origin
        if request.op.f == "set":
            request.op.ts = self._timestamp_of(region, request.op)

    def reply(self, region: _Region, request: _Request, result: object) -> None:
        boot = region.boot
        if self.drop and self.random.random() < self.drop:
            return  # the answer is lost on the way: the client's deadline passes and it retries

        def arrive() -> None:
            # A region that crashed right after the commit may never have sent the answer.
            if request.done or not region.up or region.boot != boot:
                return
            request.done = True
            if isinstance(result, Applied):
                request.op.outcome = "ok"
            else:
                request.op.outcome = "fail"
                request.op.error = str(getattr(result, "error", result))
            self._complete(request)

        self.after(self.random.randint(1, 3), arrive)

    def _timestamp_of(self, region: _Region, op: Op) -> list[int] | None:
        dot = op.dot
        state = region.store.get(op.key)
        slot = state.slots.get(ValueType.REGISTER) if state is not None else None
        if dot is None or not isinstance(slot, Register):
            return None
        # The operation's token ends at its audit record's dot; its write is one of the events the record covers.
        record = region.store.audit_record_at(*dot)
        first = record.first if record is not None else dot[1]
        for sibling in slot.siblings():
            if sibling.dot.region == dot[0] and first <= sibling.dot.counter <= dot[1]:
                return [sibling.timestamp.wall_ms, sibling.timestamp.logical]
        return None  # already overwritten

    def _complete(self, request: _Request) -> None:
        self._open.pop(request.op.id, None)
        request.op.complete_ms = self.now
        self.record(request.op)
        client = request.op.client
        # Think time: 1,000 operations from 8 clients span several seconds, long enough for faults to bite.
        self.after(self.random.randint(0, 100), lambda: self._client(client))

    # -- the nemesis -----------------------------------------------------------------

    def _nemesis(self) -> None:
        if self._clients_done >= self.scenario.clients or not self.kinds:
            return
        kind = self.random.choice(self.kinds)
        # Mostly short faults; now and then a long one, so that the logs move past a region and it needs a repair.
        hold = self.random.randint(3_000, 6_000) if self.random.random() < 0.15 else self.random.randint(300, 3_000)
        heal = getattr(self, f"_fault_{kind}")(hold)
        self.after(hold, heal)
        self.after(hold + self.random.randint(50, 800), self._nemesis)

    def _fault_partition(self, hold: int) -> Callable[[], None]:
        names = list(self.names)
        self.random.shuffle(names)
        shape = self.random.choice(list(PARTITION_SHAPES))
        cut: set[tuple[str, str]] = set()
        pairs = [(a, b) for a in names for b in names if a != b]
        if shape == "isolate":
            cut = {(a, b) for a, b in pairs if names[0] in (a, b)}
        elif shape == "halves":
            small = set(halves(names)[0])
            cut = {(a, b) for a, b in pairs if (a in small) != (b in small)}
        elif shape == "bridge":
            # One region sees both sides; the sides do not see each other.
            bridge, left, _ = bridge_sides(names)
            cut = {(a, b) for a, b in pairs if bridge not in (a, b) and (a in left) != (b in left)}
        elif shape == "ring":
            # Each region sees only its two neighbours.
            near = ring_neighbours(names)
            cut = {(a, b) for a, b in pairs if frozenset((a, b)) not in near}
        elif shape == "one-way":
            cut = {(a, b) for a, b in pairs if self.random.random() < 0.3}
        else:
            # Clog links one by one; they are restored one by one in random order.
            clogged = self.random.sample(pairs, min(len(pairs), self.random.randint(1, len(pairs))))
            for i, (a, b) in enumerate(clogged):
                self.after(i * 100, functools.partial(self._cut, {(a, b), (b, a)}, "clog", "clog"))
            order = list(clogged)
            self.random.shuffle(order)

            def unclog() -> None:
                for i, (a, b) in enumerate(order):
                    self.after(i * 100, functools.partial(self._heal, {(a, b), (b, a)}, "clog", "unclog"))

            return unclog
        self._cut(cut, shape)
        return lambda: self._heal(cut, shape)

    def _cut(self, cut: set[tuple[str, str]], shape: str, event: str = "partition") -> None:
        """Cut the directed links ``cut``; recorded as ``partition`` (``shape; links ...``), or ``clog`` per link."""
        if self.settling:
            return
        fresh = cut - self.cut
        self.cut |= fresh
        if fresh:
            self.record(Nemesis(self.now, event, sorted({r for pair in fresh for r in pair}), _detail(fresh, shape)))
        for src, dst in sorted(fresh):
            self._watch_cut(src, dst)

    def _heal(self, cut: set[tuple[str, str]], shape: str, event: str = "heal") -> None:
        healed = cut & self.cut
        self.cut -= healed
        if healed:
            self.record(Nemesis(self.now, event, sorted({r for pair in healed for r in pair}), _detail(healed, shape)))
        for a, b in sorted(healed):
            conn = self.connection(a, b)
            if not conn.up:
                self._dial_later(conn)
                continue
            held = conn.held.pop(a, [])
            for message in held:
                self._transmit(conn, a, b, message)

    def _fault_crash(self, hold: int) -> Callable[[], None]:
        up = [name for name in self.names if self.regions[name].up]
        if not up:
            return lambda: None
        name = self.random.choice(up)
        self._crash(name)
        return lambda: self._restart(name)

    def _crash(self, name: str) -> None:
        region = self.regions[name]
        if not region.up or self.settling:
            return
        self.record(Nemesis(self.now, "crash", [name], "kill -9: uncommitted requests lost"))
        region.crash()
        for peer in region.peers:
            self.break_connection(name, peer, f"{name} crashed")

    def _restart(self, name: str) -> None:
        region = self.regions[name]
        if region.up:
            return
        region.start()
        self.record(Nemesis(self.now, "restart", [name], "restarted from its data directory"))
        for peer in region.peers:
            self._dial_later(self.connection(name, peer))

    def _fault_disk(self, hold: int) -> Callable[[], None]:
        """A region loses its data directory while another is cut off, and comes back empty before it returns.

        The region cut off may hold the lost region's newest events (nobody
        else does); the lost region must not mint their ids again. Only when
        every region is up, so that what survives elsewhere can be read.
        """
        if len(self.names) < 3 or not all(r.up for r in self.regions.values()):
            return lambda: None
        victim, away = self.random.sample(self.names, 2)
        cut = {(a, b) for a in self.names for b in self.names if a != b and away in (a, b)}
        self._cut(cut, "isolate")
        self.after(self.random.randint(0, hold // 4), functools.partial(self._lose_disk, victim))
        self.after(self.random.randint(hold // 3, hold // 2), functools.partial(self._restart, victim))
        return lambda: self._heal(cut, "isolate")

    def _lose_disk(self, name: str) -> None:
        region = self.regions[name]
        if not region.up or self.settling or not all(r.up for r in self.regions.values()):
            return
        self._crash(name)
        shutil.rmtree(region.path)
        survivors = [r.store.context for n, r in self.regions.items() if n != name]
        lost = 0
        # Writes acknowledged here (durability local) that no other region had yet are gone with the
        # disk: that is what local durability promises. The history says so (the checkers then treat
        # them as never applied); everything else must survive. Clients waiting on this region give up.
        for request in list(self._open.values()):
            if request.op.region == name and request.reached:
                request.done = True
                request.op.outcome = "unknown"
                request.op.error = "its region lost its data directory"
                self._complete(request)
        for record in self.history:
            if isinstance(record, Op) and record.region == name:
                # The audit records only this region had are gone with the rest of its events.
                record.audit = [a for a in record.audit if any(c.contains(Dot(a[1], a[2])) for c in survivors)]
            if isinstance(record, Op) and record.region == name and record.dot is not None:
                origin, counter = record.dot
                if not any(c.contains(Dot(origin, counter)) for c in survivors):
                    record.token = None
                    record.outcome = "unknown" if record.outcome == "ok" else record.outcome
                    record.error = "applied here only, then lost with its region's data directory"
                    lost += 1
        self.stats["disks_lost"] += 1
        self.record(Nemesis(self.now, "disk", [name], f"lost its data directory; {lost} writes only it had are gone"))

    def _fault_clock(self, hold: int) -> Callable[[], None]:
        name = self.random.choice(self.names)
        region = self.regions[name]
        jump = self.random.choice([-1, 1]) * self.random.choice([50, 300, 1_000, 5_000])
        region.offset_ms += jump
        self.record(Nemesis(self.now, "clock", [name], f"jump {jump:+d} ms (offset now {region.offset_ms:+d} ms)"))

        def back() -> None:
            if self.random.random() < 0.5 and not self.settling:
                region.offset_ms -= jump
                detail = f"jump {-jump:+d} ms (back to {region.offset_ms:+d} ms)"
                self.record(Nemesis(self.now, "clock-restore", [name], detail))

        return back

    def _fault_network(self, hold: int) -> Callable[[], None]:
        self.drop = self.random.choice([0.01, 0.05, 0.2])
        self.duplicate = self.random.choice([0.0, 0.02, 0.1])
        self.reorder = self.random.random() < 0.5
        detail = f"drop {self.drop:.0%}, duplicate {self.duplicate:.0%}, reorder {'on' if self.reorder else 'off'}"
        self.record(Nemesis(self.now, "network", list(self.names), detail))

        def calm() -> None:
            if self.settling:
                return
            self.drop = self.duplicate = 0.0
            self.reorder = False
            self.record(Nemesis(self.now, "network-restore", list(self.names), "clean again"))

        return calm

    # -- the run ---------------------------------------------------------------------

    def run(self) -> SimResult:
        try:
            for conn in self.connections.values():
                self._dial_later(conn)
            for client in range(self.scenario.clients):
                self.after(self.random.randint(0, 20), functools.partial(self._client, client))
            if self.kinds:
                self.after(self.random.randint(100, 1_000), self._nemesis)
            while self._events and self._clients_done < self.scenario.clients:
                self._step()
                self.watcher.maybe_step()
            converged_after = self._heal_all_and_settle()
            self.record(self.watcher.finish())
            for region in self.regions.values():
                self.record(region.final_read())
            for region in self.regions.values() if self.scenario.audit else ():
                self.record(region.audit_read())
        finally:
            for region in self.regions.values():
                region.close()
        return self.partial_result(converged_after)

    def partial_result(self, converged_after: int | None = None) -> SimResult:
        """The result so far (after a run, or after one that raised)."""
        text = "\n".join(dump(r) for r in self.history)
        finals = [r for r in self.history if isinstance(r, FinalRead)]
        keys = len(finals[-1].keys) if finals else 0
        stats = dict(self.stats)
        stats["clock_skew_events"] = sum(
            r.skew_events + (r.driver.skew_events if r.up else 0) for r in self.regions.values()
        )
        stats["virtual_ms"] = self.now
        return SimResult(
            self.scenario,
            self.history,
            hashlib.sha256(text.encode()).hexdigest(),
            converged_after,
            self.messages,
            self.bytes,
            keys,
            self.trace,
            stats,
            self.store_seconds,
        )

    def _heal_all_and_settle(self) -> int | None:
        """Heal every fault, then run until every region holds the same state; the time that took."""
        self.settling = True
        self.drop = self.duplicate = 0.0
        self.reorder = False
        self._heal(set(self.cut), "every link")
        for name in self.names:
            self._restart(name)
        # Last, so that the final heal is the history's last nemesis record (restarts included).
        self.record(Nemesis(self.now, "heal", list(self.names), f"{FINAL_HEAL}: every fault healed"))
        for conn in self.connections.values():
            if not conn.up:
                self._dial_later(conn)
        healed_at = self.now
        check_every = 50
        next_check = self.now
        while self._events and self.now - healed_at < _SETTLE_LIMIT_MS:
            if self.now >= next_check:
                next_check = self.now + check_every
                if self._agree():
                    return self.now - healed_at
            self._step()
        return None

    def _agree(self) -> bool:
        if not all(conn.up for conn in self.connections.values()):
            return False
        first, *rest = self.regions.values()
        vector = first.store.context.vv
        if any(r.store.context.vv != vector for r in rest):
            return False
        digests = first.state_digest()
        return all(r.state_digest() == digests for r in rest)


def _detail(pairs: set[tuple[str, str]], what: str) -> str:
    return f"{what}; {links_text(pairs)}"
