"""Access control: what checking a token costs a write, and how long a revocation takes to reach another region.

Two figures, each beside a baseline measured in the same run:

* single-operation writes with a token (a role granting ``set`` on the keys'
  prefix) against the same writes to a node without access control, both
  nodes started by this run, measured in alternation;
* the time from a revocation answered in one region until another region
  refuses the token, against the time an ordinary write takes to become
  visible there (the revocation is a replicated write; this is its lag).

Run it from the repository root::

    python -m benchmarks.auth              # 5 repeats of 5 s per node, 20 revocations (about a minute)
    python -m benchmarks.auth --quick      # 3 repeats of 1 s, 5 revocations (about 15 s)

Placement and caveats: ``benchmarks/METHODS.md``, section "auth".
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from benchmarks.common import group_main, process_cpu_s, stats, wait_until
from benchmarks.figures import Baseline, Figure
from benchmarks.node import CHANNEL_OPTIONS, RPC_TIMEOUT_S, closed_loop
from benchmarks.replication import Keys, single_op_writes
from crdtstore.client import Client, ClientError
from crdtstore.testing.auth import AuthKit
from crdtstore.testing.process import ServerProcess
from crdtstore.testing.regions import RegionProcesses
from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import kv_pb2_grpc as pb_grpc

GROUP = "auth"
WRITES = "Writes with a token"
REVOCATION = "Revocation across regions"
TARGET_WRITES = ">= 0.9x the same run's unauthenticated writes"
# How often the other region is asked whether it refuses the token yet (or shows the write).
POLL_S = 0.002

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Config:
    repeats: int
    duration_s: float
    in_flight: int
    revocations: int


def make_config(quick: bool, repeats: int | None) -> Config:
    if quick:
        return Config(repeats or 3, 1.0, 32, 5)
    return Config(repeats or 5, 5.0, 32, 20)


async def _writes_per_s(
    server: ServerProcess, token: str | None, requests: Sequence[pb.MutateRequest], cfg: Config
) -> tuple[float, float]:
    """Writes per second, and the server's CPU microseconds per write, over one repeat."""
    addr = server.addr
    assert server.proc is not None
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS) as channel:
        stub: Any = pb_grpc.KVStub(channel)  # untyped generated code

        async def mutate(request: pb.MutateRequest) -> Any:
            return await stub.Mutate(request, timeout=RPC_TIMEOUT_S, metadata=metadata)

        await closed_loop(mutate, requests[:100], 100, cfg.in_flight, 1.0)  # warm the connection and the caches
        cpu_s = process_cpu_s(server.proc.pid)
        sample = await closed_loop(mutate, requests[100:], len(requests) - 100, cfg.in_flight, cfg.duration_s)
        cpu_s = process_cpu_s(server.proc.pid) - cpu_s
    return sample.rps, cpu_s / sample.requests * 1e6


def writes(cfg: Config, root: Path, log: Log, step: Log) -> tuple[Figure, dict[str, Any]]:
    kit = AuthKit.create(root / "keys")
    config = kit.write_config(root / "auth.toml")
    plain = ServerProcess(root / "plain", region="plain")
    guarded = ServerProcess(root / "guarded", region="guarded", extra_args=("--config", str(config)))
    with plain, guarded:
        with Client(guarded.addr, token=kit.token("bench-admin", ["admin"])) as admin:
            admin.put_role("bench-writer", {"bench/": ["set"]})
        token = kit.token("bench-writer", ["bench-writer"], ttl_s=24 * 3600)
        keys = Keys("bench/{:012d}")
        # Every request writes a key of its own; a repeat ends when its time is up or these run out.
        count = 100 + int(20_000 * cfg.duration_s)
        with_token: list[float] = []
        without: list[float] = []
        cpu_us: dict[str, list[float]] = {"with_token": [], "without": []}
        for repeat in range(cfg.repeats):
            # In alternation, and the first of each repeat in turn, so that both see the same machine over the run.
            step(f"writes, repeat {repeat + 1}/{cfg.repeats}")
            runs = [(without, "without", plain, None), (with_token, "with_token", guarded, token)]
            for into, name, server, credential in runs if repeat % 2 == 0 else reversed(runs):
                rate, cpu = asyncio.run(_writes_per_s(server, credential, single_op_writes(keys, count), cfg))
                into.append(rate)
                cpu_us[name].append(cpu)
            log(
                f"repeat {repeat + 1}: {with_token[-1]:,.0f} writes/s with a token "
                f"({cpu_us['with_token'][-1]:.0f} us of server CPU each), {without[-1]:,.0f} without "
                f"({cpu_us['without'][-1]:.0f} us)"
            )
    figure = Figure(
        GROUP,
        WRITES,
        f"single-operation writes with a token (role: set on the prefix), {cfg.in_flight} in flight",
        stats(with_token, "writes/s"),
        cfg.repeats,
        (Baseline("the same writes to a node without access control", stats(without, "writes/s"), cfg.repeats),),
        target=TARGET_WRITES,
        better="higher",
        params={"in_flight": cfg.in_flight},
    )
    detail = {"with_token": with_token, "without": without, "in_flight": cfg.in_flight, "server_cpu_us": cpu_us}
    return figure, detail


