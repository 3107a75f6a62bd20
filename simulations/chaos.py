"""Real-process chaos runs (Jepsen-style): real nodes, real clients, real faults, the simulator's checkers.

``run_chaos`` starts N ``crdtstore serve`` processes on loopback, peered in a
mesh with a fault-injecting ``LinkProxy`` on every link
(``crdtstore.testing.regions``), or with ``netns=True`` (root on Linux) each in
its own network namespace with packet-drop rules for partitions
(``simulations.netns``). Client threads write through the real gRPC client the
whole time while a nemesis follows a seeded schedule of faults, each held a few
seconds and then healed:

* network faults (the partition shapes of ``simulations.faults``), one at a
  time: isolate one region; halves (one side of half the regions, rounded
  down, and the other; formerly "majority"); a bridge (two sides, one region
  sees both); a ring (each region sees only its two neighbours); one-way
  loss (a region still hears the others but they no longer hear it);
  clogging every link one by one, then restoring them in random order;
* process faults, one at a time, on one region, alongside the network faults:
  kill -9 and restart; SIGSTOP and SIGCONT; a clock offset (the node restarts
  with ``CRDTSTORE_CHAOS_CLOCK_OFFSET_MS``, sometimes inside the bound the
  nodes tolerate, sometimes beyond it, and later restarts with its true clock).

Every operation is one request on one key (``simulations.history`` has the
rules) and is recorded with its outcome: ``ok`` with its causal token, ``fail``
only when the server certainly did not apply it (``INVALID_ARGUMENT``,
``FAILED_PRECONDITION``), ``unknown`` for everything else (``UNAVAILABLE``,
``DEADLINE_EXCEEDED``, a lost connection: the write may have been applied).
After the run everything is healed, the runner waits (bounded) until every
region reads the same, and records one final read per region; once the nodes
have stopped it reads each region's audit trail from its data directory
(``simulations.audit``), so the checkers also ask that every acknowledged
mutation has exactly one record in every region, and every request built to
be refused (a few percent: a type mismatch inside one request, an empty key)
exactly one ``refused`` record in every region. Every request carries an
idempotency key of its own (``chaos/<operation id>``), which its records
name. The history goes
through ``simulations.checkers.check``; ``--out DIR`` receives ``history.jsonl``,
``samples.jsonl`` (throughput and lag every half second), ``REPORT.md`` and
``timeline.png``.

The seed fixes the fault schedule and each client's choice of operations; the
interleaving of real processes is not reproducible, so a rerun with the same
seed runs the same faults, not the same history.

Final register reads: the client shows a register's siblings only when there
are several live writes; with one, the region and timestamp of the winner are
not visible through the API, so its single ``Sibling`` has ``region=""`` and
``ts=[]`` (the checkers only compare timestamps when every sibling has one).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import platform
import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import grpc

from crdtstore.client import Client, ClientError, Entry, WriteResult
from crdtstore.crdt import VersionVector, decode_as
from crdtstore.node.main import CLOCK_OFFSET_ENV
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.storage import LmdbStore, StorageConfig
from crdtstore.testing.process import ServerProcess
from crdtstore.testing.regions import RegionProcesses, snapshot
from simulations.audit import read_trail
from simulations.checkers import CheckResult, Violation, check
from simulations.faults import (
    FINAL_HEAL,
    PARTITION_SHAPES,
    RUNNER_KINDS,
    SHAPE_ALIASES,
    bridge_sides,
    halves,
    links_text,
    parse_faults,
    ring_neighbours,
)
from simulations.faults import region_names as _region_names
from simulations.history import AuditRead, FinalRead, KeyRead, Meta, Nemesis, Op, Record, Sibling, write_jsonl
from simulations.netns import NamespacedRegions, netns_unavailable
from simulations.timeline import Sample, Span, fault_spans, fenced_spans, render_timeline

__all__ = [
    "NEMESES",
    "NETWORK_FAULTS",
    "PROCESS_FAULTS",
    "QUIET_TAIL_S",
    "ChaosResult",
    "Cluster",
    "Fault",
    "add_arguments",
    "clock_fences",
    "main",
    "parse_nemeses",
    "plan_faults",
    "region_names",
    "render_report",
    "reproduce_command",
    "run_chaos",
]

# -- what runs ---------------------------------------------------------------------------

REGISTER_KEYS = tuple(f"r/{i}" for i in range(8))
COUNTER_KEYS = tuple(f"c/{i}" for i in range(4))
SET_KEYS = tuple(f"s/{i}" for i in range(4))
INCREMENTS = (-3, -2, -1, 1, 2, 3, 4, 5)
# Of the requests, this share is built to be refused (``bad``): a register write and an increment of one key in
# one request (refused in the writer's batch), or a write to the empty key (refused before the writer).
REFUSED_SHARE = 0.03
REFUSALS = ("type-mismatch", "invalid-key")

# The partition shapes (simulations.faults), each a fault of the network lane.
NETWORK_FAULTS = tuple(PARTITION_SHAPES)
PROCESS_FAULTS = tuple(k for k in RUNNER_KINDS["chaos"] if k != "partition")
# What --nemesis accepts (comma-separated, as simulations.faults.parse_faults reads it; also none), and the
# faults each name stands for.
NEMESES: dict[str, tuple[str, ...]] = {
    "all": NETWORK_FAULTS + PROCESS_FAULTS,
    **{kind: NETWORK_FAULTS if kind == "partition" else (kind,) for kind in RUNNER_KINDS["chaos"]},
}

REGIONS_MAX = 9
FAULT_HOLD_S_MIN = 1.5
FAULT_HOLD_S_MAX = 4.0
FAULT_GAP_S_MIN = 0.5
FAULT_GAP_S_MAX = 2.0
WARMUP_S = 1.0  # clients write alone first, so the first fault hits a store with data
QUIET_TAIL_S = 1.0  # no fault in the last second before the final heal
# Clock offsets: inside the bound the nodes tolerate (500 ms by default) the
# timestamps are skewed but accepted; beyond it the node fences itself.
CLOCK_OFFSET_MS_TOLERATED = (150, 450)
CLOCK_OFFSET_MS_FENCED = (1000, 3000)

OP_TIMEOUT_S = 1.0  # the deadline of each attempt
OP_RETRIES_MAX = 2  # UNAVAILABLE only, with the same idempotency key
ERROR_BACKOFF_S = (0.05, 0.15)  # a client whose request failed waits this long before its next one
SAMPLE_INTERVAL_S = 0.5
STATUS_TIMEOUT_S = 0.4
CONVERGENCE_TIMEOUT_S = 60.0
RESTART_ATTEMPTS_MAX = 2  # a restart whose port was taken meanwhile gets a second try
CLOCK_RESTART_GRACE_S = 1.0
# Bounds a client's last request (about 3.5 s) and a nemesis's last restart (up to 2 x 30 s to start).
THREAD_JOIN_TIMEOUT_S = 65.0
ERROR_TEXT_CHARS_MAX = 200
REPORT_VIOLATIONS_MAX = 200
REPORT_ERRORS_MAX = 10
ERROR_SHOWN_CHARS = 110

# Failures where the server certainly applied nothing. UNAVAILABLE is not one:
# the node may have applied the batch and died before answering.
_CERTAIN_FAILURES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})


def region_names(count: int) -> list[str]:
    """The regions of a chaos run: ``simulations.faults.region_names``, 2 to ``REGIONS_MAX`` of them."""
    return _region_names(count, least=2, most=REGIONS_MAX, what="a chaos run")


def parse_nemeses(spec: str) -> tuple[str, ...]:
    """``all``, ``partition``, ``crash``, ``pause``, ``clock`` or a comma-separated mix -> the faults to plan.

    The spec is read as every fault spec is (``simulations.faults.parse_faults``); ``partition`` stands for
    every shape of ``NETWORK_FAULTS``.
    """
    kinds: list[str] = []
    for kind in parse_faults(spec, "chaos"):
        kinds += [fault for fault in NEMESES[kind] if fault not in kinds]
    return tuple(kinds)


# -- the schedule --------------------------------------------------------------------------

Link = tuple[str, str]


@dataclass(frozen=True)
class Fault:
    """One planned fault: what, where, when (seconds from the start) and for how long.

    ``links`` are cut both ways, except for ``one-way`` (sender, receiver) pairs;
    ``clog`` cuts its ``links`` in that order and restores them in ``restore``'s.
    """

    kind: str
    start_s: float
    hold_s: float
    description: str
    regions: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()
    restore: tuple[Link, ...] = ()
    offset_ms: int = 0

    @property
    def end_s(self) -> float:
        return self.start_s + self.hold_s

    def links_text(self) -> str:
        one_way = self.kind == "one-way"
        return links_text([(a, b) for a, b in self.links] + ([] if one_way else [(b, a) for a, b in self.links]))


def _cross(side_a: Sequence[str], side_b: Sequence[str]) -> tuple[Link, ...]:
    return tuple((min(a, b), max(a, b)) for a in side_a for b in side_b)


def _all_links(names: Sequence[str]) -> list[Link]:
    ordered = sorted(names)
    return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]]


def _network_fault(kind: str, names: Sequence[str], rng: random.Random, start_s: float, hold_s: float) -> Fault:
    shuffled = list(names)
    rng.shuffle(shuffled)
    if kind == "isolate":
        lone, rest = shuffled[0], sorted(shuffled[1:])
        return Fault(kind, start_s, hold_s, f"isolate {lone}", (lone,), _cross([lone], rest))
    if kind == "halves":
        small, big = (sorted(side) for side in halves(shuffled))
        description = f"halves {' '.join(small)} | {' '.join(big)}"
        return Fault(kind, start_s, hold_s, description, tuple(names), _cross(small, big))
    if kind == "bridge":
        bridge, left, right = bridge_sides(shuffled)
        description = f"bridge {bridge} between {' '.join(sorted(left))} | {' '.join(sorted(right))}"
        return Fault(kind, start_s, hold_s, description, tuple(names), _cross(sorted(left), sorted(right)))
    if kind == "ring":
        neighbours = ring_neighbours(shuffled)
        cut = [link for link in _all_links(names) if frozenset(link) not in neighbours]
        return Fault(kind, start_s, hold_s, f"ring {' '.join(shuffled)}", tuple(names), tuple(cut))
    if kind == "one-way":
        sender, receivers = shuffled[0], sorted(shuffled[1:])
        description = f"one-way: {' '.join(receivers)} no longer hear {sender}, which still hears them"
        return Fault(kind, start_s, hold_s, description, (sender,), tuple((sender, r) for r in receivers))
    if kind == "clog":
        links = _all_links(names)
        rng.shuffle(links)
        restore = list(links)
        rng.shuffle(restore)
        return Fault(
            kind,
            start_s,
            hold_s,
            "clog every link one by one, then restore them",
            tuple(names),
            tuple(links),
            tuple(restore),
        )
    raise ValueError(f"unknown network fault {kind!r}")


def _process_fault(kind: str, names: Sequence[str], rng: random.Random, start_s: float, hold_s: float) -> Fault:
    region = rng.choice(list(names))
    if kind == "crash":
        return Fault(kind, start_s, hold_s, f"kill -9 {region}, restart it", (region,))
    if kind == "pause":
        return Fault(kind, start_s, hold_s, f"SIGSTOP {region}, SIGCONT it", (region,))
    if kind == "clock":
        bounds = CLOCK_OFFSET_MS_TOLERATED if rng.random() < 0.5 else CLOCK_OFFSET_MS_FENCED
        offset = rng.randint(*bounds) * rng.choice((-1, 1))
        return Fault(kind, start_s, hold_s, f"{region}'s clock {offset:+d} ms", (region,), offset_ms=offset)
    raise ValueError(f"unknown process fault {kind!r}")


def plan_faults(names: Sequence[str], duration_s: float, seed: int, kinds: Sequence[str]) -> list[Fault]:
    """The seeded fault schedule: two lanes (network, process), each one fault at a time, all healed before the end.

    Within a lane the kinds come from a shuffled bag, so every kind appears
    before any repeats. Shapes that need more regions are left out (a ring of
    three is the full mesh; a bridge needs two sides and a bridge).
    """
    rng = random.Random(seed)
    usable = {
        "bridge": len(names) >= 3,
        "ring": len(names) >= 4,
        "halves": len(names) >= 3,  # of two, the halves are an isolated region
    }
    # A shape may be given by an old name too (``majority``).
    kinds = [SHAPE_ALIASES.get(k, k) for k in kinds]
    lanes = [
        ([k for k in kinds if k in NETWORK_FAULTS and usable.get(k, True)], _network_fault),
        ([k for k in kinds if k in PROCESS_FAULTS], _process_fault),
    ]
    faults: list[Fault] = []
    end_s = duration_s - QUIET_TAIL_S
    for lane_kinds, make in lanes:
        if not lane_kinds:
            continue
        bag: list[str] = []
        t = WARMUP_S + rng.uniform(0, FAULT_GAP_S_MAX)
        while True:
            hold = rng.uniform(FAULT_HOLD_S_MIN, FAULT_HOLD_S_MAX)
            if t + hold > end_s:
                break
            if not bag:
                bag = list(lane_kinds)
                rng.shuffle(bag)
            faults.append(make(bag.pop(), names, rng, round(t, 3), round(hold, 3)))
            t += hold + rng.uniform(FAULT_GAP_S_MIN, FAULT_GAP_S_MAX)
    faults.sort(key=lambda f: f.start_s)
    return faults


# -- the cluster ---------------------------------------------------------------------------


class Cluster(Protocol):
    """What the runner needs of the regions: their processes and their links."""

    names: list[str]
    servers: dict[str, ServerProcess]

    def cut(self, a: str, b: str) -> None: ...

    def cut_one_way(self, sender: str, receiver: str) -> None: ...

    def heal(self, a: str | None = None, b: str | None = None) -> None: ...


# -- recording -----------------------------------------------------------------------------


class _Recorder:
    """Everything the run records; shared by the client threads, the sampler and the nemesis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._next_id = 0
        self.ops: list[Op] = []
        self.nemeses: list[Nemesis] = []
        self.samples: list[Sample] = []
        self.outcomes: Tally[str] = Tally()
        # Members each sadd tried to add, per key: what an srem may remove.
        self.members: dict[str, list[str]] = {key: [] for key in SET_KEYS}
        self.thread_errors: list[BaseException] = []

    def start_clock(self) -> None:
        """Time 0 of the history: when the regions are up and the clients start."""
        self._started = time.monotonic()

    def now_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def next_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def attempted_add(self, key: str, member: str) -> None:
        with self._lock:
            self.members[key].append(member)

    def removable(self, key: str, rng: random.Random) -> str | None:
        with self._lock:
            members = self.members[key]
            return rng.choice(members) if members else None

    def done(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)
            self.outcomes[op.outcome] += 1

    def nemesis(self, event: str, regions: Sequence[str], detail: str = "") -> None:
        with self._lock:
            self.nemeses.append(Nemesis(self.now_ms(), event, list(regions), detail))

    def completed(self) -> Tally[str]:
        with self._lock:
            return Tally(self.outcomes)


