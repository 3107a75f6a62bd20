"""Synchronisation cost against the state of the art: bytes per node beside the minimum and beside state-based.

The micro-benchmarks of Enes et al., "Efficient Synchronization of State-based CRDTs" (ICDE 2019), on 15 real
stores and replica cores in virtual time. Run it from the repository root::

    python -m benchmarks.sync_cost              # the paper's 100 rounds, every workload, both overlays
    python -m benchmarks.sync_cost --quick      # 5 rounds: a smoke run (about 20 seconds)
    python -m benchmarks.sync_cost --rounds 30 --only gset,gcounter --topology tree

The paper's setup, what runs here, what is counted and how it differs from the paper:
``benchmarks/METHODS.md``, section "sync_cost".
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import group_parser, print_line
from benchmarks.figures import Baseline, Figure, Stats, write_json
from crdtstore.crdt import HybridLogicalClock, StoreMap, VersionVector, encode
from crdtstore.operations import AddMembers, Increment, Operation, SetRegister
from crdtstore.replica.driver import Driver, Outgoing, Ready, TickTimer, run_inline
from crdtstore.replica.settings import ReplicationSettings
from crdtstore.replica.wire import Entries, Message, RawLogEntry, entry_size, size_of
from crdtstore.storage import Applied, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.replication import ReplicaStore
from simulations.sim import region_names

__all__ = [
    "PARTIAL_MESH",
    "TREE",
    "WORKLOADS",
    "CellResult",
    "Config",
    "Workload",
    "collect",
    "make_config",
    "run_cell",
]

GROUP = "sync_cost"
SECTION = "Synchronisation cost (Enes et al., ICDE 2019): bytes per node, 15 nodes"
NODES = 15

# The node's settings, from where the node takes its defaults.
SETTINGS = ReplicationSettings()
# One update per node per round, as the paper's one event per second.
ROUND_MS = 1000
_WRITE_OFFSET_MS_MAX = 50
_LATENCY_MS = (1, 40)
_SETTLE_MS_MAX = 120_000
_EPOCH_MS = 1_700_000_000_000
GMAP_KEYS = 1000

# The authors' overlays (vitorenesduarte/exp, src/exp_overlay.erl, 15 nodes): node -> neighbours.
TREE: dict[int, tuple[int, ...]] = {
    0: (1, 8, 13),
    1: (0, 6),
    2: (5,),
    3: (10,),
    4: (5,),
    5: (4, 6, 2),
    6: (1, 10, 5),
    7: (13,),
    8: (9, 0, 14),
    9: (8,),
    10: (12, 3, 6),
    11: (13,),
    12: (10,),
    13: (11, 0, 7),
    14: (8,),
}
PARTIAL_MESH: dict[int, tuple[int, ...]] = {
    0: (14, 11, 4, 1),
    1: (2, 5, 0, 12),
    2: (1, 13, 6, 3),
    3: (7, 14, 2, 4),
    4: (8, 0, 5, 3),
    5: (9, 6, 1, 4),
    6: (5, 7, 10, 2),
    7: (3, 11, 6, 8),
    8: (4, 9, 12, 7),
    9: (5, 8, 10, 13),
    10: (11, 6, 9, 14),
    11: (10, 7, 0, 12),
    12: (13, 11, 1, 8),
    13: (12, 2, 9, 14),
    14: (0, 3, 13, 10),
}
TOPOLOGIES: dict[str, dict[int, tuple[int, ...]]] = {"tree": TREE, "mesh": PARTIAL_MESH}

# Delta-based with BP+RR, and state-based: transmission over the minimum (issue 6, from the authors' raw data).
PUBLISHED = {"tree": (1.27, 104.0), "mesh": (3.9, 225.0)}

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    kind: str  # "gset", "gcounter" or "gmap"
    percent: int = 0  # gmap: the share of a node's keys each update writes


WORKLOADS = (
    Workload("gset", "gset"),
    Workload("gcounter", "gcounter"),
    Workload("gmap 10%", "gmap", 10),
    Workload("gmap 30%", "gmap", 30),
    Workload("gmap 60%", "gmap", 60),
    Workload("gmap 100%", "gmap", 100),
)


@dataclass(frozen=True, slots=True)
class Config:
    rounds: int
    workloads: tuple[Workload, ...] = WORKLOADS
    topologies: tuple[str, ...] = ("tree", "mesh")
    seed: int = 1


def make_config(quick: bool, smoke: bool = False) -> Config:
    if smoke:
        return Config(3, (WORKLOADS[0], WORKLOADS[2]))
    return Config(5 if quick else 100)


# -- the network ---------------------------------------------------------------------------


class _Network:
    """Virtual time, and one in-order link each way between neighbours, each with its own fixed latency."""

    def __init__(self, links: Iterable[tuple[str, str]], rng: random.Random) -> None:
        self.now_ms = 0
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.latency_ms = {link: rng.randint(*_LATENCY_MS) for link in sorted(links)}
        self._last_delivery: dict[tuple[str, str], int] = {}
        self.nodes: dict[str, _Node] = {}
        self.in_flight = 0
        # By kind: entries (the log entries alone), envelope (the Entries messages around them), hello,
        # ack, heartbeat (an ack after a quiet anti-entropy period), offer, want, page (state transfer).
        self.bytes: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()

    def after(self, ms: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now_ms + ms, next(self._seq), fn))

    def send(self, src: str, dst: str, message: Message, kind: str = "") -> None:
        kind = kind or type(message).__name__.lower()
        size = size_of(message)
        if isinstance(message, Entries):
            # The entries as the minimum counts them; the message around them apart.
            payload = sum(entry_size(e) for e in message.entries)
            self.bytes["envelope"] += size - payload
            size = payload
        self.bytes[kind] += size
        self.messages[kind] += 1
        arrive = max(self.now_ms + self.latency_ms[(src, dst)], self._last_delivery.get((src, dst), 0))
        self._last_delivery[(src, dst)] = arrive
        self.in_flight += 1

        def deliver() -> None:
            self.in_flight -= 1
            self.nodes[dst].receive(src, message)

        heapq.heappush(self._events, (arrive, next(self._seq), deliver))

    def run_until(self, when_ms: int, stop: Callable[[], bool] | None = None) -> bool:
        """Run every event up to ``when_ms``; with ``stop``, return True as soon as it holds between events."""
        while self._events and self._events[0][0] <= when_ms:
            if stop is not None and stop():
                return True
            at, _, fn = heapq.heappop(self._events)
            self.now_ms = at
            fn()
        self.now_ms = max(self.now_ms, when_ms)
        return stop is not None and stop()


# -- a node: the store, the core, and the node's way of driving them -------------------------


class _Node:
    """A store and the production replication driver, its storage work run inline on the virtual clock."""

    def __init__(self, net: _Network, name: str, peers: Sequence[str], path: Path) -> None:
        self.net = net
        self.name = name
        self.peers = list(peers)
        options = StorageOptions(sync=False, map_size_bytes=16 * 1024 * 1024)
        # Incarnations drawn from the node's name: the same bytes on every run.
        incarnations = random.Random(name)
        self.store = LmdbStore(
            StorageConfig(path, name, options),
            wall_ms=self.wall_ms,
            incarnations=lambda: f"{incarnations.getrandbits(48):012x}",
        )
        self.clock = HybridLogicalClock(self.wall_ms, floor=self.store.hlc_mark)
        self.driver = Driver(name, peers, ReplicaStore(self.store, self.clock, path), SETTINGS)
        self._ticks = TickTimer(self.net.after)

    def wall_ms(self) -> int:
        return _EPOCH_MS + self.net.now_ms

    def close(self) -> None:
        self.store.close()

    # -- events ------------------------------------------------------------------------

    def start(self) -> None:
        for peer in self.peers:
            self._handle(self.driver.connected(peer, self.net.now_ms))

    def write(self, operations: Sequence[Operation]) -> list[RawLogEntry]:
        """Commit one client request; returns the log entries it wrote (what the minimum counts)."""
        before = self.store.context.vv
        (result,) = self.store.write_batch([WriteRequest(list(operations))], self.clock)
        if not isinstance(result, Applied):
            raise RuntimeError(f"{self.name}: the workload's write failed: {result}")
        self._handle(self.driver.local_committed(self.net.now_ms))
        return [RawLogEntry(*e) for e in self.store.log_since(before, SETTINGS.message_bytes_max).entries]

    def receive(self, peer: str, message: Message) -> None:
        self._handle(self.driver.received(peer, message, self.net.now_ms))

    # -- the driver's host --------------------------------------------------------------

    def _handle(self, ready: Ready) -> None:
        wake_at_ms = run_inline(self.driver, ready, self.net.now_ms, send=self._send, close=self._close)
        self._ticks.wake_at(wake_at_ms, self.net.now_ms, lambda: self._handle(self.driver.tick(self.net.now_ms)))

    def _send(self, outgoing: Outgoing) -> None:
        self.net.send(self.name, outgoing.peer, outgoing.message, "heartbeat" if outgoing.heartbeat else "")

    def _close(self, peer: str, why: str) -> None:
        # In-order links that never fail cannot reorder causally related entries.
        raise RuntimeError(f"{self.name}: the driver closed the connection with {peer}: {why}")

    # -- state-based baseline ------------------------------------------------------------------

    def full_state_bytes(self) -> int:
        """The encoded size of this node's whole state: what state-based synchronisation sends."""
        keys, after = self.store.scan("", limit=100_000)
        assert not after, "the workloads stay far below 100,000 keys"
        return len(encode(StoreMap(dict(keys), self.store.context)))


