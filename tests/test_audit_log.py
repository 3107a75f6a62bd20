"""The audit commands' logic without a node: times, AuditLog's merge and pages, export marks, retention's plan.

A store written with auditing on and a fake clock (10 ms between requests),
retiring its origin half way, so it holds two chains; everything here reads
it the way the RPCs do, and is checked against the obvious answer computed
from every record at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtstore.audit.export import parse_time
from crdtstore.audit.record import AuditRecord, decode, sort_causally
from crdtstore.crdt import HybridLogicalClock
from crdtstore.node.audit_retention import plan_drops
from crdtstore.node.audit_rpc import log_page, mark_exported, seek
from crdtstore.operations import SetRegister
from crdtstore.storage import Applied, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.audit import RequestInfo
from crdtstore.testing.clock import FakeClock
from crdtstore.v1 import kv_pb2

START_MS = 1_800_000_000_000
DAY_MS = 86_400_000


def test_times_are_rfc3339_or_durations_back_from_now() -> None:
    now = START_MS
    assert parse_time("2027-01-15T08:00:00Z", now) == 1_800_000_000_000
    assert parse_time("1970-01-01T00:00:01Z", now) == 1000
    assert parse_time("1970-01-01T02:00:01+02:00", now) == 1000
    assert parse_time("90s", now) == now - 90_000
    assert parse_time("1h", now) == now - 3_600_000
    assert parse_time("7d", now) == now - 7 * DAY_MS
    assert parse_time("2w", now) == now - 14 * DAY_MS
    assert parse_time("0", now) == 0
    for bad in ("yesterday", "1y", "-1h", "2026-12-05T10:00:00", ""):
        with pytest.raises(ValueError, match=r"RFC 3339|time zone"):
            parse_time(bad, now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    clock_ms = FakeClock(START_MS)
    store = LmdbStore(StorageConfig(tmp_path / "data", "eu", StorageOptions(audit=True, sync=False)), wall_ms=clock_ms)
    clock = HybridLogicalClock(clock_ms, floor=store.hlc_mark)
    try:
        for i in range(40):
            if i == 25:
                store.retire_origin("a test's new incarnation")
            info = RequestInfo(principal=f"user{i % 2}", method="Mutate")
            (result,) = store.write_batch([WriteRequest([SetRegister(f"k{i % 5}", b"v")], info=info)], clock)
            assert isinstance(result, Applied)
            clock_ms.advance(10)
        yield store
    finally:
        store.close()


def _every(store: LmdbStore) -> list[AuditRecord]:
    return sort_causally([decode(raw) for _, raw in store.iter_audit()])


def _pages(store: LmdbStore, **filters: object) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    token = ""
    while True:
        records, token = log_page(store, kv_pb2.AuditLogRequest(page_token=token, **filters))  # type: ignore[arg-type]
        out.extend(records)
        if not token:
            return out


def test_log_pages_merge_the_chains_in_causal_order_and_resume_exactly(store: LmdbStore) -> None:
    every = _every(store)
    assert len({r.origin for r in every}) == 2 and len(every) == 40
    assert _pages(store, limit=3) == every
    assert _pages(store, limit=1000) == every
    assert _pages(store, limit=4, principal="user1") == [r for r in every if r.principal == "user1"]
    assert _pages(store, limit=4, key="k3") == [r for r in every if any(op.key == "k3" for op in r.operations)]
    for since_i in (0, 1, 12, 24, 25, 26, 39):
        since = every[since_i].hlc_wall_ms
        assert _pages(store, limit=5, since_ms=since) == every[since_i:]
        assert _pages(store, limit=5, until_ms=since) == every[:since_i]
    assert _pages(store, since_ms=every[-1].hlc_wall_ms + 1) == []


def test_seek_is_a_binary_search_that_lands_before_the_first_record_at_or_after_since(store: LmdbStore) -> None:
    for origin in store.audit_origins():
        chain = [decode(raw) for _, raw in store.iter_audit(origin)]
        for record in chain:
            position = seek(store, origin, record.hlc_wall_ms)
            assert position == (0 if record is chain[0] else chain[chain.index(record) - 1].last)


def _heads(records: list[AuditRecord], since_ms: int, until_ms: int) -> dict[str, tuple[int, bytes, int]]:
    """The head lines an export of ``[since_ms, until_ms)`` would hold: each chain's last record in it."""
    heads: dict[str, tuple[int, bytes, int]] = {}
    for r in records:
        if since_ms <= r.hlc_wall_ms < until_ms:
            heads[r.origin] = (r.seq, r.digest(), r.last)
    return heads


