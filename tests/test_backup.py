"""Backups without a node: the copy of one read transaction, the manifest, checking a backup, restoring it.

The stream a node sends (``copy_chunks`` turned into ``BackupChunk``
messages, as the Admin RPC does) is written by the same ``write_backup``
that ``crdtstore backup`` uses, so these tests cover everything but the gRPC
transport, which ``test_backup_drill.py`` runs on real processes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtstore.backup.manifest import DATA_FILE, MANIFEST_FILE, load_manifest, verify_backup
from crdtstore.backup.restore import restore_backup
from crdtstore.backup.rpc import summary_pb
from crdtstore.backup.take import BackupError, write_backup
from crdtstore.crdt import HybridLogicalClock
from crdtstore.crdt.origin import region_of
from crdtstore.operations import AddMembers, DeleteKey, Increment, RemoveMembers, SetRegister
from crdtstore.storage import Applied, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.backup import copy_chunks, store_facts
from crdtstore.testing.clock import FakeClock
from crdtstore.v1 import kv_pb2

# The map starts small (it starts at its maximum by default): tests here make it grow.
_FAST = StorageOptions(sync=False, set_part_members=8, map_size_bytes=4 * 1024 * 1024)


def _open(path: Path, region: str = "eu") -> LmdbStore:
    return LmdbStore(StorageConfig(path, region, _FAST))


def _write(store: LmdbStore, *ops: object) -> None:
    clock = HybridLogicalClock(FakeClock(1_000), floor=store.hlc_mark)
    (result,) = store.write_batch([WriteRequest(list(ops))], clock)  # type: ignore[arg-type]
    assert isinstance(result, Applied), result


def _fill(store: LmdbStore, n: int = 300) -> None:
    for i in range(n):
        _write(store, SetRegister(f"r{i}", f"value {i}".encode()), Increment(f"c{i % 7}", i))
    _write(store, AddMembers("big", tuple(f"m{i}" for i in range(50))))  # more members than set_part_members
    _write(store, RemoveMembers("big", ("m3", "m4")), DeleteKey("r5"))


def _stream(store: LmdbStore, chunk_bytes: int = 4096) -> Iterator[kv_pb2.BackupChunk]:
    """What the Admin RPC Backup sends, without gRPC."""
    for item in copy_chunks(store, chunk_bytes):
        if isinstance(item, bytes):
            yield kv_pb2.BackupChunk(data=item)
        else:
            facts, sha256, size = item
            yield kv_pb2.BackupChunk(summary=summary_pb(facts, sha256, size))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = _open(tmp_path / "live")
    _fill(s)
    yield s
    s.close()


def test_a_backup_checks_out_and_its_manifest_says_what_the_store_held(store: LmdbStore, tmp_path: Path) -> None:
    result = write_backup(_stream(store), tmp_path / "bk", source="test")
    manifest = load_manifest(tmp_path / "bk")
    facts = store_facts(store)
    assert manifest["region"] == "eu"
    assert manifest["origin"] == store.origin
    assert manifest["keys"] == facts.keys == store.count_keys()
    assert manifest["vector"] == dict(facts.context.vv.items())
    assert manifest["storage_format"] == 3
    assert manifest["files"][DATA_FILE]["bytes"] == result.data_bytes == (tmp_path / "bk" / DATA_FILE).stat().st_size
    assert [int(d, 16) for d in manifest["bucket_digests"]] == list(facts.bucket_digests)
    assert verify_backup(tmp_path / "bk").ok


def test_the_copy_and_its_facts_come_from_one_read_while_writes_go_on(store: LmdbStore, tmp_path: Path) -> None:
    """Writes land during the copy; the manifest's vector and digests must still describe the copied bytes."""
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        while not stop.is_set():
            _write(store, SetRegister(f"during{written[0]}", b"x"), AddMembers("big", (f"d{written[0]}",)))
            written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        # Small chunks, read slowly enough that writes commit between them.
        messages = []
        for message in _stream(store, chunk_bytes=512):
            messages.append(message)
            if len(messages) % 20 == 0:
                stop.wait(0.002)
        while written[0] < 5:  # the writer did get in, if not during the copy then now (the check below still holds)
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
    write_backup(iter(messages), tmp_path / "bk", source="test")
    report = verify_backup(tmp_path / "bk")
    assert report.ok, report.problems
    # The live store moved on past the copy.
    assert store_facts(store).context.vv.get(store.origin) > report.manifest["vector"][store.origin]  # type: ignore[index]


@pytest.mark.parametrize("target", [DATA_FILE, MANIFEST_FILE])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_flipped_byte_fails_verify_and_restore_refuses_it(
    store: LmdbStore, tmp_path: Path, target: str, where: float
) -> None:
    write_backup(_stream(store), tmp_path / "bk", source="test")
    path = tmp_path / "bk" / target
    raw = bytearray(path.read_bytes())
    at = int(len(raw) * where)
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    report = verify_backup(tmp_path / "bk")
    assert not report.ok
    with pytest.raises(BackupError, match="refusing to restore"):
        restore_backup(tmp_path / "bk", tmp_path / "restored")
    assert not (tmp_path / "restored").exists(), "nothing is laid down from a damaged backup"