def _thread(name: str, recorder: _Recorder, target: Callable[[], None]) -> threading.Thread:
    """A daemon thread whose exception is kept for the runner to raise, not lost to the excepthook."""

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            recorder.thread_errors.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


# -- clients -------------------------------------------------------------------------------


def _choose(
    rng: random.Random, op_id: int, client_id: int, recorder: _Recorder
) -> tuple[str, str, str | int | list[str] | None]:
    """The next operation: (function, key, value); values and members are unique to the operation."""
    roll = rng.random()
    if roll < REFUSED_SHARE:
        how = rng.choice(REFUSALS)
        return "bad", f"x/{op_id}" if how == "type-mismatch" else "", how
    if roll < 0.30:
        return "set", rng.choice(REGISTER_KEYS), f"c{client_id}-{op_id}"
    if roll < 0.55:
        return "incr", rng.choice(COUNTER_KEYS), rng.choice(INCREMENTS)
    if roll < 0.92:
        key = rng.choice(SET_KEYS)
        member = recorder.removable(key, rng) if roll >= 0.80 else None
        if member is not None:
            return "srem", key, [member]
        return "sadd", key, [f"e{op_id}"]
    # Never a counter: a delete concurrent with an increment has semantics the checker cannot judge.
    return "del", rng.choice(REGISTER_KEYS + SET_KEYS), None