def test_export_marks_move_only_contiguously(store: LmdbStore) -> None:
    every = _every(store)
    first_chain = [r for r in every if r.origin == every[0].origin]
    # An export that starts after the first record not yet exported leaves a gap: nothing moves.
    since, until = every[5].hlc_wall_ms, every[10].hlc_wall_ms
    marks, through = mark_exported(store, since, until, _heads(every, since, until))
    assert marks == {} and through == every[0].hlc_wall_ms
    # From the beginning to the 10th record: the first chain is exported through record 10.
    marks, through = mark_exported(store, 0, until, _heads(every, 0, until))
    assert marks == {first_chain[9].origin: (10, first_chain[9].last)}
    assert through == every[10].hlc_wall_ms
    store.put_audit_exported(marks)
    # The next export continues where that one stopped: it counts, through the end.
    end = every[-1].hlc_wall_ms + 1
    marks, through = mark_exported(store, until, end, _heads(every, until, end))
    assert {o: seq for o, (seq, _) in marks.items()} == {
        origin: max(r.seq for r in every if r.origin == origin) for origin in {r.origin for r in every}
    }
    assert through == end


def test_regression_an_export_that_names_no_head_marks_nothing(store: LmdbStore) -> None:
    """Found in review: an export that held no record sent no heads, and was taken to hold every record before
    its end, so retention would have dropped records no archive held."""
    every = _every(store)
    marks, through = mark_exported(store, 0, every[-1].hlc_wall_ms + 1, {})
    assert marks == {} and through == every[0].hlc_wall_ms


def test_retention_drops_only_exported_records_oldest_first_and_keeps_each_head(store: LmdbStore) -> None:
    every = _every(store)
    later = every[-1].hlc_wall_ms + 2 * DAY_MS  # every record is past a 1-day retention
    drops, blocked = plan_drops(store, later, 1, 1 << 40)
    assert drops == [] and "not been exported" in blocked
    first = every[0].origin
    store.put_audit_exported({first: (7, every[6].last)})
    drops, blocked = plan_drops(store, later, 1, 1 << 40)
    assert [(d.origin, [r.seq for r in d.records]) for d in drops] == [(first, list(range(1, 8)))]
    assert f"{first} from record 8" in blocked
    marks = {o: (seq, last) for o, (seq, _, last) in store.audit_heads_at().items()}
    store.put_audit_exported(marks)
    drops, blocked = plan_drops(store, later, 1, 1 << 40)
    assert blocked == ""
    for drop in drops:
        head_seq = marks[drop.origin][0]
        assert [r.seq for r in drop.records] == list(range(1, head_seq))  # all but the head
    # Nothing is due within the retention and the byte bound: nothing is read past each chain's first record.
    assert plan_drops(store, every[-1].hlc_wall_ms, 1, 1 << 40) == ([], "")
    # Past the byte bound, records go though they are young.
    drops, _ = plan_drops(store, every[-1].hlc_wall_ms, 1, 1)
    assert sum(len(d.records) for d in drops) == len(every) - len(marks)


def test_an_export_head_that_is_not_a_held_record_moves_nothing(store: LmdbStore) -> None:
    every = _every(store)
    first = every[0]
    tenth = next(r for r in every if r.origin == first.origin and r.seq == 10)
    now = store.wall_ms()
    assert mark_exported(store, 0, now, {first.origin: (10, bytes(32), tenth.last)})[0] == {}
    assert mark_exported(store, 0, now, {first.origin: (11, tenth.digest(), tenth.last)})[0] == {}
    marks, _ = mark_exported(store, 0, now, {first.origin: (10, tenth.digest(), tenth.last)})
    assert marks == {first.origin: (10, tenth.last)}