def test_a_manifest_whose_digests_disagree_with_the_data_fails(store: LmdbStore, tmp_path: Path) -> None:
    """A manifest rewritten consistently (its own checksum recomputed) still has to match the data."""
    from crdtstore.backup.manifest import build_manifest, manifest_bytes
    from crdtstore.storage.backup import BackupFacts

    write_backup(_stream(store), tmp_path / "bk", source="test")
    manifest = load_manifest(tmp_path / "bk")
    facts = store_facts(store)
    wrong = list(facts.bucket_digests)
    wrong[17] ^= 1
    forged = build_manifest(
        BackupFacts(
            facts.region, facts.origin, facts.storage_format, facts.context, facts.hlc, facts.keys, tuple(wrong)
        ),
        {DATA_FILE: (manifest["files"][DATA_FILE]["bytes"], manifest["files"][DATA_FILE]["sha256"])},
        version="x",
        created_at=manifest["created_at"],
        source="test",
    )
    (tmp_path / "bk" / MANIFEST_FILE).write_bytes(manifest_bytes(forged))
    report = verify_backup(tmp_path / "bk")
    assert report.differing_buckets == [17]
    assert not report.ok


def test_restore_lays_the_backup_down_under_a_new_incarnation(store: LmdbStore, tmp_path: Path) -> None:
    write_backup(_stream(store), tmp_path / "bk", source="test")
    manifest = load_manifest(tmp_path / "bk")
    result = restore_backup(tmp_path / "bk", tmp_path / "restored")
    assert result.backup_origin == store.origin
    assert result.origin != store.origin and region_of(result.origin) == "eu"
    assert dict(result.vector.items()) == manifest["vector"], "the restored directory claims what the backup held"
    restored = _open(tmp_path / "restored")
    try:
        assert restored.origin == result.origin, "the new incarnation was recorded before anything was minted"
        assert store_facts(restored).bucket_digests == store_facts(store).bucket_digests
        assert restored.get("r5") is None
        _write(restored, SetRegister("after", b"1"))
        assert restored.context.vv.get(result.origin) == 1
        assert restored.context.vv.get(store.origin) == manifest["vector"][store.origin], "no old id minted again"
    finally:
        restored.close()


def test_restore_never_overwrites_a_directory(store: LmdbStore, tmp_path: Path) -> None:
    write_backup(_stream(store), tmp_path / "bk", source="test")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "data.mdb").write_bytes(b"someone's data")
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(tmp_path / "bk", tmp_path / "busy")
    assert (tmp_path / "busy" / "data.mdb").read_bytes() == b"someone's data"
    with pytest.raises(BackupError, match="not empty"):
        write_backup(_stream(store), tmp_path / "bk", source="test")


