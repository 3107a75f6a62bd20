"""Tamper detection: a real data directory, copied, edited with py-lmdb, checked by ``audit verify --data-dir``.

The store is written by ``LmdbStore`` with auditing on (the node's own
write path: each request's record in its batch's transaction), closed, and
copied once per case. Each case edits the copy the way someone with access
to the files could (a flipped byte, a deleted record, two records swapped,
the tail cut off, a record rewritten with its own hash recomputed, records
removed below or above a retention floor) and runs the command as a user
does (``crdtstore.cli.main``, in this process: the same code as the
installed command). Every edit must be found (exit status 1), and the
finding must name the record that was edited.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import msgpack
import pytest

from crdtstore.audit.record import AuditError, AuditRecord, Floor, decode, parse_record_key, record_key
from crdtstore.cli import main
from crdtstore.crdt import HybridLogicalClock
from crdtstore.node.audit_rpc import export_records, log_page
from crdtstore.operations import DeleteKey, Increment, Operation, SetRegister
from crdtstore.storage import Applied, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.audit import RequestInfo, encode_floor, floor_key
from crdtstore.storage.keys import lmdb_key
from crdtstore.v1 import kv_pb2

RECORDS = 12


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True)
class Original:
    path: Path
    origin: str
    records: list[AuditRecord]  # in chain order


def _write(store: LmdbStore, clock: HybridLogicalClock, i: int, *ops: object) -> None:
    info = RequestInfo(principal=f"user{i % 3}", request_id=f"request-{i:04d}", method="Mutate", durability="local")
    (result,) = store.write_batch([WriteRequest(list(ops), info=info)], clock)  # type: ignore[arg-type]
    assert isinstance(result, Applied), result


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Original]:
    path = tmp_path_factory.mktemp("audited") / "data"
    store = LmdbStore(StorageConfig(path, "eu", StorageOptions(audit=True)))
    try:
        clock = HybridLogicalClock(_wall_ms, floor=store.hlc_mark)
        for i in range(RECORDS):
            if i % 2:
                _write(store, clock, i, SetRegister(f"k{i % 4}", f"value {i}".encode()), Increment("n", i))
            else:
                _write(store, clock, i, SetRegister(f"k{i % 4}", f"value {i}".encode()))
        records = [decode(raw) for _, raw in store.iter_audit(store.origin)]
        origin = store.origin
    finally:
        store.close()
    assert [r.seq for r in records] == list(range(1, RECORDS + 1))
    yield Original(path, origin, records)


def _copy(original: Original, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(original.path, copy)
    return copy


def _tamper(path: Path, edit: Callable[[lmdb.Transaction, lmdb._Database], object]) -> None:
    env = lmdb.open(str(path), max_dbs=16, subdir=True)
    try:
        with env.begin(write=True) as txn:
            edit(txn, env.open_db(b"data", txn=txn, create=False))
    finally:
        env.close()


def _get(txn: lmdb.Transaction, data: lmdb._Database, key: bytes) -> bytes:
    value = txn.get(key, db=data)
    assert value is not None
    return bytes(value)


def _verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["audit", "verify", "--data-dir", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


def _findings(report: dict[str, object]) -> list[dict[str, object]]:
    chains = report["chains"]
    assert isinstance(chains, list)
    return [f for chain in chains for f in chain["findings"]]


def _key(original: Original, record: AuditRecord) -> bytes:
    return lmdb_key(record_key(original.origin, record.last))


def test_the_untouched_copy_verifies(original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(original, tmp_path)
    before = (copy / "data.mdb").read_bytes()
    code, report = _verify(copy, capsys)
    assert code == 0 and report["ok"], report
    assert _findings(report) == []
    chains = report["chains"]
    assert isinstance(chains, list)
    (chain,) = chains
    assert chain["records"] == RECORDS and chain["head_seq"] == RECORDS
    assert (copy / "data.mdb").read_bytes() == before, "verify --data-dir must not change the directory"
    assert not (copy / "lock.mdb").exists() or (original.path / "lock.mdb").exists()


def test_a_flipped_byte_in_a_record_is_found_at_that_record(
    original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = original.records[4]  # record 5
    copy = _copy(original, tmp_path)

    def flip(txn: lmdb.Transaction, data: lmdb._Database) -> None:
        key = _key(original, target)
        stored = bytearray(_get(txn, data, key))
        at = bytes(stored).find(target.request_id.encode())  # inside the record, as stored
        assert at > 0
        stored[at + len(target.request_id) - 1] ^= 0x01  # "request-0004" -> "request-0005"
        txn.put(key, bytes(stored), db=data)

    _tamper(copy, flip)
    code, report = _verify(copy, capsys)
    assert code == 1 and not report["ok"]
    (finding, *_) = _findings(report)
    # The edited record still decodes, so it is its successor's link that breaks, naming both.
    assert finding["seq"] == 6 and finding["at"] == original.records[5].last
    assert "record 6 does not hold the hash of record 5" in str(finding["problem"])


def test_a_deleted_record_is_named(original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = original.records[6]  # record 7
    copy = _copy(original, tmp_path)
    _tamper(copy, lambda txn, data: txn.delete(_key(original, target), db=data))
    code, report = _verify(copy, capsys)
    assert code == 1
    (finding, *_) = _findings(report)
    assert finding["seq"] == 7 and "record 7 is missing" in str(finding["problem"])


def test_two_swapped_records_are_named(original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = original.records[2], original.records[3]  # records 3 and 4
    copy = _copy(original, tmp_path)

    def swap(txn: lmdb.Transaction, data: lmdb._Database) -> None:
        va, vb = _get(txn, data, _key(original, a)), _get(txn, data, _key(original, b))
        txn.put(_key(original, a), vb, db=data)
        txn.put(_key(original, b), va, db=data)

    _tamper(copy, swap)
    code, report = _verify(copy, capsys)
    assert code == 1
    (finding, *_) = _findings(report)
    assert finding["seq"] == 3 and finding["at"] == a.last
    assert "moved or swapped" in str(finding["problem"])


def test_a_truncated_tail_is_found(original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(original, tmp_path)

    def truncate(txn: lmdb.Transaction, data: lmdb._Database) -> None:
        for record in original.records[-3:]:
            assert txn.delete(_key(original, record), db=data)

    _tamper(copy, truncate)
    code, report = _verify(copy, capsys)
    assert code == 1
    (finding, *_) = _findings(report)
    assert finding["seq"] == RECORDS  # the head the node recorded
    assert f"the chain ends at record {RECORDS - 3}" in str(finding["problem"])


def test_a_rewritten_record_with_its_own_hash_recomputed_breaks_the_next_link(
    original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = original.records[8]  # record 9
    forged = dataclasses.replace(target, principal="mallory", _raw=b"")
    assert decode(forged.encode()).digest() != target.digest()  # a valid record, under its own new hash
    copy = _copy(original, tmp_path)

    def rewrite(txn: lmdb.Transaction, data: lmdb._Database) -> None:
        key = _key(original, target)
        stored = _get(txn, data, key)
        old, new = target.encode(), forged.encode()
        assert stored.count(old) == 1
        # The register's value is msgpack bin: its length prefix changes with the record's length.
        stored = stored.replace(_bin(old), _bin(new))
        txn.put(key, stored, db=data)

    _tamper(copy, rewrite)
    code, report = _verify(copy, capsys)
    assert code == 1
    (finding, *_) = _findings(report)
    assert finding["seq"] == 10 and finding["at"] == original.records[9].last
    assert "record 10 does not hold the hash of record 9" in str(finding["problem"])


def _bin(raw: bytes) -> bytes:
    packed: bytes = msgpack.packb(raw, use_bin_type=True)
    return packed


def test_after_a_trim_the_floor_links_and_removing_records_above_it_is_found(
    original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retention's drop (records and floor in one write) verifies; a record removed above the floor does not."""
    copy = _copy(original, tmp_path)
    store = LmdbStore(StorageConfig(copy, "eu", StorageOptions(audit=True)))
    try:
        dropped = original.records[:5]
        last = dropped[-1]
        ops: list[Operation] = [DeleteKey(record_key(original.origin, r.last)) for r in dropped]
        floor = encode_floor(Floor(last.seq, last.digest(), last.last))
        ops.append(SetRegister(floor_key(original.origin, "eu"), floor))
        clock = HybridLogicalClock(_wall_ms, floor=store.hlc_mark)
        _write(store, clock, 99, *ops)
        assert store.audit_floor(original.origin) == Floor(last.seq, last.digest(), last.last)
        held = [parse_record_key(key)[1] for key, _ in store.iter_audit(original.origin)]
        assert held[0] == original.records[5].last
    finally:
        store.close()
    code, report = _verify(copy, capsys)
    assert code == 0, report
    _tamper(copy, lambda txn, data: txn.delete(_key(original, original.records[5]), db=data))
    code, report = _verify(copy, capsys)
    assert code == 1
    (finding, *_) = _findings(report)
    assert finding["seq"] == 6 and "record 6 is missing" in str(finding["problem"])


