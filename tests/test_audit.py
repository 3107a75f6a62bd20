"""The audit trail in the store: one record per request, in its transaction, chained, replicated as data.

The record format and chain checks are pure (``crdtstore.audit.record``); the
store writes a record as one more register write of each request's batch
(``crdtstore.storage.audit``). The commands, export, retention and tamper
tests on real directories are in test_audit_cli.py and test_audit_tamper.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.audit.record import (
    ZERO_HASH,
    AuditError,
    AuditRecord,
    OpSummary,
    check_chain,
    decode,
    from_json,
    parse_record_key,
    record_key,
)
from crdtstore.crdt import Dot, HybridLogicalClock, Timestamp, VersionVector, decode_as, encode_register_write
from crdtstore.node.audit import AuditHeads
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.storage import Applied, Failed, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.audit import RefusalRecorded, RequestInfo
from crdtstore.storage.keys import lmdb_key
from crdtstore.storage.records import plain_record
from crdtstore.testing.clock import FakeClock
from crdtstore.v1 import replication_pb2 as rpb

# -- the record: one encoding -------------------------------------------------------------------

_text = st.text(max_size=20)
_ops = st.lists(
    st.builds(
        OpSummary,
        _text,
        st.sampled_from(["set", "incr", "add", "remove", "delete"]),
        st.integers(-(2**63), 2**63 - 1),
        st.binary(max_size=32),
    ),
    max_size=4,
).map(tuple)
_records = st.builds(
    AuditRecord,
    origin=st.text(min_size=1, max_size=20).filter(lambda o: "\x00" not in o),
    seq=st.integers(1, 2**40),
    prev=st.binary(min_size=32, max_size=32),
    first=st.integers(1, 2**40),
    last=st.just(0),
    hlc_wall_ms=st.integers(0, 2**48),
    hlc_logical=st.integers(0, 2**31),
    wall_ms=st.integers(0, 2**48),
    kind=st.sampled_from(["write", "replay", "refused"]),
    principal=_text,
    request_id=_text,
    method=_text,
    peer=_text,
    idempotency_key=st.binary(max_size=40),
    operations=_ops,
    durability=st.sampled_from(["", "local", "replicated:2"]),
    token=st.binary(max_size=40),
    code=_text,
    reason=_text,
).map(lambda r: AuditRecord(**{**_fields(r), "last": r.first + (r.seq % 5)}))


def _fields(record: AuditRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in AuditRecord.__dataclass_fields__ if name != "_raw"}


@given(_records)
def test_a_record_decodes_to_itself_and_its_json_to_the_same_bytes(record: AuditRecord) -> None:
    raw = record.encode()
    assert decode(raw) == record
    assert decode(raw).encode() == raw
    assert from_json(record.to_json()).encode() == raw
    assert record.to_json()["hash"] == hashlib.sha256(raw).hexdigest()


@given(_records, st.integers(0, 1000), st.integers(1, 255))
def test_a_changed_byte_never_decodes_to_a_record_with_the_same_hash(record: AuditRecord, at: int, flip: int) -> None:
    raw = bytearray(record.encode())
    raw[at % len(raw)] ^= flip
    try:
        altered = decode(bytes(raw))
    except AuditError:
        return
    assert altered.digest() != record.digest()


def test_only_the_one_encoding_decodes() -> None:
    import msgpack

    record = AuditRecord("eu#1", 1, ZERO_HASH, 1, 2, 5, 0, 5, "write")
    fields = msgpack.unpackb(record.encode())
    raw = record.encode()
    assert raw[:3] == b"\xdc\x00\x14"  # an array of 20 in its shortest form
    with pytest.raises(AuditError, match="canonical"):
        decode(b"\xdd\x00\x00\x00\x14" + raw[3:])  # the same array in a longer form: another encoding
    with pytest.raises(AuditError, match="not bytes"):
        decode(msgpack.packb(fields, use_bin_type=False))  # bytes as strings
    with pytest.raises(AuditError):
        decode(msgpack.packb(dict(enumerate(fields))))
    with pytest.raises(AuditError, match="kind"):
        decode(msgpack.packb([*fields[:9], "deleted", *fields[10:]], use_bin_type=True))


def test_record_keys_sort_in_chain_order_and_parse_back() -> None:
    keys = [record_key("eu#a", n) for n in (1, 9, 10, 255, 2**40)]
    assert keys == sorted(keys)
    assert [parse_record_key(k) for k in keys] == [("eu#a", n) for n in (1, 9, 10, 255, 2**40)]
    # Origins never interleave: "eu" records all sort before "eu-west" ones.
    assert record_key("eu", 2**40) < record_key("eu-west", 1)
    with pytest.raises(AuditError):
        parse_record_key("plain/key")


# -- chains ---------------------------------------------------------------------------------------


def _chain(n: int, origin: str = "eu#1") -> list[AuditRecord]:
    records, prev, first = [], ZERO_HASH, 1
    for seq in range(1, n + 1):
        record = AuditRecord(origin, seq, prev, first, first + 1, 10 * seq, 0, 10 * seq, "write", principal="p")
        records.append(record)
        prev, first = record.digest(), record.last + 1
    return records


def _stored(records: list[AuditRecord]) -> list[tuple[int, bytes]]:
    return [(r.last, r.encode()) for r in records]


def test_a_whole_chain_verifies_with_its_anchor_and_the_events_held() -> None:
    chain = _chain(5)
    report = check_chain("eu#1", _stored(chain), held=chain[-1].last, anchor=(5, chain[-1].digest()))
    assert report.ok, report.findings
    assert (report.records, report.head_seq, report.head_hash) == (5, 5, chain[-1].digest())


def test_each_kind_of_tampering_names_the_record_where_it_shows() -> None:
    chain = _chain(6)
    stored = _stored(chain)
    held, anchor = chain[-1].last, (6, chain[-1].digest())

    def first_finding(records: list[tuple[int, bytes]]) -> tuple[int, int, str]:
        report = check_chain("eu#1", records, held=held, anchor=anchor)
        assert not report.ok
        finding = report.findings[0]
        return finding.at, finding.seq, finding.problem

    # A record edited (and so its hash): the next record's link breaks.
    edited = AuditRecord(**{**_fields(chain[2]), "principal": "mallory"})
    at, seq, problem = first_finding([*stored[:2], (chain[2].last, edited.encode()), *stored[3:]])
    assert (at, seq) == (chain[3].last, 4) and "hash of record 3" in problem
    # A record dropped: the next seq is missing.
    at, seq, problem = first_finding([*stored[:3], *stored[4:]])
    assert (at, seq) == (chain[4].last, 4) and "record 4 is missing" in problem
    # Two records swapped under each other's keys.
    swapped = [*stored[:1], (chain[1].last, stored[2][1]), (chain[2].last, stored[1][1]), *stored[3:]]
    at, seq, problem = first_finding(swapped)
    assert at == chain[1].last and "moved or swapped" in problem
    # The tail truncated: the anchor (the region's own head) says more was there.
    at, seq, problem = first_finding(stored[:4])
    assert seq == 6 and "tail" in problem
    # ... and, for another region's chain (no anchor), the events held say so.
    report = check_chain("eu#1", stored[:4], held=held)
    assert not report.ok and "missing" in report.findings[0].problem
    # A byte flipped where it breaks the encoding.
    broken = bytearray(stored[3][1])
    broken[0] ^= 0xFF
    at, seq, problem = first_finding([*stored[:3], (chain[3].last, bytes(broken)), *stored[4:]])
    assert (at, seq) == (chain[3].last, 4) and "does not decode" in problem
    # The first records removed: the chain must start at record 1 (or at its floor).
    at, seq, problem = first_finding(stored[2:])
    assert seq == 1 and "record 1 is missing" in problem


# -- the store ----------------------------------------------------------------------------------


class Audited:
    def __init__(self, path: Path, region: str = "eu", **options: Any) -> None:
        self.wall = FakeClock(1_700_000_000_000)
        self.store = LmdbStore(StorageConfig(path, region, StorageOptions(audit=True, **options)), wall_ms=self.wall)
        self.clock = HybridLogicalClock(self.wall, floor=self.store.hlc_mark)

    def write(self, *requests: WriteRequest) -> list[Applied | Failed]:
        return self.store.write_batch(list(requests), self.clock)

    def records(self, origin: str | None = None) -> list[AuditRecord]:
        return [decode(raw) for _, raw in self.store.iter_audit(origin)]

    def verify(self) -> None:
        for report in self.store.audit_chain_reports():  # what AuditVerify checks: floors, vector, own head
            assert report.ok, report.findings


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[Audited]:
    a = Audited(tmp_path / "a")
    yield a
    a.store.close()


def test_every_request_leaves_one_record_that_ends_its_events_and_names_what_it_did(audited: Audited) -> None:
    info = RequestInfo(principal="alice", request_id="r-1", method="Mutate", peer="ipv4:1.2.3.4:5", durability="local")
    results = audited.write(
        WriteRequest([SetRegister("k", b"value")], b"idem-1", info),
        WriteRequest([AddMembers("s", ("x", "y")), Increment("n", -3), RemoveMembers("s", ("z",))]),
        WriteRequest([DeleteKey("gone")]),
    )
    assert all(isinstance(r, Applied) for r in results)
    records = audited.records()
    assert [r.seq for r in records] == [1, 2, 3]
    first = records[0]
    assert (first.principal, first.request_id, first.method, first.peer) == ("alice", "r-1", "Mutate", info.peer)
    assert (first.kind, first.idempotency_key, first.durability) == ("write", b"idem-1", "local")
    assert first.operations == (OpSummary("k", "set", 0, hashlib.sha256(b"value").digest()),)
    assert [(o.key, o.kind, o.amount) for o in records[1].operations] == [
        ("s", "add", 2),
        ("n", "incr", -3),
        ("s", "remove", 1),
    ]
    assert records[2].operations == (OpSummary("gone", "delete"),)
    # Each record's events are its request's log entry, the record's own dot last; its token is the request's.
    entries = list(audited.store.log_entries())
    for record, entry, result in zip(records, entries, results, strict=True):
        assert (record.first, record.last) == (entry.first, entry.last)
        assert record_key(entry.origin, entry.last) in entry.delta.entries
        assert isinstance(result, Applied)
        assert decode_as(record.token, VersionVector) == result.token.vv
        assert result.token.vv.get(entry.origin) == record.last
    audited.verify()


def test_refusals_and_replays_are_audit_only_entries(audited: Audited) -> None:
    audited.write(WriteRequest([SetRegister("k", b"1")], b"idem"))
    refused_before = RequestInfo(principal="eve", method="Mutate", refused=("PERMISSION_DENIED", "no set on k"))
    results = audited.write(
        WriteRequest([Increment("k", 1)]),  # a type mismatch, refused in the batch
        WriteRequest([SetRegister("k", b"1")], b"idem"),  # a retry: answered from the idempotency record
        WriteRequest([SetRegister("k", b"2")], b"idem"),  # the same key for another request
        WriteRequest([SetRegister("k", b"3")], info=refused_before),  # refused before the writer
    )
    assert isinstance(results[0], Failed) and isinstance(results[2], Failed)
    assert isinstance(results[1], Applied) and results[1].replayed
    assert isinstance(results[3], Failed) and isinstance(results[3].error, RefusalRecorded)
    kinds = [(r.kind, r.code) for r in audited.records()]
    assert kinds == [
        ("write", ""),
        ("refused", "FAILED_PRECONDITION"),
        ("replay", ""),
        ("refused", "INVALID_ARGUMENT"),
        ("refused", "PERMISSION_DENIED"),
    ]
    replay = audited.records()[2]
    assert decode_as(replay.token, VersionVector) == results[1].token.vv  # the token the retry was answered with
    assert audited.records()[4].principal == "eve"
    # A refused request changed nothing but the trail: k still holds the first write, and each record its own dot.
    assert audited.store.get("k") is not None and audited.store.get("k").read().value == b"1"  # type: ignore[union-attr]
    assert [(r.first, r.last) for r in audited.records()[1:]] == [(3, 3), (4, 4), (5, 5), (6, 6)]
    audited.verify()


def test_regression_a_request_refused_for_its_size_leaves_no_record_of_a_write(tmp_path: Path) -> None:
    """Found writing the trail: the record was written before the size check, so a refused write left one."""
    a = Audited(tmp_path / "a", log_entry_bytes_max=2_000, key_state_bytes_max=100_000)
    try:
        big = [AddMembers("set", tuple(f"m{i:05d}" for i in range(400)))]
        results = a.write(WriteRequest([SetRegister("small", b"ok")]), WriteRequest(big))
        assert isinstance(results[0], Applied) and isinstance(results[1], Failed)
        assert [(r.kind, r.code) for r in a.records()] == [("write", ""), ("refused", "RESOURCE_EXHAUSTED")]
        assert a.store.get("set") is None
        a.verify()
    finally:
        a.store.close()


def test_a_full_store_keeps_its_chain_whole(tmp_path: Path) -> None:
    """Batches retried request by request on a full map: the chain's head follows only what committed."""
    a = Audited(tmp_path / "a", map_size_bytes=256 * 1024, map_size_bytes_max=512 * 1024)
    try:
        for i in range(60):
            a.write(*(WriteRequest([SetRegister(f"k{i}-{j}", b"x" * 9_000)]) for j in range(3)))
        assert any(r.kind == "write" for r in a.records())
        a.verify()
        a.store.close()
        a.store = LmdbStore(a.store.config, wall_ms=a.wall)
        a.verify()  # the head in meta is the chain's last record
    finally:
        a.store.close()