def test_an_export_mark_never_goes_back(store: LmdbStore) -> None:
    origin = store.audit_origins()[0]
    store.put_audit_exported({origin: (10, 20)})
    store.put_audit_exported({origin: (5, 9), "other#1": (1, 1)})
    assert store.audit_exported() == {origin: (10, 20), "other#1": (1, 1)}


def test_region_selects_a_regions_chains_by_name_or_one_chain_by_its_origin(store: LmdbStore) -> None:
    """Found in review: ``audit log --region 'eu#...'`` (an origin, as records print it) matched nothing."""
    every = _every(store)
    old, new = sorted({r.origin for r in every})
    assert old.partition("#")[0] == new.partition("#")[0] == "eu"
    assert _pages(store, limit=7, region="eu") == every
    assert _pages(store, limit=7, region=old) == [r for r in every if r.origin == old] != []
    assert _pages(store, limit=7, region=new) == [r for r in every if r.origin == new] != []
    assert _pages(store, region="eu#0000") == []
    assert _pages(store, region="us") == []


class _Recorded:
    """Stands in for RefusalLog: keeps what it was asked to record."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    async def record(self, rpc: str, code: str, reason: str, note: object, peer: str) -> None:
        self.calls.append((rpc, code, reason, peer))


def test_refused_streams_are_recorded_at_most_once_an_interval_per_caller_and_code() -> None:
    """A misconfigured peer redials for as long as it stays so: one record a minute, saying how many were left out."""
    import asyncio

    from crdtstore.node.audit import StreamRefusals

    now = [1000.0]
    recorded = _Recorded()
    refusals = StreamRefusals(
        recorded,  # type: ignore[arg-type]
        interval_s=60,
        keys_max=2,
        clock=lambda: now[0],
    )

    async def dials() -> None:
        for _ in range(5):  # the same peer, new ports, within the minute
            await refusals.record("UNAUTHENTICATED", "no token", f"ipv4:10.0.0.1:{40000 + len(recorded.calls)}")
            now[0] += 5
        await refusals.record("PERMISSION_DENIED", "not a peer", "ipv4:10.0.0.1:41000")  # another code
        await refusals.record("UNAVAILABLE", "shutting down", "ipv4:10.0.0.1:41001")  # not a refusal
        now[0] += 60
        await refusals.record("UNAUTHENTICATED", "no token", "ipv4:10.0.0.1:42000")
        for host in range(3):  # the table holds two callers: the oldest goes
            await refusals.record("UNAUTHENTICATED", "no token", f"ipv4:10.0.0.{host + 2}:1")

    asyncio.run(dials())
    assert [(code, reason) for _, code, reason, _ in recorded.calls[:3]] == [
        ("UNAUTHENTICATED", "no token"),
        ("PERMISSION_DENIED", "not a peer"),
        ("UNAUTHENTICATED", "no token (4 more like it from ipv4:10.0.0.1 since the last record were not recorded)"),
    ]
    assert {rpc for rpc, _, _, _ in recorded.calls} == {"Sync"}
    assert refusals.left_out == 4 and len(recorded.calls) == 6
    assert len(refusals._last) == 2

    # A caller cycling through addresses: each address is new, but over every caller at most keys_max a minute.
    cycling = StreamRefusals(recorded, interval_s=60, records_max=3, clock=lambda: now[0])  # type: ignore[arg-type]
    before = len(recorded.calls)

    async def many() -> None:
        for host in range(10):
            await cycling.record("UNAUTHENTICATED", "no token", f"ipv4:10.1.0.{host}:1")

    asyncio.run(many())
    assert len(recorded.calls) - before == 3 and cycling.left_out == 7