def test_the_human_summary_names_the_first_bad_record(
    original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(original, tmp_path)
    _tamper(copy, lambda txn, data: txn.delete(_key(original, original.records[1]), db=data))
    assert main(["audit", "verify", "--data-dir", str(copy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("BROKEN:") and f"chain {original.origin}, record 2" in err


def test_verify_data_dir_usage_errors(original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--data-dir", str(tmp_path / "nothing")]) == 2
    assert "not a node's data directory" in capsys.readouterr().err
    copy = _copy(original, tmp_path)
    store = LmdbStore(StorageConfig(copy, "eu", StorageOptions(audit=True)))  # holds the lock, as a node does
    try:
        assert main(["audit", "verify", "--data-dir", str(copy)]) == 2
        assert "a node is using" in capsys.readouterr().err
    finally:
        store.close()
    assert main(["audit", "verify", "--data-dir", str(copy)]) == 0


def test_a_record_that_does_not_decode_is_named_and_stops_an_export(
    original: Original, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = original.records[3]  # record 4
    copy = _copy(original, tmp_path)

    def garble(txn: lmdb.Transaction, data: lmdb._Database) -> None:
        key = _key(original, target)
        stored = bytearray(_get(txn, data, key))
        at = bytes(stored).find(target.encode())
        assert at > 0 and stored[at + 3] == 1  # the format version, after the array's header
        stored[at + 3] = 7
        txn.put(key, bytes(stored), db=data)

    _tamper(copy, garble)
    code, report = _verify(copy, capsys)
    assert code == 1
    (finding, *_) = _findings(report)
    assert finding["seq"] == 4 and finding["at"] == target.last and "does not decode" in str(finding["problem"])
    store = LmdbStore(StorageConfig(copy, "eu", StorageOptions(audit=True)))
    try:
        with pytest.raises(AuditError, match=f"at event {target.last} does not decode"):
            list(export_records(store, original.origin, 0, 1 << 62))
        # The log passes over it (verify is what reports it) and shows every other record.
        records, _ = log_page(store, kv_pb2.AuditLogRequest(limit=1000))
        assert [r.seq for r in records] == [r.seq for r in original.records if r.seq != 4]
    finally:
        store.close()