# -- the workloads ----------------------------------------------------------------------------


def _gmap_keys(index: int) -> list[str]:
    """The slice of the 1,000 map keys that node ``index`` writes (the paper's ``KeysPerNode``)."""
    per_node = GMAP_KEYS // NODES + 1
    first = index * per_node + 1
    last = min(GMAP_KEYS, (index + 1) * per_node)
    return [f"m/{k}" for k in range(first, last + 1)]


def _update(workload: Workload, name: str, index: int, round_: int, rng: random.Random) -> list[Operation]:
    if workload.kind == "gset":
        return [AddMembers("events", (f"{name}#{round_}",))]
    if workload.kind == "gcounter":
        return [Increment("events", 1)]
    mine = _gmap_keys(index)
    per_round = min(len(mine), (workload.percent * (GMAP_KEYS // NODES + 1)) // 100 + 1)
    return [SetRegister(key, b"") for key in sorted(rng.sample(mine, per_round))]


# -- one workload on one topology -------------------------------------------------------------


@dataclass
class CellResult:
    workload: Workload
    topology: str
    rounds: int
    nodes: int
    bytes_by_kind: dict[str, int]
    messages_by_kind: dict[str, int]
    minimum_bytes: int  # over all nodes
    # Over all nodes, from the states at the end of each round (everything up to and including it)
    # and, a lower bound, at its start (everything before it).
    state_based_bytes: int
    state_based_bytes_low: int
    agreed_rounds: int  # rounds at whose end every node held the same state
    settle_ms: int  # after the last round's writes, until everything was everywhere
    seconds: float

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_kind.values())

    def per_node(self, total: int) -> float:
        return total / self.nodes

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload.name,
            "topology": self.topology,
            "rounds": self.rounds,
            "nodes": self.nodes,
            "bytes_by_kind": self.bytes_by_kind,
            "messages_by_kind": self.messages_by_kind,
            "bytes_per_node": self.per_node(self.total_bytes),
            "delta_bytes_per_node": self.per_node(self.bytes_by_kind.get("entries", 0)),
            "minimum_bytes_per_node": self.per_node(self.minimum_bytes),
            "state_based_bytes_per_node": self.per_node(self.state_based_bytes),
            "ratio_to_minimum": self.total_bytes / self.minimum_bytes,
            "delta_ratio_to_minimum": self.bytes_by_kind.get("entries", 0) / self.minimum_bytes,
            "state_based_ratio_to_minimum": self.state_based_bytes / self.minimum_bytes,
            "state_based_low_ratio_to_minimum": self.state_based_bytes_low / self.minimum_bytes,
            "agreed_rounds": self.agreed_rounds,
            "settle_ms": self.settle_ms,
            "seconds": self.seconds,
        }


def _scratch_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_cell(workload: Workload, topology: str, rounds: int, seed: int = 1) -> CellResult:
    """Run ``rounds`` rounds of ``workload`` on 15 nodes in ``topology``, and count what went over the links."""
    began = time.perf_counter()
    adjacency = TOPOLOGIES[topology]
    names = region_names(NODES)
    rng = random.Random(f"{seed}/{workload.name}/{topology}")
    links = {(names[a], names[b]) for a, near in adjacency.items() for b in near}
    links |= {(b, a) for a, b in links}
    net = _Network(links, rng)
    offsets = [rng.randrange(_WRITE_OFFSET_MS_MAX) for _ in names]
    minimum = 0
    # At every round boundary (before round 1, between rounds, after the last): what state-based
    # synchronisation would send in one round with the states the nodes hold then, and whether they agree.
    boundaries: list[int] = []
    agreed = 0
    with tempfile.TemporaryDirectory(prefix="crdtstore-sync-cost-", dir=_scratch_root()) as tmp:
        nodes = {
            name: _Node(net, name, sorted(names[p] for p in adjacency[i]), Path(tmp) / name)
            for i, name in enumerate(names)
        }
        net.nodes = nodes
        try:
            for node in nodes.values():
                node.start()
            for round_ in range(rounds):
                # Round 1 starts after a second of connecting: a write racing its link's hello is sent twice.
                start_ms = (round_ + 1) * ROUND_MS
                net.run_until(start_ms)
                boundaries.append(_state_based_round(nodes))
                if round_:
                    agreed += len({node.store.context.vv for node in nodes.values()}) == 1
                for i, (name, node) in enumerate(nodes.items()):

                    def update(node: _Node = node, name: str = name, i: int = i, r: int = round_ + 1) -> None:
                        nonlocal minimum
                        for entry in node.write(_update(workload, name, i, r, rng)):
                            minimum += entry_size(entry) * (NODES - 1)

                    net.after(start_ms + offsets[i] - net.now_ms, update)
            last_write_ms = rounds * ROUND_MS + max(offsets)
            net.run_until(last_write_ms)
            # Every node has written all its rounds: its own counter is final.
            everything = VersionVector({n.store.origin: n.store.context.vv.get(n.store.origin) for n in nodes.values()})

            def settled() -> bool:
                return not net.in_flight and all(node.store.context.vv == everything for node in nodes.values())

            if not net.run_until(last_write_ms + _SETTLE_MS_MAX, settled):
                raise RuntimeError(f"{workload.name} on the {topology}: not settled {_SETTLE_MS_MAX} ms after")
            settle_ms = net.now_ms - last_write_ms
            boundaries.append(_state_based_round(nodes))
            agreed += 1  # settled: the last round ends with every node holding everything
        finally:
            for node in nodes.values():
                node.close()
    return CellResult(
        workload,
        topology,
        rounds,
        NODES,
        dict(net.bytes),
        dict(net.messages),
        minimum,
        state_based_bytes=sum(boundaries[1:]),
        state_based_bytes_low=sum(boundaries[:-1]),
        agreed_rounds=agreed,
        settle_ms=settle_ms,
        seconds=time.perf_counter() - began,
    )


def _state_based_round(nodes: dict[str, _Node]) -> int:
    """Bytes state-based synchronisation sends in one round: each node's whole state to each neighbour."""
    sizes: dict[VersionVector, int] = {}
    total = 0
    for node in nodes.values():
        vv = node.store.context.vv
        if vv not in sizes:
            # The state is a function of the events applied, so nodes with one vector hold one state.
            sizes[vv] = node.full_state_bytes()
        total += sizes[vv] * len(node.peers)
    return total


# -- figures ------------------------------------------------------------------------------------


def _count(value: float) -> Stats:
    return Stats(value, value, value, "bytes")


def figures_of(cell: CellResult) -> list[Figure]:
    delta_target, state_target = PUBLISHED[cell.topology]
    params: dict[str, float | int | str] = {
        "workload": cell.workload.name,
        "topology": cell.topology,
        "rounds": cell.rounds,
        "nodes": cell.nodes,
        "published_delta_bp_rr": delta_target,
        "published_state_based": state_target,
    }
    minimum = Baseline("minimum: each update once to each node", _count(cell.per_node(cell.minimum_bytes)), 1)
    state = Baseline(
        "state-based: whole state to each neighbour each round", _count(cell.per_node(cell.state_based_bytes)), 1
    )
    label = f"{cell.workload.name}, {cell.topology}"
    kinds = ", ".join(f"{kind} {cell.per_node(b):,.0f} B" for kind, b in sorted(cell.bytes_by_kind.items()))
    return [
        Figure(
            GROUP,
            SECTION,
            f"{label}: crdtstore, every message",
            _count(cell.per_node(cell.total_bytes)),
            1,
            (minimum, state),
            target=f"below {delta_target}x the minimum (delta-based BP+RR, Enes et al.)",
            better="lower",
            params={**params, "counted": "all"},
            note=f"per node: {kinds}",
        ),
        Figure(
            GROUP,
            SECTION,
            f"{label}: crdtstore, deltas only",
            _count(cell.per_node(cell.bytes_by_kind.get("entries", 0))),
            1,
            (minimum,),
            better="lower",
            params={**params, "counted": "entries"},
            note="Entries messages only: acks, hellos and heartbeats left out (the paper counts payload apart from "
            "metadata)",
        ),
        Figure(
            GROUP,
            SECTION,
            f"{label}: state-based (computed)",
            state.stats,
            1,
            (minimum,),
            target=f"Enes et al. measured {state_target:g}x the minimum",
            better="lower",
            params={**params, "counted": "state-based"},
            note="each node's whole encoded state (codec) to each neighbour once per round",
        ),
    ]


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    figures: list[Figure] = []
    cells: list[dict[str, Any]] = []
    log(f"{NODES} nodes, {cfg.rounds} rounds of {ROUND_MS} ms, seed {cfg.seed}")
    log(
        f"{'workload':<10} {'topology':<5} {'ours/min':>9} {'deltas/min':>10} {'state/min':>10} "
        f"{'ours/state':>10} {'B/node':>12} {'settle ms':>9} {'s':>6}"
    )
    for topology in cfg.topologies:
        for workload in cfg.workloads:
            step(f"{workload.name} on the {topology}, {cfg.rounds} rounds")
            cell = run_cell(workload, topology, cfg.rounds, cfg.seed)
            summary = cell.as_json()
            cells.append(summary)
            figures += figures_of(cell)
            log(
                f"{workload.name:<10} {topology:<5} {summary['ratio_to_minimum']:>9.2f} "
                f"{summary['delta_ratio_to_minimum']:>10.2f} {summary['state_based_ratio_to_minimum']:>10.1f} "
                f"{cell.total_bytes / cell.state_based_bytes:>10.4f} {summary['bytes_per_node']:>12,.0f} "
                f"{cell.settle_ms:>9} {cell.seconds:>6.1f}"
            )
    detail = {
        "rounds": cfg.rounds,
        "nodes": NODES,
        "seed": cfg.seed,
        "round_ms": ROUND_MS,
        "published": {t: {"delta_bp_rr": d, "state_based": s} for t, (d, s) in PUBLISHED.items()},
        "cells": cells,
    }
    return detail, figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = group_parser("sync_cost", __doc__, "5 rounds instead of the paper's 100")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (updates per node); overrides --quick")
    parser.add_argument("--only", default="", metavar="WORKLOAD[,...]", help="workloads by name, e.g. gset,'gmap 10%%'")
    parser.add_argument("--topology", choices=("tree", "mesh", "both"), default="both")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    cfg = make_config(args.quick)
    workloads = cfg.workloads
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        workloads = tuple(w for w in WORKLOADS if w.name in wanted)
        if not workloads:
            parser.error(f"no workload named {args.only!r}; choose from {', '.join(w.name for w in WORKLOADS)}")
    topologies = ("tree", "mesh") if args.topology == "both" else (args.topology,)
    cfg = Config(args.rounds or cfg.rounds, workloads, topologies, cfg.seed)

    log = print_line

    detail, figures = collect(cfg, log, lambda _: None)
    if args.json is not None:
        write_json(args.json, {"figures": [f.as_json() for f in figures], "detail": detail})
    return 0


if __name__ == "__main__":
    sys.exit(main())
