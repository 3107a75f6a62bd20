"""Audit retention: dropping old records, only once they are exported, as a replicated write.

``[storage] audit_retention_days`` (90) and ``audit_bytes_max`` bound the
trail. Every ``interval_s`` the node looks at each chain it holds, oldest
record first: a record older than the retention (by its hybrid logical
time), or any record while the trail is past its byte bound, may go, but
only if it has been exported (``AuditExported`` moved the chain's mark past
it) and is not the chain's newest record (the newest is what peers compare
heads against, and what shows a chain's tail was not truncated).

When a record should go but has not been exported, nothing of that chain is
dropped: Status ``audit_retention_blocked`` says why (and a warning is
logged once, until it clears). Nothing unexported is ever lost to retention.

The drop is an ordinary write through the writer, so it is itself audited
and replicates like data: DeleteKey of the record keys, and in the same
request the chain's floor (``crdtstore.storage.audit.floor_key``: the seq,
digest and dot of the last record dropped) as a register. Every region
applies the same drop and the same floor, so verification still links the
first record kept to the floor; removing records above the floor is still
found (a missing seq).

The byte bound is checked against an estimate (records held times the mean
size of each chain's first records), so a pass never reads the whole trail.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crdtstore.audit.record import AuditRecord, Floor, record_key
from crdtstore.node.audit_rpc import ChainCursor
from crdtstore.node.periodic import Periodic
from crdtstore.operations import DeleteKey, Operation, SetRegister
from crdtstore.storage import Applied, LmdbStore, WriteRequest
from crdtstore.storage.audit import RequestInfo, encode_floor, floor_key

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState

__all__ = ["AuditRetention", "Drop", "plan_drops"]

log = logging.getLogger("crdtstore.audit")

_DROP_BATCH = 256  # records one drop write removes at most
_SAMPLE = 8  # records per chain whose sizes estimate the trail's bytes
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class Drop:
    """One chain's records to drop (oldest first), and the floor they leave."""

    origin: str
    records: tuple[AuditRecord, ...]

    def operations(self, region: str) -> list[Operation]:
        """The write that drops them, leaving ``region``'s floor of the chain after them."""
        ops: list[Operation] = [DeleteKey(record_key(self.origin, r.last)) for r in self.records]
        last = self.records[-1]
        floor = encode_floor(Floor(last.seq, last.digest(), last.last))
        ops.append(SetRegister(floor_key(self.origin, region), floor))
        return ops


def plan_drops(store: LmdbStore, now_ms: int, retention_days: int, bytes_max: int) -> tuple[list[Drop], str]:
    """What one pass drops, and why it cannot drop more ("" when nothing is blocked).

    Each chain is read from its oldest record only as far as records are
    due (older than the retention, or while the trail is past its byte
    bound) and exported: a pass with nothing to do reads one record a chain.
    """
    heads = store.audit_heads_at()
    marks = store.audit_exported()
    older_than = now_ms - retention_days * _DAY_MS
    excess = _records_past_bound(store, heads, bytes_max)
    drops: list[Drop] = []
    blocked: list[str] = []
    for origin, (_, _, head_last) in heads.items():
        mark_seq = marks.get(origin, (0, 0))[0]
        cursor = ChainCursor(store, origin, 0)
        records: list[AuditRecord] = []
        while len(records) < _DROP_BATCH and (found := cursor.peek()) is not None and found[0] < head_last:
            record = found[1]
            if record is None:
                break  # a record that does not decode: verify reports it; retention stops before it
            if record.hlc_wall_ms >= older_than and excess <= 0:
                break  # not due, and neither is anything after it
            if record.seq > mark_seq:
                blocked.append(f"{origin} from record {record.seq}")
                break
            records.append(record)
            excess -= 1
            cursor.advance()
        if records:
            drops.append(Drop(origin, tuple(records)))
    reason = ""
    if blocked:
        more = f" and {len(blocked) - 5} more" if len(blocked) > 5 else ""
        reason = (
            f"audit records past audit_retention_days={retention_days} or audit_bytes_max={bytes_max} are kept "
            f"because they have not been exported: {', '.join(blocked[:5])}{more}; "
            "run crdtstore audit export --since 0 --out FILE"
        )
    return drops, reason


def _records_past_bound(store: LmdbStore, heads: dict[str, tuple[int, bytes, int]], bytes_max: int) -> int:
    """About how many records the trail holds past ``bytes_max`` (from the size of each chain's first records)."""
    sizes = [len(raw) for origin in heads for _, raw in store.audit_raw(origin=origin, limit=_SAMPLE)]
    if not sizes:
        return 0
    mean = max(1, sum(sizes) // len(sizes))
    over = store.audit_record_count() * mean - bytes_max
    return -(-over // mean) if over > 0 else 0


class AuditRetention(Periodic):
    """Runs ``plan_drops`` every ``interval_s`` and writes the drops; keeps Status' ``audit_retention_blocked``."""

    what = "audit retention"

    def __init__(self, node: NodeState, interval_s: float = 1.0) -> None:
        super().__init__(node, interval_s)
        self.blocked = ""

    def due(self) -> bool:
        node = self.node
        if node.draining or not node.store.audit_enabled:
            return False
        if node.replicator.rejoining() is not None or node.replicator.clock_fenced():
            return False  # no writes of its own until caught up, or while its clock is out of bounds
        return not node.audit_exports  # an export is reading the chains: a drop under it would leave it a hole

    async def trim_once(self) -> int:
        """One pass: drop what may go; returns how many records went."""
        node = self.node
        store, options = node.store, node.config.storage
        removed = 0
        while True:
            now_ms = store.wall_ms()
            drops, blocked = await asyncio.to_thread(
                plan_drops, store, now_ms, options.audit_retention_days, options.audit_bytes_max
            )
            if blocked and not self.blocked:
                log.warning("%s", blocked)
            self.blocked = blocked
            if not drops:
                return removed
            for drop in drops:
                info = RequestInfo(principal="crdtstore", method="AuditRetention", durability="local")
                result = await node.writer.submit(WriteRequest(drop.operations(node.store.region), info=info))
                if not isinstance(result, Applied):
                    raise RuntimeError(f"dropping audit records of {drop.origin} failed: {result.error}")
                removed += len(drop.records)
            if all(len(d.records) < _DROP_BATCH for d in drops):
                return removed