def _refused(client: Client) -> bool:
    try:
        client.get("probe")
    except ClientError as err:
        if err.code == grpc.StatusCode.UNAUTHENTICATED:
            return True
        raise
    return False


def revocations(cfg: Config, root: Path, log: Log, step: Log) -> tuple[Figure, dict[str, Any]]:
    kit = AuthKit.create(root / "keys")
    config = kit.write_config(root / "auth.toml")
    # A peer token names its region as subject.
    peers = {name: {"CRDTSTORE_PEER_TOKEN": kit.token(name, ["admin"], ttl_s=24 * 3600)} for name in "ab"}
    admin = kit.token("bench-admin", ["admin"], ttl_s=24 * 3600)
    revoke_ms: list[float] = []
    write_ms: list[float] = []
    with RegionProcesses(root, ("a", "b"), extra_args=("--config", str(config)), env=peers, client_token=admin) as c:
        c.wait_connected()
        a, b = c.clients["a"], c.clients["b"]
        for i in range(cfg.revocations):
            step(f"revocation {i + 1}/{cfg.revocations}")
            jti = uuid.uuid4().hex
            with Client(c.servers["b"].addr, token=kit.token("victim", ["admin"], token_id=jti), retries_max=0) as v:
                assert not _refused(v)
                began = time.perf_counter()
                a.revoke_token(jti)
                revoke_ms.append((wait_until(lambda v=v: _refused(v), poll_s=POLL_S) - began) * 1000)  # type: ignore[misc]
            key = f"lag/{i}"
            began = time.perf_counter()
            a.set(key, "x")
            write_ms.append((wait_until(lambda key=key: b.get(key).exists, poll_s=POLL_S) - began) * 1000)  # type: ignore[misc]
            log(f"revocation {i + 1}: refused in b after {revoke_ms[-1]:.1f} ms; a write took {write_ms[-1]:.1f} ms")
    figure = Figure(
        GROUP,
        REVOCATION,
        "from a revocation answered in region a until region b refuses the token",
        stats(revoke_ms, "ms"),
        cfg.revocations,
        (Baseline("from a write answered in a until b shows it", stats(write_ms, "ms"), cfg.revocations),),
        better="lower",
        note=f"b polled every {POLL_S * 1000:g} ms; two regions on loopback, no added latency",
    )
    return figure, {"revocation_ms": revoke_ms, "write_visible_ms": write_ms}


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-auth-") as tmp:
        root = Path(tmp)
        write_figure, write_detail = writes(cfg, root / "writes", log, step)
        revoke_figure, revoke_detail = revocations(cfg, root / "revocations", log, step)
    return {"writes": write_detail, "revocations": revoke_detail}, [write_figure, revoke_figure]


def main(argv: Sequence[str] | None = None) -> int:
    return group_main(
        GROUP,
        __doc__,
        quick="3 repeats of 1 s and 5 revocations",
        repeats="repeats of the write measurement (default 5; 3 quick)",
        make_config=make_config,
        collect=collect,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