def test_auditing_off_and_on_again_leaves_a_chain_that_says_where_the_evidence_stops(tmp_path: Path) -> None:
    """Turned off and on, a node's chain broke at the first event minted while off (verify failed from then on).

    Now one ``resumed`` record, written when auditing is on again, covers those events; the chain goes on.
    """
    a = Audited(tmp_path / "a")
    a.write(WriteRequest([SetRegister("k", b"1")]))
    config = a.store.config
    a.store.close()
    plain = LmdbStore(StorageConfig(config.path, config.region, StorageOptions(audit=False)), wall_ms=a.wall)
    clock = HybridLogicalClock(a.wall, floor=plain.hlc_mark)
    plain.write_batch([WriteRequest([SetRegister("k", b"2")]), WriteRequest([Increment("n", 1)])], clock)
    plain.close()
    a.store = LmdbStore(StorageConfig(config.path, config.region, StorageOptions(audit=True)), wall_ms=a.wall)
    a.clock = HybridLogicalClock(a.wall, floor=a.store.hlc_mark)
    try:
        assert a.store.audit_unrecorded_from() == 3  # events 1 (the write) and 2 (its record) have records
        assert not all(report.ok for report in a.store.audit_chain_reports())  # as it was before this fix
        (result,) = a.write(WriteRequest((), info=RequestInfo(method="start", resume_chain=True)))
        assert isinstance(result, Applied)
        a.write(WriteRequest([SetRegister("k", b"3")]))
        a.verify()
        assert a.store.audit_unrecorded_from() == 0
        kinds = [(r.kind, r.first, r.last) for r in a.records()]
        assert kinds == [("write", 1, 2), ("resumed", 3, 5), ("write", 6, 7)]
        assert "events 3..4" in a.records()[1].reason
        # Nothing to cover: no record is written.
        (again,) = a.write(WriteRequest((), info=RequestInfo(method="start", resume_chain=True)))
        assert isinstance(again, Applied) and len(a.records()) == 3
    finally:
        a.store.close()


