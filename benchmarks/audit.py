"""The audit trail's price: durable writes with auditing on against the same writes with it off, and its bytes.

Figures, each beside a baseline measured in the same run:

* single-operation writes per second, and batched writes (``BATCH_OPS``
  operations per request) per second, to a node that audits (the default)
  beside the same writes to a node started with ``[storage] audit = false``;
  durable (``DURABILITY_LOCAL``: acknowledged once fsynced), ``in_flight``
  requests at once so that the writer commits them in groups; the two nodes
  are measured in alternation;
* the store's growth per write (LMDB pages in use, every database: data,
  log, feed, idempotency records), after the same ``bytes_writes`` writes
  to each node, beside the node without auditing;
* the bytes one replication entry takes on the wire (``wire.entry_size`` of
  each entry of the node's delta log, as a peer would be sent it), beside
  the same entries without auditing.

Run it from the repository root::

    python -m benchmarks.audit              # 5 repeats of 5 s per node and kind
    python -m benchmarks.audit --quick      # 3 repeats of 1 s (about 20 s)

Placement and caveats: ``benchmarks/METHODS.md``, section "audit".
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import lmdb

from benchmarks.common import group_main, stats
from benchmarks.figures import Baseline, Figure
from benchmarks.metrics import BATCH_OPS, batched_writes
from benchmarks.node import CHANNEL_OPTIONS, RPC_TIMEOUT_S, closed_loop
from benchmarks.replication import VALUE, Keys, single_op_writes
from crdtstore.crdt import VersionVector
from crdtstore.replica.wire import entry_size
from crdtstore.storage import LmdbStore, StorageConfig
from crdtstore.testing.process import ServerProcess
from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import kv_pb2_grpc as pb_grpc

GROUP = "audit"
SINGLE = "Durable single-operation writes with auditing on"
BATCHED = "Durable batched writes with auditing on"
BYTES = "Audit trail: bytes per write"
TARGET = ">= 0.85x the same run's writes with auditing off"

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Config:
    repeats: int
    duration_s: float
    in_flight: int
    bytes_writes: int  # writes sent to each node for the byte counts


def make_config(quick: bool, repeats: int | None) -> Config:
    if quick:
        return Config(repeats or 3, 1.0, 32, 500)
    return Config(repeats or 5, 5.0, 32, 5_000)


def _audit_off(root: Path) -> Path:
    config = root / "audit-off.toml"
    config.write_text("[storage]\naudit = false\n", encoding="utf-8")
    return config


async def _requests_per_s(server: ServerProcess, requests: Sequence[pb.MutateRequest], cfg: Config) -> float:
    async with grpc.aio.insecure_channel(server.addr, options=CHANNEL_OPTIONS) as channel:
        stub: Any = pb_grpc.KVStub(channel)  # untyped generated code

        async def mutate(request: pb.MutateRequest) -> Any:
            return await stub.Mutate(request, timeout=RPC_TIMEOUT_S)

        await closed_loop(mutate, requests[:50], 50, cfg.in_flight, 1.0)  # warm the connection and the caches
        sample = await closed_loop(mutate, requests[50:], len(requests) - 50, cfg.in_flight, cfg.duration_s)
    return sample.rps


def rates(cfg: Config, root: Path, log: Log, step: Log) -> tuple[list[Figure], dict[str, Any]]:
    on = ServerProcess(root / "on", region="on")
    off = ServerProcess(root / "off", region="off", extra_args=("--config", str(_audit_off(root))))
    kinds: dict[str, tuple[str, Callable[[Keys, int], list[pb.MutateRequest]], int]] = {
        "single": (SINGLE, single_op_writes, 20_000),
        "batched": (BATCHED, batched_writes, 2_000),
    }
    measured: dict[str, dict[str, list[float]]] = {kind: {"on": [], "off": []} for kind in kinds}
    with on, off:
        keys = Keys("bench/{:012d}")
        for repeat in range(cfg.repeats):
            for kind, (_, make, per_s) in kinds.items():
                step(f"{kind} writes, repeat {repeat + 1}/{cfg.repeats}")
                count = 50 + int(per_s * cfg.duration_s)
                runs = [("off", off), ("on", on)]
                # Each node first in turn: neither always meets the machine as the other left it.
                for name, server in runs if repeat % 2 == 0 else reversed(runs):
                    measured[kind][name].append(asyncio.run(_requests_per_s(server, make(keys, count), cfg)))
                ratio = measured[kind]["on"][-1] / measured[kind]["off"][-1]
                log(
                    f"repeat {repeat + 1}, {kind}: {measured[kind]['on'][-1]:,.0f} requests/s auditing, "
                    f"{measured[kind]['off'][-1]:,.0f} not ({ratio:.2f}x)"
                )
    figures = [
        Figure(
            GROUP,
            title,
            f"{'single-operation' if kind == 'single' else f'{BATCH_OPS}-operation'} durable writes, "
            f"{cfg.in_flight} in flight, to a node that audits every request",
            stats(measured[kind]["on"], "writes/s" if kind == "single" else "requests/s"),
            cfg.repeats,
            (
                Baseline(
                    "the same writes to a node with [storage] audit = false",
                    stats(measured[kind]["off"], "writes/s" if kind == "single" else "requests/s"),
                    cfg.repeats,
                ),
            ),
            target=TARGET,
            better="higher",
            params={"in_flight": cfg.in_flight, "ops_per_request": 1 if kind == "single" else BATCH_OPS},
        )
        for kind, (title, _, _) in kinds.items()
    ]
    ratios = {kind: [a / b for a, b in zip(m["on"], m["off"], strict=True)] for kind, m in measured.items()}
    return figures, {"requests_per_s": measured, "ratio_per_repeat": ratios, "in_flight": cfg.in_flight}


def used_bytes(data_dir: Path) -> int:
    """The bytes of LMDB pages in use in a stopped node's directory, over every database (not the file's size,
    which grows in steps)."""
    env = lmdb.open(str(data_dir), readonly=True, lock=False, max_dbs=64, subdir=True)
    try:
        total = 0
        with env.begin() as txn:
            names = [bytes(name) for name, _ in txn.cursor()]  # the main database lists the named ones
            for stat in [env.stat(), *(txn.stat(env.open_db(name, txn=txn, create=False)) for name in names)]:
                total += (stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]) * stat["psize"]
        return total
    finally:
        env.close()


def entry_sizes(data_dir: Path, region: str) -> list[int]:
    """The wire size of every entry of a stopped node's delta log, as a peer that has nothing would be sent it."""
    store = LmdbStore(StorageConfig(data_dir, region))
    try:
        found = store.log_since(VersionVector(), 1 << 40)
        return [entry_size(entry) for entry in found.entries]
    finally:
        store.close()


