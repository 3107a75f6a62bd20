"""Reading a region's audit trail for the checkers: its chains as they verify, and its records in short.

A region's audit records (``crdtstore.audit.record``) are registers in its
store's system keyspace, one per request its writer answered, chained per
origin. ``read_trail`` verifies each chain the region holds with
``check_chain``, against how far the region holds that origin's events (a
chain that stops short of them lost its tail), and against the origin's own
note of its head when the region is that origin; it names the origins whose
events the region holds without a single record. It then lists every record
in the short form the history keeps (``simulations.history.AuditRead``).

The simulator reads its regions' live stores this way at the end of a run;
the chaos runner and the crash test read stopped nodes' data directories
the same way. ``simulations.checkers`` judges the result against the
operations of the history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from crdtstore.audit.record import AuditError, AuditRecord, Floor, check_chain, decode, parse_record_key
from crdtstore.crdt import VersionVector
from simulations.history import AuditRead

__all__ = ["TrailStore", "read_trail", "short_record"]


class TrailStore(Protocol):
    """What ``read_trail`` needs of a store (``LmdbStore`` has it)."""

    origin: str

    def audit_origins(self) -> list[str]: ...
    def iter_audit(self, origin: str | None = None, page: int = 1000) -> Iterable[tuple[str, bytes]]: ...
    def audit_floor(self, origin: str) -> Floor | None: ...
    def audit_chain_head(self, origin: str) -> tuple[int, bytes]: ...


def short_record(record: AuditRecord) -> list[object]:
    """``[origin, first, last, kind, idempotency key, [[key, op kind, amount], ...], code]``."""
    return [
        record.origin,
        record.first,
        record.last,
        record.kind,
        record.idempotency_key.decode("utf-8", "replace"),
        [[op.key, op.kind, op.amount] for op in record.operations],
        record.code,
    ]


def read_trail(region: str, store: TrailStore, held: VersionVector) -> AuditRead:
    """The trail ``store`` holds, checked chain by chain; ``held``: the events the region holds (its vector)."""
    chains: dict[str, dict[str, object]] = {}
    records: list[list[object]] = []
    origins = store.audit_origins()
    for origin in origins:
        raws = [(parse_record_key(key)[1], raw) for key, raw in store.iter_audit(origin)]
        # The region's own note of its head (kept beside the data) pins its own chain's tail.
        own = store.audit_chain_head(origin) if origin == store.origin else None
        report = check_chain(
            origin,
            raws,
            floor=store.audit_floor(origin),
            held=held.get(origin),
            anchor=own if own and own[0] else None,
        )
        chains[origin] = {
            "records": report.records,
            "head": [report.head_seq, report.head_hash.hex(), report.head_last],
            "findings": [f"{origin}:{f.at} (record {f.seq}): {f.problem}" for f in report.findings],
        }
        for _, raw in raws:
            try:
                records.append(short_record(decode(raw)))
            except AuditError:
                continue  # the chain's findings name it
    for origin, counter in sorted(held.items()):
        if origin not in chains and counter > 0:
            chains[origin] = {
                "records": 0,
                "head": [0, "", 0],
                "findings": [f"{origin}: the region holds its events up to {counter} but none of its records"],
            }
    return AuditRead(region, dict(sorted(chains.items())), records)