def _operations(f: str, key: str, value: str | int | list[str] | None) -> list[Operation]:
    if f == "set":
        assert isinstance(value, str)
        return [SetRegister(key, value.encode())]
    if f == "incr":
        assert isinstance(value, int)
        return [Increment(key, value)]
    if f == "sadd":
        assert isinstance(value, list)
        return [AddMembers(key, tuple(value))]
    if f == "srem":
        assert isinstance(value, list)
        return [RemoveMembers(key, tuple(value))]
    if f == "bad":
        # A type mismatch within the one request, or the empty key: refused whatever the store holds.
        return [SetRegister(key, b"x"), Increment(key, 1)] if value == "type-mismatch" else [SetRegister(key, b"x")]
    return [DeleteKey(key)]


def _send(client: Client, f: str, key: str, value: str | int | list[str] | None, idempotency_key: str) -> WriteResult:
    return client.mutate(_operations(f, key, value), idempotency_key=idempotency_key.encode())


@dataclass(frozen=True)
class _ClientWorker:
    """One client thread: writes to its region until told to stop, and records every outcome."""

    client_id: int
    region: str
    addr: str
    seed: int
    recorder: _Recorder
    stop: threading.Event

    def run(self) -> None:
        rng = random.Random(self.seed)
        with Client(
            self.addr, timeout_s=OP_TIMEOUT_S, retries_max=OP_RETRIES_MAX, backoff_ms_initial=50, backoff_ms_max=250
        ) as client:
            while not self.stop.is_set():
                op = self._one(client, rng)
                self.recorder.done(op)
                if op.outcome != "ok":
                    self.stop.wait(rng.uniform(*ERROR_BACKOFF_S))  # a node that is down is not hammered

    def _one(self, client: Client, rng: random.Random) -> Op:
        recorder = self.recorder
        op_id = recorder.next_id()
        f, key, value = _choose(rng, op_id, self.client_id, recorder)
        if f == "sadd":
            assert isinstance(value, list)
            recorder.attempted_add(key, value[0])
        invoke_ms = recorder.now_ms()
        token: dict[str, int] | None = None
        error = ""
        idempotency_key = f"chaos/{op_id}"
        try:
            result = _send(client, f, key, value, idempotency_key)
        except ClientError as exc:
            outcome = "fail" if exc.code in _CERTAIN_FAILURES else "unknown"
            error = f"{exc.code.name}: {exc.message}"[:ERROR_TEXT_CHARS_MAX]
        else:
            outcome = "ok"
            token = dict(decode_as(result.token, VersionVector).items())
        return Op(
            id=op_id,
            client=self.client_id,
            region=self.region,
            f=f,
            key=key,
            value=value,
            outcome=outcome,
            invoke_ms=invoke_ms,
            complete_ms=recorder.now_ms(),
            token=token,
            error=error,
            idempotency_key=idempotency_key,
        )


