"""The history of a run, as the simulator and the real-process chaos runs both record it.

One JSON object per line (Jepsen's history, in the shape this store needs):

* ``{"kind": "meta", ...}`` first: where the history comes from (``"source"``:
  ``"simulator"`` or ``"chaos"``), the regions, the seed or the duration.
* ``{"kind": "op", ...}`` for every client operation, written when its outcome
  is known: ``ok`` (acknowledged), ``fail`` (certainly not applied) or
  ``unknown`` (the client could not tell: a timeout, a crash). An ``ok``
  operation carries its causal token as a version vector (``token``); the
  event the operation minted is ``(region, token[region])``. Each operation
  names one key and is one request; register values and set members are
  unique per operation, so a value read back names the operation that
  wrote it.
* ``{"kind": "nemesis", ...}`` for every fault the run injected and healed.
* ``{"kind": "final", ...}`` for every region, after the faults healed and
  replication quiesced: every key as that region reads it, and a digest of its
  whole replicated state when the runner can take one (the system keyspace,
  keys starting with NUL, is in the digest but not among the keys).
* ``{"kind": "audit", ...}`` for every region whose audit trail the runner can
  read: its chains as they verify, and its records in short.

The checkers (``simulations.checkers``) read nothing else, so a history from
either runner is checked by the same code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crdtstore.crdt.origin import region_of

__all__ = [
    "FUNCTIONS",
    "OUTCOMES",
    "AuditRead",
    "FeedRead",
    "FinalRead",
    "KeyRead",
    "Meta",
    "Nemesis",
    "Op",
    "Record",
    "Sibling",
    "dump",
    "load",
    "read_jsonl",
    "write_jsonl",
]

Function = Literal["set", "incr", "sadd", "srem", "del", "bad"]
Outcome = Literal["ok", "fail", "unknown"]
# ``bad``: a request the runner built to be refused (its ``value`` says how: ``type-mismatch``,
# ``invalid-key``, ``permission``); the audit checker wants a ``refused`` record of it.
FUNCTIONS: tuple[str, ...] = ("set", "incr", "sadd", "srem", "del", "bad")
OUTCOMES: tuple[str, ...] = ("ok", "fail", "unknown")


@dataclass
class Meta:
    source: str  # "simulator" or "chaos"
    regions: list[str]
    seed: int | None = None
    faults: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    kind: str = "meta"


@dataclass
class Op:
    """One client operation and its outcome.

    ``value``: the register value for ``set``, the amount for ``incr`` (negative
    to decrement), the members for ``sadd``/``srem``, None for ``del``.
    ``ts``: the hybrid logical timestamp a ``set`` was given, ``[wall_ms,
    logical]``, when the runner can see it.
    """

    id: int
    client: int
    region: str
    f: str
    key: str
    value: str | int | list[str] | None
    outcome: str
    invoke_ms: int
    complete_ms: int | None = None
    token: dict[str, int] | None = None
    ts: list[int] | None = None
    error: str = ""
    kind: str = "op"
    # The origin the region minted this operation's event under (its region and incarnation), when the
    # runner knows it; otherwise the one origin of the region in the token.
    origin: str = ""
    # The request's idempotency key (as text), which its audit records carry.
    idempotency_key: str = ""
    # What the region's writer made of each attempt that reached it, when the runner sees every commit:
    # ``[kind, origin, event]`` per attempt, ``kind`` write, replay or refused and ``event`` the counter
    # of its audit record's own dot (``crdtstore.audit.record``). Attempts whose records were lost with
    # their region's disk are taken out, as their tokens are.
    audit: list[list[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.f not in FUNCTIONS:
            raise ValueError(f"operation {self.id}: unknown function {self.f!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"operation {self.id}: unknown outcome {self.outcome!r}")
        if self.outcome == "ok" and self.token is None:
            raise ValueError(f"operation {self.id} is acknowledged but has no causal token")

    @property
    def dot(self) -> tuple[str, int] | None:
        """The event this operation minted, when it was acknowledged."""
        if self.token is None:
            return None
        origin = self.origin or _origin_in(self.token, self.region)
        return (origin, self.token.get(origin, 0))


def _origin_in(token: dict[str, int], region: str) -> str:
    """The origin of ``region`` in ``token``, when there is one (several incarnations need ``Op.origin``)."""
    mine = [origin for origin in token if region_of(origin) == region]
    return mine[0] if len(mine) == 1 else region


@dataclass
class Nemesis:
    at_ms: int
    event: str  # a fault's start or end (simulations.faults.EVENTS), or disk, stall
    regions: list[str] = field(default_factory=list)
    detail: str = ""
    kind: str = "nemesis"


@dataclass
class Sibling:
    value: str
    region: str
    ts: list[int]  # [wall_ms, logical]


@dataclass
class KeyRead:
    """One key as a region reads it: ``type`` is register, counter or set.

    ``value``: the winning register value, the counter, or the sorted members.
    ``siblings``: every live register write (one when there is no conflict).
    """

    type: str
    value: str | int | list[str]
    siblings: list[Sibling] = field(default_factory=list)


@dataclass
class FinalRead:
    region: str
    keys: dict[str, KeyRead]
    digest: str = ""  # of the region's whole replicated state, when the runner can read it
    kind: str = "final"


@dataclass
class FeedRead:
    """What a change-feed consumer made of the run (``simulations.watcher``): its projection, read in ``region``."""

    region: str
    keys: dict[str, KeyRead]
    duplicates: list[str]  # events delivered more than once ("origin:counter key")
    counts: dict[str, int] = field(default_factory=dict)  # events, snapshots, moves between regions
    kind: str = "feed"


@dataclass
class AuditRead:
    """The audit trail one region holds after the run (``simulations.audit``).

    ``chains``: per origin, ``{"records", "head": [seq, digest hex, own dot], "findings": [...]}`` as
    ``check_chain`` found it (against the region's events of that origin). ``records``: every record,
    ``[origin, first, last, kind, idempotency key, [[key, op kind, amount], ...], code]``, in key order.
    """

    region: str
    chains: dict[str, dict[str, Any]]
    records: list[list[Any]]
    kind: str = "audit"


Record = Meta | Op | Nemesis | FinalRead | FeedRead | AuditRead


def _reads(keys: dict[str, KeyRead]) -> dict[str, Any]:
    return {
        key: {"type": read.type, "value": read.value, "siblings": [vars(s) for s in read.siblings]}
        for key, read in keys.items()
    }


def _key_reads(raw: dict[str, Any]) -> dict[str, KeyRead]:
    return {k: KeyRead(v["type"], v["value"], [Sibling(**s) for s in v.get("siblings", [])]) for k, v in raw.items()}


def _plain(record: Record) -> dict[str, Any]:
    """The record as JSON-ready data (``dataclasses.asdict`` without its deep copies, which cost more than the rest)."""
    if isinstance(record, FinalRead):
        return {"region": record.region, "keys": _reads(record.keys), "digest": record.digest, "kind": record.kind}
    if isinstance(record, FeedRead):
        return {**vars(record), "keys": _reads(record.keys)}
    return vars(record)


def dump(record: Record) -> str:
    return json.dumps(_plain(record), sort_keys=True, separators=(",", ":"))


def load(line: str) -> Record:
    raw = json.loads(line)
    kind = raw.get("kind")
    if kind == "meta":
        return Meta(**raw)
    if kind == "op":
        return Op(**raw)
    if kind == "nemesis":
        return Nemesis(**raw)
    if kind == "final":
        return FinalRead(raw["region"], _key_reads(raw["keys"]), raw.get("digest", ""))
    if kind == "feed":
        return FeedRead(raw["region"], _key_reads(raw["keys"]), raw["duplicates"], raw.get("counts", {}))
    if kind == "audit":
        return AuditRead(**raw)
    raise ValueError(f"a history record of unknown kind {kind!r}")


def write_jsonl(path: Path, records: Iterable[Record]) -> None:
    with Path(path).open("w", encoding="utf-8") as out:
        for record in records:
            out.write(dump(record) + "\n")


def read_jsonl(path: Path) -> Iterator[Record]:
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield load(line)
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