def test_without_auditing_nothing_is_recorded(tmp_path: Path) -> None:
    store = LmdbStore(StorageConfig(tmp_path / "plain", "eu"))
    try:
        store.write_batch([WriteRequest([SetRegister("k", b"v")])], HybridLogicalClock(lambda: 1))
        assert store.context.vv.get(store.origin) == 1
        assert list(store.iter_audit()) == []
    finally:
        store.close()


def test_records_travel_in_their_entries_and_every_region_holds_the_same_chain(tmp_path: Path) -> None:
    eu, us = Audited(tmp_path / "eu", "eu"), Audited(tmp_path / "us", "us")
    try:
        eu.write(WriteRequest([SetRegister("k", b"eu")], info=RequestInfo(principal="alice")))
        eu.write(WriteRequest([Increment("k", 1)]))  # refused: an audit-only entry
        us.write(WriteRequest([AddMembers("s", ("a",))], info=RequestInfo(principal="bob")))
        for source, target in ((eu, us), (us, eu)):
            entries = source.store.log_since(VersionVector(), 1 << 20).entries
            target.store.apply_raw(entries, source.store.region, target.clock)
        assert eu.store.audit_heads_at() == us.store.audit_heads_at()
        assert len(eu.store.audit_heads_at()) == 2
        for region in (eu, us):
            region.verify()
            principals = sorted(r.principal for r in region.records() if r.kind == "write")
            assert principals == ["alice", "bob"]
        # A record's timestamp moved the receiver's clock: a later write there sorts after it.
        newest = max(r.hlc_wall_ms for r in eu.records())
        assert us.clock.now().wall_ms >= newest
    finally:
        eu.store.close()
        us.store.close()