def _sample_loop(addrs: dict[str, str], recorder: _Recorder, stop: threading.Event) -> None:
    clients = {name: Client(addr, timeout_s=STATUS_TIMEOUT_S, retries_max=0) for name, addr in addrs.items()}
    try:
        last_t, last = recorder.now_ms(), recorder.completed()
        while not stop.wait(SAMPLE_INTERVAL_S):
            lag: dict[str, int | None] = {}
            fenced: list[str] = []
            for name, client in clients.items():
                try:
                    status = client.status()
                except ClientError:
                    lag[name] = None  # down, paused or unreachable
                    continue
                lag[name] = max((peer["behind"] for peer in status["peers"]), default=0)
                if status["clock_fenced"]:
                    fenced.append(name)
            t, now = recorder.now_ms(), recorder.completed()
            seconds = max(0.001, (t - last_t) / 1000)
            answered = [v for v in lag.values() if v is not None]
            sample = Sample(
                t_ms=t,
                ok_per_s=round((now["ok"] - last["ok"]) / seconds, 1),
                not_ok_per_s=round((now["fail"] + now["unknown"] - last["fail"] - last["unknown"]) / seconds, 1),
                lag_events=max(answered) if answered else None,
                lag_by_region=lag,
                fenced=fenced,
            )
            recorder.samples.append(sample)
            last_t, last = t, now
    finally:
        for client in clients.values():
            client.close()


# -- the nemesis ---------------------------------------------------------------------------


class _Nemesis:
    """Injects and heals faults on the cluster, and records each as a nemesis event."""

    def __init__(self, cluster: Cluster, recorder: _Recorder) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.crashed: set[str] = set()
        self.paused: set[str] = set()
        self.clocked: set[str] = set()

    def run_lane(self, faults: Sequence[Fault], until_s: float, stop: threading.Event) -> None:
        """Inject ``faults`` one after the other, each at its time (or when the one before it ended) for its hold.

        A fault that could not end by ``until_s`` is not started; ``stop`` ends the lane at once (the final heal
        undoes whatever is still in place).
        """
        for fault in faults:
            if not self._wait_until(fault.start_s, stop) or self._now_s() + fault.hold_s > until_s:
                return
            started_s = self._now_s()
            if fault.kind == "clog":
                # Links go one by one over the first half of the hold and come back, in another order, over the second.
                pace_s = fault.hold_s / 2 / max(1, len(fault.links))
                for i, link in enumerate(fault.links):
                    if not self._wait_until(started_s + i * pace_s, stop):
                        return
                    self.cluster.cut(*link)
                    self.recorder.nemesis("clog", link, f"clog; {links_text([link, link[::-1]])}")
                for i, link in enumerate(fault.restore):
                    if not self._wait_until(started_s + fault.hold_s / 2 + (i + 1) * pace_s, stop):
                        return
                    self.cluster.heal(*link)
                    self.recorder.nemesis("unclog", link, f"clog; {links_text([link, link[::-1]])}")
                continue
            self._start_fault(fault)
            in_place_s = self._now_s()  # a restart with a shifted clock takes a moment before the fault holds
            if not self._wait_until(in_place_s + fault.hold_s, stop):
                return
            self._end_fault(fault)

    def _now_s(self) -> float:
        return self.recorder.now_ms() / 1000

    def _wait_until(self, at_s: float, stop: threading.Event) -> bool:
        """Wait until ``at_s`` on the run's clock; False if told to stop first."""
        return not stop.wait(max(0.0, at_s - self._now_s()))

    def _start_fault(self, fault: Fault) -> None:
        if fault.kind in NETWORK_FAULTS:
            self._partition(fault, start=True)
        elif fault.kind == "crash":
            self._crash(fault.regions[0])
        elif fault.kind == "pause":
            self._pause(fault.regions[0])
        elif fault.kind == "clock":
            self._set_clock(fault.regions[0], fault.offset_ms)

    def _end_fault(self, fault: Fault) -> None:
        if fault.kind in NETWORK_FAULTS:
            self._partition(fault, start=False)
        elif fault.kind == "crash":
            self._restart(fault.regions[0])
        elif fault.kind == "pause":
            self._resume(fault.regions[0])
        elif fault.kind == "clock":
            self._set_clock(fault.regions[0], 0)

    def _partition(self, fault: Fault, *, start: bool) -> None:
        for a, b in fault.links:
            if not start:
                self.cluster.heal(a, b)
            elif fault.kind == "one-way":
                self.cluster.cut_one_way(a, b)
            else:
                self.cluster.cut(a, b)
        self.recorder.nemesis(
            "partition" if start else "heal", fault.regions, f"{fault.description}; {fault.links_text()}"
        )

    def _crash(self, region: str) -> None:
        self.cluster.servers[region].kill()
        self.crashed.add(region)
        self.paused.discard(region)
        self.recorder.nemesis("crash", [region], "kill -9")

    def _start(self, region: str) -> None:
        server = self.cluster.servers[region]
        for attempt in range(RESTART_ATTEMPTS_MAX):
            try:
                server.start()
                return
            except RuntimeError:
                if attempt == RESTART_ATTEMPTS_MAX - 1:
                    raise
                time.sleep(0.5)

    def _restart(self, region: str) -> None:
        self._start(region)
        self.crashed.discard(region)
        self.recorder.nemesis("restart", [region])

    def _pause(self, region: str) -> None:
        self.cluster.servers[region].pause()
        self.paused.add(region)
        self.recorder.nemesis("pause", [region], "SIGSTOP")

    def _resume(self, region: str) -> None:
        self.cluster.servers[region].resume()
        self.paused.discard(region)
        self.recorder.nemesis("resume", [region], "SIGCONT")

    def _set_clock(self, region: str, offset_ms: int) -> None:
        """Restart ``region`` with its clock shifted by ``offset_ms``, or with its true clock for 0.

        SIGTERM first, then SIGKILL if it has not stopped within ``CLOCK_RESTART_GRACE_S``: what it acknowledged
        is fsynced either way, and a node with inbound replication streams can take its whole drain grace to stop.
        """
        server = self.cluster.servers[region]
        try:
            server.stop(timeout_s=CLOCK_RESTART_GRACE_S)
        except subprocess.TimeoutExpired:
            server.kill()
        if offset_ms:
            server.env[CLOCK_OFFSET_ENV] = str(offset_ms)
        else:
            server.env.pop(CLOCK_OFFSET_ENV, None)
        self._start(region)
        if offset_ms:
            self.clocked.add(region)
            self.recorder.nemesis(
                "clock", [region], f"{offset_ms:+d} ms: restarted with {CLOCK_OFFSET_ENV}={offset_ms}"
            )
        else:
            self.clocked.discard(region)
            self.recorder.nemesis("clock-restore", [region], "restarted with its true clock")

    def heal_everything(self) -> None:
        """Resume the paused, restart the crashed, restore true clocks, heal every link."""
        for region in sorted(self.paused):
            self._resume(region)
        for region in sorted(self.crashed):
            self._restart(region)
        for region in sorted(self.clocked):
            self._set_clock(region, 0)
        self.cluster.heal()
        self.recorder.nemesis("heal", self.cluster.names, f"{FINAL_HEAL}: every link healed, every region running")

    def release_processes(self) -> None:
        """On the way out after a failure: no process may stay stopped, or it could not be stopped."""
        for region in self.paused:
            with contextlib.suppress(Exception):
                self.cluster.servers[region].resume()


