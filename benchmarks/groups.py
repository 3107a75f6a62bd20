"""The benchmark groups (name, title, placement) and what a suite run records of them.

``benchmarks.suite`` runs the groups and ``benchmarks.report`` renders what
they returned; both take the table and the result types from here, so neither
imports the other's caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.figures import Figure, json_safe

__all__ = ["GROUPS", "SCHEMA_VERSION", "Group", "GroupResult", "Mode", "SuiteResult"]

Mode = Literal["smoke", "quick", "full"]

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    title: str
    placement: str


GROUPS: dict[str, Group] = {
    g.name: g
    for g in (
        Group(
            "micro",
            "CRDT core, in memory",
            "one process (this one), no network or storage; baselines on plain Python data of the same size and shape",
        ),
        Group(
            "node",
            "One durable node: the client path",
            "node (`crdtstore serve`) and echo server each in their own process, load generator (grpc.aio, generated "
            "stubs) in this process; same machine, 127.0.0.1, no CPU pinning; raw LMDB baseline in this process on the "
            "same file system",
        ),
        Group(
            "replication",
            "Replication between regions",
            "every region its own `crdtstore serve` process; every inter-region link through a LinkProxy on a thread "
            "of this process; load generator in this process; same machine, 127.0.0.1, no CPU pinning",
        ),
        Group(
            "storage",
            "Memory and disk",
            "one process (this one); sizes counted from encoded states and LMDB files, nothing timed",
        ),
        Group(
            "sync_cost",
            "Synchronisation cost against Enes et al. (ICDE 2019)",
            "one process (this one): 15 nodes, each an LmdbStore (sync off, in a temporary directory under /dev/shm) "
            "and the node's replication driver, on a network in virtual time; bytes counted at their protobuf size, "
            "nothing timed",
        ),
        Group(
            "peers",
            "Library peers: npm delta-crdts and PyPI pycrdt on the same set workloads",
            "everything in one process (this one) but delta-crdts, which runs in a `node` subprocess that gets the "
            "workload as JSON on stdin, times itself and answers JSON on stdout; no network (`npm ci` into "
            "benchmarks/peers_js/node_modules once, when it lacks the locked packages)",
        ),
        Group(
            "redis_anchor",
            "Redis as the anchor: the same operations against redis-server, durable per write",
            '`crdtstore serve` and `redis-server` (appendonly yes, appendfsync always, save "") each in their own '
            "process, started by the group on 127.0.0.1 with their data in one temporary directory; load generator in "
            "this process (crdtstore.client.AsyncClient and redis.asyncio); same machine, no CPU pinning",
        ),
        Group(
            "auth",
            "Access control: the token check on the write path, and revocation across regions",
            "two `crdtstore serve` processes (one without access control, one with) for the writes, measured in "
            "alternation; two regions, each its own `crdtstore serve`, through LinkProxy threads of this process for "
            "the revocations; load generator (grpc.aio, generated stubs) in this process; same machine, 127.0.0.1",
        ),
        Group(
            "metrics",
            "Metrics: what exporting Prometheus metrics costs writes",
            "two `crdtstore serve` processes (one with --metrics-listen, scraped every second by a thread of this "
            "process; one with metrics off), measured in alternation; load generator (grpc.aio, generated stubs) in "
            "this process; same machine, 127.0.0.1, no CPU pinning",
        ),
        Group(
            "watch",
            "The change feed: events delivered, what watchers cost writers, commit to consumer",
            "one `crdtstore serve` for the throughput figures, two (each its own process, linked through a LinkProxy "
            "thread of this process) for the latency figures; the watchers (AsyncClient.watch) in a process of their "
            "own (multiprocessing, spawned); load generator (grpc.aio, generated stubs) in this process; same "
            "machine, 127.0.0.1",
        ),
        Group(
            "audit",
            "The audit trail: what recording every request costs durable writes, and the bytes it adds",
            "two `crdtstore serve` processes (one auditing, the default; one with [storage] audit = false), measured "
            "in alternation; load generator (grpc.aio, generated stubs) in this process; same machine, 127.0.0.1, no "
            "CPU pinning; the byte counts read from each node's directory with LMDB once it has stopped",
        ),
        Group(
            "backup",
            "Backup, restore and verify",
            "three regions, each its own `crdtstore serve`, through LinkProxy threads of this process; backups, "
            "restores, verify and the blocking write clients in this process (threads); same machine, 127.0.0.1",
        ),
    )
}


@dataclass
class GroupResult:
    name: str
    seconds: float = 0.0
    figures: list[Figure] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "title": GROUPS[self.name].title,
            "placement": GROUPS[self.name].placement,
            "seconds": self.seconds,
            "ok": not self.error,
            "error": self.error or None,
            "figures": len(self.figures),
            "detail": self.detail,
        }


@dataclass
class SuiteResult:
    command: str
    mode: Mode
    repeats: int | None
    started: str
    groups: list[GroupResult]
    seconds: float
    machine: dict[str, Any]
    commit: dict[str, Any]

    @property
    def figures(self) -> list[Figure]:
        return [f for g in self.groups for f in g.figures]

    @property
    def ok(self) -> bool:
        return all(not g.error for g in self.groups)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json_safe(
            {
                "schema": SCHEMA_VERSION,
                "command": self.command,
                "mode": self.mode,
                "repeats": self.repeats,
                "started": self.started,
                "seconds": self.seconds,
                "machine": self.machine,
                "commit": self.commit,
                "placement": {g.name: GROUPS[g.name].placement for g in self.groups},
                "groups": {g.name: g.as_json() for g in self.groups},
                "figures": [f.as_json() for f in self.figures],
            }
        )
        return out