def test_a_new_incarnation_starts_a_chain_of_its_own(tmp_path: Path) -> None:
    a = Audited(tmp_path / "a")
    try:
        a.write(WriteRequest([SetRegister("k", b"1")]))
        old = a.store.origin
        a.store.retire_origin("the test says so")
        a.write(WriteRequest([SetRegister("k", b"2")]))
        new = a.store.origin
        assert new != old
        assert [r.seq for r in a.records(old)] == [1] and [r.seq for r in a.records(new)] == [1]
        assert a.records(new)[0].prev == ZERO_HASH
        a.verify()
    finally:
        a.store.close()


def _ops_of(record: AuditRecord) -> list[str]:
    return [op.key for op in record.operations]


def test_role_writes_in_the_system_keyspace_are_audited_like_any_write(audited: Audited) -> None:
    ops: list[Operation] = [SetRegister("\x00auth/role/ops", b"grants")]
    audited.write(WriteRequest(ops, info=RequestInfo(principal="root", method="PutRole")))
    (record,) = audited.records()
    assert (record.method, record.principal, _ops_of(record)) == ("PutRole", "root", ["\x00auth/role/ops"])


# -- chain heads compared between regions -----------------------------------------------------------


def test_a_peer_whose_copy_of_a_record_differs_is_reported_once_and_a_peer_behind_is_not(tmp_path: Path) -> None:
    eu, us = Audited(tmp_path / "eu", "eu"), Audited(tmp_path / "us", "us")
    try:
        for i in range(3):
            eu.write(WriteRequest([SetRegister(f"k{i}", b"v")], info=RequestInfo(principal="alice")))
        entries = eu.store.log_since(VersionVector(), 1 << 20).entries
        us.store.apply_raw(entries[:2], "eu", us.clock)  # us is one request behind

        def heads_of(store: LmdbStore) -> bytes:
            sender = AuditHeads(store, None, 0.0, lambda: 0)
            sender.new_stream("peer")
            message = rpb.SyncMessage(ack=rpb.SyncAck(vector=b""))
            sender.stamp("peer", message)
            return message.SerializeToString()

        def compared(receiver: LmdbStore, raw: bytes) -> AuditHeads:
            heads = AuditHeads(receiver, None, 0.0, lambda: 0)
            check = heads.received("eu", rpb.SyncMessage.FromString(raw))
            assert check is not None
            asyncio.run(check)
            return heads

        # eu is ahead of us: us cannot compare eu's head yet, and says nothing.
        assert compared(us.store, heads_of(eu.store)).peers["eu"].problems == {}
        # us's head is eu's record 2: eu agrees with it.
        assert compared(eu.store, heads_of(us.store)).peers["eu"].problems == {}
        # Rewrite us's copy of record 2 (as someone with the disk could) and compare again.
        origin = eu.store.origin
        record = us.records(origin)[-1]
        forged = AuditRecord(**{**_fields(record), "principal": "mallory"})
        key = record_key(origin, record.last)
        stored = decode(dict(us.store.iter_audit(origin))[key])
        assert stored == record
        body = encode_register_write(Dot(origin, record.last), Timestamp(record.hlc_wall_ms, 0), forged.encode())
        with us.store.env.begin(write=True) as txn:
            txn.put(lmdb_key(key), plain_record(key, body), db=us.store.data)
        reported = compared(eu.store, heads_of(us.store))
        assert list(reported.peers["eu"].problems) == [origin]
        assert "altered" in reported.peers["eu"].problems[origin]
        assert reported.mismatches == 1
    finally:
        eu.store.close()
        us.store.close()