# -- convergence and final reads -----------------------------------------------------------


def _key_read(entry: Entry) -> KeyRead | None:
    value = entry.value
    if entry.type == "register" and isinstance(value, bytes):
        shown = value.decode("utf-8", "backslashreplace")
        siblings = [
            Sibling(s.value.decode("utf-8", "backslashreplace"), s.region, [s.wall_ms, s.logical])
            for s in entry.siblings
        ]
        # One live write: the API shows no sibling, so the winner's region and timestamp are unknown here.
        return KeyRead("register", shown, siblings or [Sibling(shown, "", [])])
    if entry.type == "counter" and isinstance(value, int):
        return KeyRead("counter", value)
    if entry.type == "set" and isinstance(value, frozenset):
        return KeyRead("set", sorted(value))
    return None


def _final_read(region: str, client: Client) -> tuple[FinalRead, list[Violation]]:
    keys: dict[str, KeyRead] = {}
    conflicts: list[Violation] = []
    for entry in client.scan("", page_size=1000):
        read = _key_read(entry)
        if read is not None:
            keys[entry.key] = read
        if entry.conflicts:
            slots = ", ".join(c.type for c in entry.conflicts)
            conflicts.append(
                Violation("type", entry.key, f"region {region} holds conflicting {slots} slots beside the {entry.type}")
            )
    digest = hashlib.sha256("\n".join(snapshot(client)).encode()).hexdigest()
    return FinalRead(region, keys, digest), conflicts


def _views(clients: dict[str, Client]) -> dict[str, tuple[list[str], bytes]] | None:
    try:
        return {name: (snapshot(client), client.status()["token"]) for name, client in clients.items()}
    except ClientError:
        return None


def _wait_converged(clients: dict[str, Client], timeout_s: float) -> bool:
    """Poll until every region shows the same data and the same vector, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        views = _views(clients)
        if views is not None and len({json.dumps([v[0], v[1].hex()]) for v in views.values()}) == 1:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


# -- the run -------------------------------------------------------------------------------


@dataclass
class ChaosResult:
    out_dir: Path
    seed: int
    regions: list[str]
    faults: list[Fault]
    records: list[Record]
    check: CheckResult
    samples: list[Sample]
    final_heal_ms: int | None
    converged_ms: int | None  # when every region read the same, after the final heal; None if they did not
    end_ms: int
    command: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.check.ok

    @property
    def convergence_ms(self) -> int | None:
        """How long after the final heal the regions agreed."""
        if self.converged_ms is None or self.final_heal_ms is None:
            return None
        return self.converged_ms - self.final_heal_ms

    @property
    def history_path(self) -> Path:
        return self.out_dir / "history.jsonl"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "REPORT.md"

    @property
    def timeline_path(self) -> Path:
        return self.out_dir / "timeline.png"

    def summary(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "regions": self.regions,
            "faults": len(self.faults),
            "ops": self.counts,
            "convergence_ms": self.convergence_ms,
            "clock_fences_ms": {
                region: {"fenced": total, "true_clock": true} for region, (total, true) in clock_fences(self).items()
            },
            "check": self.check.as_dict(),
            "out": str(self.out_dir),
            "command": self.command,
        }


def reproduce_command(
    *, regions: int, duration_s: float, out_dir: Path, seed: int, nemeses: str, clients: int, netns: bool
) -> str:
    parts = [
        "python -m simulations chaos",
        f"--regions {regions}",
        f"--duration {duration_s:g}",
        f"--seed {seed}",
        f"--nemesis {nemeses}",
        f"--clients {clients}",
        f"--out {shlex.quote(str(out_dir))}",
    ]
    return " ".join(parts + (["--netns"] if netns else []))


@contextlib.contextmanager
def _cluster(root: Path, names: Sequence[str], netns: bool) -> Iterator[Cluster]:
    if netns:
        with NamespacedRegions(root, names) as regions:
            yield regions
    else:
        with RegionProcesses(root, names) as processes:
            yield processes


@dataclass
class _Ending:
    """What the run's last phase found: when it healed, when the regions agreed, and what each read."""

    final_heal_ms: int | None = None
    converged_ms: int | None = None
    finals: list[FinalRead] = field(default_factory=list)
    conflicts: list[Violation] = field(default_factory=list)
    # Where each region keeps its data (its directory and region name), to read its audit trail once stopped.
    data_dirs: dict[str, tuple[Path, str]] = field(default_factory=dict)
    trails: list[AuditRead] = field(default_factory=list)


@dataclass(frozen=True)
class _Settings:
    names: list[str]
    kinds: tuple[str, ...]
    duration_s: float
    clients: int
    seed: int


def _settings(regions: int, duration_s: float, nemeses: str, clients: int | None, seed: int) -> _Settings:
    names = region_names(regions)
    kinds = parse_nemeses(nemeses)
    if not duration_s > 0:
        raise ValueError(f"the duration must be positive, not {duration_s}")
    count = clients if clients is not None else 2 * regions
    if count < 1:
        raise ValueError(f"a chaos run needs at least one client, not {count}")
    return _Settings(names, kinds, duration_s, count, seed)


