"""Reading a region's audit trail for the checkers: its chains as they verify, and its records in short.

A region's audit records (``crdtstore.audit.record``) are registers in its
store's system keyspace, one per request its writer answered, chained per
origin. ``read_trail`` verifies each chain the region holds as
``crdtstore audit verify`` does (``LmdbStore.audit_chain_reports``: with its
floor, against how far the region holds that origin's events, and against
the region's own note of its head), and names the origins whose events the
region holds without a single record. It then lists every record
in the short form the history keeps (``simulations.history.AuditRead``).

The simulator reads its regions' live stores this way at the end of a run;
the chaos runner and the crash test read stopped nodes' data directories
the same way. ``simulations.checkers`` judges the result against the
operations of the history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from crdtstore.audit.record import AuditError, AuditRecord, ChainReport, decode
from crdtstore.crdt import VersionVector
from simulations.history import AuditRead

__all__ = ["TrailStore", "read_trail", "short_record"]


class TrailStore(Protocol):
    """What ``read_trail`` needs of a store (``LmdbStore`` has it)."""

    def iter_audit(self, origin: str | None = None, page: int = 1000) -> Iterable[tuple[str, bytes]]: ...
    def audit_chain_reports(self) -> list[ChainReport]: ...


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
    # What AuditVerify checks: every chain with its floor, the region's vector and its own note of its head.
    for report in store.audit_chain_reports():
        origin = report.origin
        chains[origin] = {
            "records": report.records,
            "head": [report.head_seq, report.head_hash.hex(), report.head_last],
            "findings": [f"{origin}:{f.at} (record {f.seq}): {f.problem}" for f in report.findings],
        }
    records: list[list[object]] = []
    for _, raw in store.iter_audit():
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