def test_regression_a_drop_planned_before_a_peers_larger_one_arrived_never_lowers_the_floor(tmp_path: Path) -> None:
    """Found in review: us's floor write had seen eu's higher floor, so it replaced it; every region read the chain
    as broken. Each region now writes a floor of its own, and the chain's floor is the highest."""
    from crdtstore.node.audit_retention import plan_drops

    wall = FakeClock(1_700_000_000_000)
    eu, us = Audited(tmp_path / "eu", "eu"), Audited(tmp_path / "us", "us")
    us.wall = eu.wall = wall
    eu.store._wall_ms = us.store._wall_ms = wall
    try:
        for i in range(10):
            eu.write(WriteRequest([SetRegister(f"k{i}", b"v")]))

        def pull(target: Audited, source: Audited) -> None:
            entries = source.store.log_since(target.store.context.vv, 1 << 26).entries
            target.store.apply_raw(entries, source.store.region, target.clock)

        pull(us, eu)
        origin = eu.store.origin
        records = eu.records(origin)
        wall.advance(100 * 86_400_000)
        eu.store.put_audit_exported({origin: (7, records[6].last)})
        us.store.put_audit_exported({origin: (5, records[4].last)})
        us_drops, _ = plan_drops(us.store, wall(), 0, 1 << 40)  # us plans 1..5
        eu_drops, _ = plan_drops(eu.store, wall(), 0, 1 << 40)  # eu plans 1..7
        info = RequestInfo(principal="crdtstore", method="AuditRetention")
        eu.write(WriteRequest(eu_drops[0].operations("eu"), info=info))
        pull(us, eu)  # eu's drop arrives before us's commits
        us.write(WriteRequest(us_drops[0].operations("us"), info=info))
        pull(eu, us)
        for region in (eu, us):
            floor = region.store.audit_floor(origin)
            assert floor is not None and floor.seq == 7
            region.verify()
    finally:
        eu.store.close()
        us.store.close()


def test_regression_the_record_of_a_refused_request_is_bounded_whatever_it_held(audited: Audited) -> None:
    """Found in review: a refusal's record named every operation, so one huge refused request outgrew what a
    replication message carries, and its entry stopped replication for good."""
    many = [SetRegister("k" * 5000, b"") for _ in range(20_000)]
    refused = RequestInfo(principal="p" * 5000, refused=("INVALID_ARGUMENT", "too many operations"))
    audited.write(WriteRequest(many, b"i" * 5000, refused))
    (record,) = audited.records()
    assert len(record.operations) == 100 and all(len(op.key) == 1024 for op in record.operations)
    assert "20000 operations; the first 100 are recorded" in record.reason
    assert len(record.principal) == 1024 and len(record.idempotency_key) == 1024
    assert len(record.encode()) < 200_000
    audited.verify()