def run_chaos(
    regions: int,
    duration_s: float,
    out_dir: Path,
    *,
    seed: int,
    nemeses: str = "all",
    clients: int | None = None,
    netns: bool = False,
    keep_data: bool = False,
) -> ChaosResult:
    """One chaos run; writes the history, samples, report and timeline into ``out_dir``."""
    settings = _settings(regions, duration_s, nemeses, clients, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir / "regions"
    if root.exists():
        shutil.rmtree(root)
    command = reproduce_command(
        regions=regions,
        duration_s=duration_s,
        out_dir=out_dir,
        seed=seed,
        nemeses=nemeses,
        clients=settings.clients,
        netns=netns,
    )
    faults = plan_faults(settings.names, duration_s, seed, settings.kinds)
    meta = _meta(settings, nemeses, netns, command, faults)
    recorder = _Recorder()
    ending = _Ending()
    try:
        with _cluster(root, settings.names, netns) as cluster:
            ending.data_dirs = {
                name: (Path(cluster.servers[name].data_dir), cluster.servers[name].region) for name in settings.names
            }
            _drive(cluster, settings, faults, recorder, ending)
        if len(ending.finals) == len(settings.names):
            ending.trails = [_audit_read(name, *where) for name, where in ending.data_dirs.items()]
    finally:
        # Also after a failure or Ctrl-C: what happened so far is worth reading.
        events: list[Record] = [*recorder.ops, *recorder.nemeses]
        records: list[Record] = [meta, *sorted(events, key=_record_time), *ending.finals, *ending.trails]
        write_jsonl(out_dir / "history.jsonl", records)
        _write_samples(out_dir / "samples.jsonl", recorder.samples)
        if not keep_data:
            _remove_data(root, settings.names)
    if recorder.thread_errors:
        raise RuntimeError(f"a chaos thread failed: {recorder.thread_errors[0]!r}") from recorder.thread_errors[0]
    result = ChaosResult(
        out_dir=out_dir,
        seed=seed,
        regions=settings.names,
        faults=faults,
        records=records,
        check=check(records),
        samples=list(recorder.samples),
        final_heal_ms=ending.final_heal_ms,
        converged_ms=ending.converged_ms,
        end_ms=recorder.now_ms(),
        command=command,
        counts=_op_counts(recorder.ops),
    )
    result.check.violations.extend(ending.conflicts)
    if result.convergence_ms is None:
        detail = f"the regions did not read the same within {CONVERGENCE_TIMEOUT_S:g} s of the final heal"
        result.check.violations.append(Violation("diverged", "", detail))
    verdict = "no violations" if result.ok else f"{len(result.check.violations)} violations"
    render_timeline(
        result.timeline_path,
        regions=settings.names,
        records=records,
        samples=result.samples,
        end_ms=result.end_ms,
        final_heal_ms=result.final_heal_ms,
        converged_ms=result.converged_ms,
        title=f"chaos: {regions} regions, {duration_s:g} s, seed {seed}, nemesis {nemeses}: {verdict}",
    )
    result.report_path.write_text(render_report(result), encoding="utf-8")
    return result


def _meta(settings: _Settings, nemeses: str, netns: bool, command: str, faults: Sequence[Fault]) -> Meta:
    detail: dict[str, object] = {
        "duration_s": settings.duration_s,
        "clients": settings.clients,
        "netns": netns,
        "keys": {"register": list(REGISTER_KEYS), "counter": list(COUNTER_KEYS), "set": list(SET_KEYS)},
        "op_timeout_s": OP_TIMEOUT_S,
        "op_retries_max": OP_RETRIES_MAX,
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "command": command,
        "plan": [asdict(f) for f in faults],
        # A request whose client gave up is applied, if at all, within this long: at worst it
        # waited in a paused node for the longest pause, then committed (simulations.checkers).
        "linger_ms": int(FAULT_HOLD_S_MAX * 1000) + 2000,
    }
    return Meta("chaos", settings.names, settings.seed, nemeses, detail)


def _drive(
    cluster: Cluster, settings: _Settings, faults: Sequence[Fault], recorder: _Recorder, ending: _Ending
) -> None:
    """Clients, sampler and the two nemesis lanes in threads; then heal, wait for agreement and read every region."""
    nemesis = _Nemesis(cluster, recorder)
    stop = threading.Event()  # clients and nemeses
    stop_sampling = threading.Event()  # the sampler goes on through the final heal, to show the lag draining
    workers: list[threading.Thread] = []
    sampler: list[threading.Thread] = []
    addrs = {name: cluster.servers[name].addr for name in settings.names}
    try:
        recorder.start_clock()
        for c in range(settings.clients):
            region = settings.names[c % len(settings.names)]
            worker = _ClientWorker(c, region, addrs[region], settings.seed * 1000 + c, recorder, stop)
            workers.append(_thread(f"chaos-client-{c}", recorder, worker.run))
        sampler.append(_thread("chaos-sampler", recorder, lambda: _sample_loop(addrs, recorder, stop_sampling)))
        # Two lanes of faults, each in its own thread: network faults touch only links, process faults only
        # processes, so they mix without stepping on each other.
        until_s = settings.duration_s - QUIET_TAIL_S
        for lane, kinds in (("network", NETWORK_FAULTS), ("process", PROCESS_FAULTS)):
            lane_faults = [f for f in faults if f.kind in kinds]
            workers.append(_thread(f"chaos-{lane}-nemesis", recorder, _lane(nemesis, lane_faults, until_s, stop)))
        stop.wait(max(0.0, settings.duration_s - recorder.now_ms() / 1000))
        stop.set()
        _join(workers, strict=True)
        if recorder.thread_errors:
            return  # the run failed; run_chaos raises the error
        nemesis.heal_everything()
        ending.final_heal_ms = recorder.now_ms()
        readers = {name: Client(addr, timeout_s=5, retries_max=5) for name, addr in addrs.items()}
        try:
            if _wait_converged(readers, CONVERGENCE_TIMEOUT_S):
                ending.converged_ms = recorder.now_ms()
            stop_sampling.wait(2 * SAMPLE_INTERVAL_S)  # a sample or two after convergence, for the picture
            stop_sampling.set()
            for name in settings.names:
                final, conflicts = _final_read(name, readers[name])
                ending.finals.append(final)
                ending.conflicts += conflicts
        finally:
            for reader in readers.values():
                reader.close()
    finally:
        stop.set()
        stop_sampling.set()
        _join([*workers, *sampler], strict=False)  # an error on the way here is the one to report
        nemesis.release_processes()


def _audit_read(name: str, data_dir: Path, region: str) -> AuditRead:
    """The audit trail of a stopped region, read from its data directory."""
    store = LmdbStore(StorageConfig(data_dir, region))
    try:
        return read_trail(name, store, store.context.vv)
    finally:
        store.close()


def _lane(nemesis: _Nemesis, faults: Sequence[Fault], until_s: float, stop: threading.Event) -> Callable[[], None]:
    return lambda: nemesis.run_lane(faults, until_s, stop)


def _join(threads: Sequence[threading.Thread], *, strict: bool) -> None:
    deadline = time.monotonic() + THREAD_JOIN_TIMEOUT_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    if stuck and strict:
        raise RuntimeError(f"threads did not stop within {THREAD_JOIN_TIMEOUT_S:g} s: {stuck}")


def _record_time(record: Record) -> int:
    if isinstance(record, Op):
        return record.complete_ms if record.complete_ms is not None else record.invoke_ms
    if isinstance(record, Nemesis):
        return record.at_ms
    return 0


def _write_samples(path: Path, samples: Sequence[Sample]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(asdict(sample), sort_keys=True) + "\n")


def _remove_data(root: Path, names: Sequence[str]) -> None:
    """The regions' LMDB directories go; their logs stay beside the report."""
    for name in names:
        shutil.rmtree(root / name, ignore_errors=True)


def _op_counts(ops: Sequence[Op]) -> dict[str, int]:
    counts: dict[str, int] = {"ops": len(ops)}
    for op in ops:
        counts[op.outcome] = counts.get(op.outcome, 0) + 1
        counts[f"{op.f}:{op.outcome}"] = counts.get(f"{op.f}:{op.outcome}", 0) + 1
    return counts


# -- the report ----------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    return f"mean {sum(values) / len(values):.0f}, median {median:.0f}, min {ordered[0]:.0f}, max {ordered[-1]:.0f}"


def clock_fences(result: ChaosResult) -> dict[str, tuple[int, int]]:
    """Per region that fenced itself: milliseconds fenced in all, and of those while its own clock was not shifted."""
    interval_ms = int(SAMPLE_INTERVAL_S * 1000)
    shifted: dict[str, list[Span]] = {}
    for span in fault_spans(result.records, result.end_ms):
        if span.kind == "clock":
            shifted.setdefault(span.row, []).append(span)
    out: dict[str, tuple[int, int]] = {}
    for span in fenced_spans(result.samples, interval_ms):
        overlap = sum(
            max(0, min(span.end_ms, clock.end_ms) - max(span.start_ms, clock.start_ms))
            for clock in shifted.get(span.row, [])
        )
        total, true_clock = out.get(span.row, (0, 0))
        length = span.end_ms - span.start_ms
        out[span.row] = (total + length, true_clock + length - overlap)
    return out


def render_report(result: ChaosResult) -> str:
    meta = next(r for r in result.records if isinstance(r, Meta))
    ops = [r for r in result.records if isinstance(r, Op)]
    nemeses = [r for r in result.records if isinstance(r, Nemesis)]
    verdict = "PASS: no violations" if result.ok else f"FAIL: {len(result.check.violations)} violations"
    lines = [
        f"# Chaos run, seed {result.seed}: {verdict}",
        "",
        "Reproduce (the same fault schedule and client choices; real processes do not replay the same interleaving):",
        "",
        "```",
        result.command,
        "```",
        "",
        "## What ran",
        "",
        f"- {len(result.regions)} regions ({', '.join(result.regions)}), real `crdtstore serve` processes, "
        + (
            "each in its own network namespace (partitions are packet-drop rules)"
            if meta.detail.get("netns")
            else "on loopback with a fault-injecting proxy on every link"
        ),
        f"- {meta.detail.get('duration_s')} s of writes by {meta.detail.get('clients')} client threads through the "
        f"gRPC client (each attempt {OP_TIMEOUT_S:g} s, {OP_RETRIES_MAX} retries of UNAVAILABLE with the same "
        "idempotency key)",
        f"- keys: {len(REGISTER_KEYS)} registers (r/), {len(COUNTER_KEYS)} counters (c/), {len(SET_KEYS)} sets (s/)",
        f"- nemesis: {meta.faults}; {len(result.faults)} faults planned",
        f"- started {meta.detail.get('started_utc')} on {meta.detail.get('host')}, Python {meta.detail.get('python')}",
        "",
        "## Nemesis events",
        "",
        "| at (s) | event | regions | detail |",
        "|---:|---|---|---|",
    ]
    lines += [f"| {n.at_ms / 1000:.2f} | {n.event} | {' '.join(n.regions)} | {n.detail} |" for n in nemeses]
    lines += ["", "## Operations", "", "| function | ok | fail | unknown |", "|---|---:|---:|---:|"]
    for f in ("set", "incr", "sadd", "srem", "del"):
        row = [sum(1 for op in ops if op.f == f and op.outcome == o) for o in ("ok", "fail", "unknown")]
        lines.append(f"| {f} | {row[0]} | {row[1]} | {row[2]} |")
    totals = [sum(1 for op in ops if op.outcome == o) for o in ("ok", "fail", "unknown")]
    lines.append(f"| **all {len(ops)}** | {totals[0]} | {totals[1]} | {totals[2]} |")
    errors = Tally(op.error[:ERROR_SHOWN_CHARS] for op in ops if op.error)
    if errors:
        lines += ["", "Errors behind the failed and unknown outcomes:", "", "| count | error |", "|---:|---|"]
        lines += [f"| {n} | {text} |" for text, n in errors.most_common(REPORT_ERRORS_MAX)]
    lines += ["", "## Clock fences", ""]
    fences = clock_fences(result)
    if not fences:
        lines.append("- no region refused writes because of its clock")
    for region, (total_ms, true_clock_ms) in sorted(fences.items()):
        note = f", {true_clock_ms / 1000:.1f} s of it while its own clock was true" if true_clock_ms else ""
        lines.append(f"- {region} refused writes for its clock (`clock_fenced`) for {total_ms / 1000:.1f} s{note}")
    if any(true_ms for _, true_ms in fences.values()):
        lines += [
            "",
            "A region fenced while its own clock was true measured its peers' clocks wrong: the writes it refused "
            "were refused for nothing. Not a safety violation, and not judged by the checkers.",
        ]
    during = [s for s in result.samples if result.final_heal_ms is None or s.t_ms <= result.final_heal_ms]
    lags = [s.lag_events for s in result.samples if s.lag_events is not None]
    lines += [
        "",
        "## Throughput and replication lag",
        "",
        f"- acknowledged operations per second (every {SAMPLE_INTERVAL_S:g} s): {_stats([s.ok_per_s for s in during])}",
        f"- failed or unknown per second: {_stats([s.not_ok_per_s for s in during])}",
        "- replication lag (most events a region held that a peer had not acknowledged): "
        + (f"max {max(lags)}, last {lags[-1]}" if lags else "no region answered"),
        "",
        "## Convergence",
        "",
    ]
    if result.final_heal_ms is None:
        lines.append("- the run did not reach the final heal")
    elif result.convergence_ms is None:
        lines.append(
            f"- final heal at {result.final_heal_ms / 1000:.2f} s; the regions did **not** read the same "
            f"within {CONVERGENCE_TIMEOUT_S:g} s"
        )
    else:
        lines.append(
            f"- final heal at {result.final_heal_ms / 1000:.2f} s; every region read the same "
            f"{result.convergence_ms} ms later (data and version vector)"
        )
    finals = [r for r in result.records if isinstance(r, FinalRead)]
    digests = {f.digest for f in finals}
    lines.append(f"- final reads: {len(finals)} regions, {len(digests)} distinct state digest(s)")
    lines += [
        "",
        "## Checker verdict",
        "",
        f"**{verdict}**",
        "",
        "Counts: " + ", ".join(f"{k} {v}" for k, v in result.check.counts.items()),
        "",
    ]
    for v in result.check.violations[:REPORT_VIOLATIONS_MAX]:
        lines.append(f"- `{v.kind}` {v.key or '(run)'}: {v.detail}")
    if len(result.check.violations) > REPORT_VIOLATIONS_MAX:
        lines.append(f"- ... and {len(result.check.violations) - REPORT_VIOLATIONS_MAX} more (see `--json`)")
    lines += [
        "",
        "## Files",
        "",
        "- `history.jsonl`: every operation, nemesis event and final read (`simulations.history`)",
        "- `samples.jsonl`: throughput and replication lag samples",
        "- `timeline.png`: faults per region and link, throughput, replication lag, the final heal and convergence",
        "- `regions/*.log`: each node's log",
        "",
        "![timeline](timeline.png)",
        "",
    ]
    return "\n".join(lines)


# -- the command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regions", type=int, default=5, help=f"how many regions (2 to {REGIONS_MAX}; default 5)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of writes under faults (default 60)")
    parser.add_argument("--out", type=Path, default=Path("chaos-out"), help="where the history, report and timeline go")
    parser.add_argument(
        "--seed", type=int, default=None, help="the seed of the fault schedule (default: a random one, printed)"
    )
    parser.add_argument(
        "--nemesis",
        default="all",
        help=f"which faults: all, none, {', '.join(k for k in NEMESES if k != 'all')}, or several comma-separated "
        "(default all)",
    )
    parser.add_argument("--clients", type=int, default=None, help="client threads (default: two per region)")
    parser.add_argument(
        "--netns",
        action="store_true",
        help="each region in its own network namespace, partitions as packet-drop rules (root on Linux, needs ip(8))",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the regions' data directories")
    parser.add_argument("--json", action="store_true", help="print the summary and the checker's verdict as JSON")


def main(args: argparse.Namespace) -> int:
    """Exit codes: 0 when the checkers found nothing, 1 on a violation, 2 for bad arguments, 130 on Ctrl-C."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    try:
        parse_nemeses(args.nemesis)
        region_names(args.regions)
        if args.netns:
            reason = netns_unavailable()
            if reason:
                raise ValueError(f"--netns: {reason}")
    except ValueError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A proxy that cannot reach a killed region says so on every connection: expected here, and noise.
    logging.getLogger("crdtstore.tools.proxy").setLevel(logging.ERROR)
    if not args.json:
        print(
            f"chaos: {args.regions} regions, {args.duration:g} s, seed {seed}, nemesis {args.nemesis} -> {args.out}",
            flush=True,
        )
    try:
        result = run_chaos(
            args.regions,
            args.duration,
            args.out,
            seed=seed,
            nemeses=args.nemesis,
            clients=args.clients,
            netns=args.netns,
            keep_data=args.keep_data,
        )
    except KeyboardInterrupt:
        print(f"chaos: interrupted; the partial history is in {args.out / 'history.jsonl'}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.summary(), indent=2, sort_keys=True))
    else:
        print(_summary_text(result))
    return 0 if result.ok else 1


def _summary_text(result: ChaosResult) -> str:
    c = result.counts
    convergence = (
        "did not converge"
        if result.convergence_ms is None
        else f"converged {result.convergence_ms} ms after the final heal"
    )
    lines = [
        f"ops {c.get('ops', 0)}: ok {c.get('ok', 0)}, fail {c.get('fail', 0)}, unknown {c.get('unknown', 0)}; "
        f"{len(result.faults)} faults; {convergence}",
        f"violations: {len(result.check.violations)}"
        + (f" {result.check.by_kind()}" if result.check.violations else ""),
    ]
    lines += [f"  {v.kind} {v.key}: {v.detail}" for v in result.check.violations[:20]]
    false_fences = {region: true_ms for region, (_, true_ms) in clock_fences(result).items() if true_ms}
    if false_fences:
        shown = ", ".join(f"{region} {ms / 1000:.1f} s" for region, ms in sorted(false_fences.items()))
        lines.append(f"regions that refused writes for their clock while it was true: {shown}")
    lines.append(f"report: {result.report_path}")
    if not result.ok:
        lines.append(f"reproduce: {result.command}")
    return "\n".join(lines)


if __name__ == "__main__":  # ``python -m simulations.chaos``, until ``python -m simulations chaos`` is wired
    _parser = argparse.ArgumentParser(prog="python -m simulations.chaos", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