def sizes(cfg: Config, root: Path, log: Log, step: Log) -> tuple[list[Figure], dict[str, Any]]:
    """The same single-operation writes to a fresh node of each kind; then its pages and its log entries."""
    config = _audit_off(root)
    found: dict[str, dict[str, float]] = {}
    for name, extra in (("on", ()), ("off", ("--config", str(config)))):
        step(f"bytes per write, auditing {name}")
        server = ServerProcess(root / f"bytes-{name}", region=name, extra_args=extra)
        with server:
            requests = single_op_writes(Keys("size/{:012d}"), cfg.bytes_writes + 50)
            # The rate is not a figure here; the writes only fill the store (50 of them warm the connection).
            asyncio.run(_requests_per_s(server, requests, Config(1, 3600.0, cfg.in_flight, cfg.bytes_writes)))
        entries = entry_sizes(server.data_dir, name)
        found[name] = {
            "writes": cfg.bytes_writes + 50,
            "used_bytes": used_bytes(server.data_dir),
            "entries": len(entries),
            "entry_bytes_median": statistics.median(entries) if entries else float("nan"),
        }
    on, off = found["on"], found["off"]
    per_write = {name: f["used_bytes"] / f["writes"] for name, f in found.items()}
    log(
        f"store growth per write: {per_write['on']:,.0f} bytes auditing, {per_write['off']:,.0f} not; "
        f"a replication entry: {on['entry_bytes_median']:,.0f} bytes auditing, {off['entry_bytes_median']:,.0f} not"
    )
    figures = [
        Figure(
            GROUP,
            BYTES,
            f"store growth per single-operation write (LMDB pages in use over every database, {int(on['writes'])} "
            f"writes of {len(VALUE)} bytes to a fresh node that audits)",
            stats([per_write["on"]], "bytes"),
            1,
            (
                Baseline(
                    "the same writes to a node with [storage] audit = false", stats([per_write["off"]], "bytes"), 1
                ),
            ),
            better="lower",
        ),
        Figure(
            GROUP,
            BYTES,
            "a replication entry of one single-operation write on the wire (wire.entry_size, median over the log)",
            stats([on["entry_bytes_median"]], "bytes"),
            1,
            (
                Baseline(
                    "the same entries with [storage] audit = false", stats([off["entry_bytes_median"]], "bytes"), 1
                ),
            ),
            better="lower",
        ),
    ]
    return figures, found


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-audit-") as tmp:
        root = Path(tmp)
        rate_figures, rate_detail = rates(cfg, root, log, step)
        size_figures, size_detail = sizes(cfg, root, log, step)
    return {"rates": rate_detail, "bytes": size_detail}, [*rate_figures, *size_figures]


def main(argv: Sequence[str] | None = None) -> int:
    return group_main(
        GROUP,
        __doc__,
        quick="3 repeats of 1 s",
        repeats="repeats per node and kind (default 5; 3 quick)",
        make_config=make_config,
        collect=collect,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