def test_regression_a_restore_that_fails_half_way_leaves_nothing_that_would_start(
    store: LmdbStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the incarnation was committed before the rejoin mark, in another transaction.

    A crash between them left a complete directory that a node would serve without rejoin mode. Now the
    restore is built beside the target and renamed into place last.
    """
    import crdtstore.backup.restore as restore_module

    write_backup(_stream(store), tmp_path / "bk", source="test")

    def no_room(_store: LmdbStore) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(restore_module, "mark_rejoin", no_room)
    with pytest.raises(BackupError, match="nothing was restored"):
        restore_backup(tmp_path / "bk", tmp_path / "new")
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    assert not (tmp_path / "new.restoring").exists()
    monkeypatch.undo()
    result = restore_backup(tmp_path / "bk", tmp_path / "new")  # and a second try goes through
    assert (result.data_dir / DATA_FILE).exists()


def test_a_stream_cut_short_leaves_no_backup(store: LmdbStore, tmp_path: Path) -> None:
    messages = list(_stream(store))
    with pytest.raises(BackupError, match="without its summary"):
        write_backup(iter(messages[:-1]), tmp_path / "cut", source="test")
    assert not (tmp_path / "cut" / MANIFEST_FILE).exists()
    assert not (tmp_path / "cut" / DATA_FILE).exists()


def test_closing_the_stream_early_ends_the_copy_and_its_transaction(store: LmdbStore) -> None:
    chunks = copy_chunks(store, 1024)
    assert isinstance(next(chunks), bytes)
    chunks.close()
    # The copy's read transaction is gone: growing the map (which waits for this process's readers) goes through.
    assert store._grow()
    assert not list(Path(store.config.path).glob("backup-spool-*")), "the spool is removed"


def test_regression_a_backup_whose_receiver_pauses_never_holds_back_a_write_that_aborts(store: LmdbStore) -> None:
    """Found in review: with the copy piped to the receiver, aborting a write transaction waited for the copy.

    py-lmdb's abort waits while copyfd runs on another thread, holding the write lock: a refused repair or
    a full map (each aborts a transaction) stalled every write until a slow receiver read the whole copy.
    Now the copy is spooled to local disk first, and streamed from there.
    """
    chunks = copy_chunks(store, 1024)
    assert isinstance(next(chunks), bytes)  # the receiver takes one chunk, then pauses
    done = threading.Event()

    def aborted_then_written() -> None:
        with contextlib.suppress(RuntimeError), store.env.begin(write=True) as txn:
            txn.put(b"x", b"y", db=store.meta)
            raise RuntimeError("aborted, as a refused repair is")
        _write(store, SetRegister("after-the-abort", b"v"))
        done.set()

    thread = threading.Thread(target=aborted_then_written, daemon=True)
    thread.start()
    thread.join(timeout=30)  # a bound on a hang, not a measure of speed
    try:
        assert done.is_set(), "a write waited for the paused backup"
    finally:
        chunks.close()


@pytest.mark.processes
def test_backup_verify_and_restore_commands(store: LmdbStore, tmp_path: Path) -> None:
    write_backup(_stream(store), tmp_path / "bk", source="test")
    cli = [sys.executable, "-m", "crdtstore"]
    ok = subprocess.run(
        [*cli, "backup", "verify", str(tmp_path / "bk"), "--json"], check=False, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    restored = subprocess.run(
        [*cli, "restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "new"), "--json"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["backup_origin"] == store.origin
    data = tmp_path / "bk" / DATA_FILE
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    data.write_bytes(bytes(raw))
    bad = subprocess.run([*cli, "backup", "verify", str(tmp_path / "bk")], check=False, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "SHA-256" in bad.stderr
    refused = subprocess.run(
        [*cli, "restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "new2")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1
    assert "refusing to restore" in refused.stderr


def test_rejoin_mode_waits_for_every_peer_and_ends_once_for_good() -> None:
    from crdtstore.crdt import VersionVector
    from crdtstore.node.rejoin import RejoinGate

    cleared: list[bool] = []
    gate = RejoinGate(["b", "c"], pending=True, cleared=lambda: cleared.append(True))
    have = VersionVector({"a#1": 5, "b#1": 2})
    assert gate.waiting(have) == "waiting to hear from b, c"
    gate.heard("b", VersionVector({"a#1": 9, "b#1": 2}))
    assert gate.waiting(have) == "waiting to hear from c"
    gate.heard("c", VersionVector({"c#1": 1}))
    assert gate.waiting(have) == "catching up with b: 4 events behind it (from a#1 4)"
    have = VersionVector({"a#1": 9, "b#1": 2})
    assert gate.waiting(have) == "catching up with c: 1 event behind it (from c#1 1)"
    assert not cleared
    assert gate.waiting(VersionVector({"a#1": 9, "b#1": 3, "c#1": 1})) is None
    assert cleared == [True]
    assert gate.waiting(VersionVector()) is None, "once over, rejoin mode does not come back"
    assert cleared == [True]
    assert RejoinGate(["b"], pending=False, cleared=lambda: cleared.append(False)).waiting(VersionVector()) is None
    assert RejoinGate([], pending=True, cleared=lambda: None).waiting(VersionVector()) is None, (
        "no peers: nothing to wait for"
    )


def test_a_restored_directory_is_marked_for_rejoin_mode(store: LmdbStore, tmp_path: Path) -> None:
    from crdtstore.storage.backup import clear_rejoin, rejoin_pending

    assert not rejoin_pending(store)
    write_backup(_stream(store), tmp_path / "bk", source="test")
    restore_backup(tmp_path / "bk", tmp_path / "restored")
    restored = _open(tmp_path / "restored")
    try:
        assert rejoin_pending(restored)
        clear_rejoin(restored)
        assert not rejoin_pending(restored)
    finally:
        restored.close()


def test_a_copy_that_fails_says_so_instead_of_hanging(store: LmdbStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a failure before the copy started left the pipe open, and the reader waited forever."""

    import crdtstore.storage.backup as backup_module
    from crdtstore.storage import StorageError

    class BrokenGate:
        def read(self) -> contextlib.AbstractContextManager[None]:
            raise RuntimeError("no reading today")

    real_gate = store._gate
    monkeypatch.setattr(store, "_gate", BrokenGate())
    with pytest.raises(StorageError, match="no reading today"):
        list(copy_chunks(store, 4096))
    monkeypatch.setattr(store, "_gate", real_gate)

    def broken_facts(*args: object) -> None:
        raise RuntimeError("digests failed")

    monkeypatch.setattr(backup_module, "snapshot_facts", broken_facts)
    with pytest.raises(StorageError, match="digests failed"):
        list(copy_chunks(store, 4096))
