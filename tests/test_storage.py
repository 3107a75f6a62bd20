"""The LMDB store: atomic batches, durability across reopen, limits, idempotency, the delta log."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from crdtstore.crdt import HybridLogicalClock, StoreMap, TypeMismatch, ValueType, VersionVector, encode
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.storage import (
    Applied,
    DataCorruption,
    Failed,
    IdempotencyConflict,
    KeyTooLarge,
    LmdbStore,
    StorageConfig,
    StorageError,
    StorageOptions,
    StoreFull,
    WriteRequest,
    WrongRegion,
)
from crdtstore.testing.clock import FakeClock


class Harness:
    def __init__(self, path: Path, region: str = "eu", **options: Any) -> None:
        self.wall = FakeClock(1_700_000_000_000)
        self.config = StorageConfig(path, region, StorageOptions(**options))
        self.store = LmdbStore(self.config, wall_ms=self.wall)
        self.clock = HybridLogicalClock(self.wall, floor=self.store.hlc_mark)

    def write(self, *requests: WriteRequest) -> list[Applied | Failed]:
        return self.store.write_batch(list(requests), self.clock)

    def one(self, *ops: Operation, key: bytes = b"") -> Applied | Failed:
        return self.write(WriteRequest(list(ops), key))[0]

    def value(self, key: str) -> object:
        state = self.store.get(key)
        read = None if state is None else state.read()
        return None if read is None else read.value

    def reopen(self) -> None:
        self.store.close()
        self.store = LmdbStore(self.config, wall_ms=self.wall)
        self.clock = HybridLogicalClock(self.wall, floor=self.store.hlc_mark)


Make = Callable[..., Harness]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """Harnesses whose stores are closed at the end of the test (the directory lock is a file)."""
    made: list[Harness] = []

    def build(name: str = "store", **options: int) -> Harness:
        made.append(Harness(tmp_path / name, "eu", **options))
        return made[-1]

    yield build
    for harness in made:
        with contextlib.suppress(lmdb.Error):
            harness.store.close()


@pytest.fixture
def h(make: Make) -> Harness:
    return make()


def test_a_batch_lands_and_survives_reopen(h: Harness) -> None:
    result = h.one(SetRegister("r", b"v"), Increment("n", 7), AddMembers("s", ("a", "b")))
    assert isinstance(result, Applied)
    assert result.token.vv.get(h.store.origin) == 4, "one dot per register write and increment, one per member"
    h.reopen()
    assert h.value("r") == b"v"
    assert h.value("n") == 7
    assert h.value("s") == frozenset({"a", "b"})
    assert h.store.context == result.token
    assert h.store.count_keys() == 3


def test_a_failing_request_changes_nothing_and_its_batch_neighbours_land(h: Harness) -> None:
    h.one(SetRegister("r", b"v"))
    before = h.store.context
    ok1, bad, ok2 = h.write(
        WriteRequest([Increment("n", 1)]),
        WriteRequest([SetRegister("new", b"x"), AddMembers("other", ("m",)), Increment("r", 1)]),
        WriteRequest([AddMembers("s", ("m",))]),
    )
    assert isinstance(ok1, Applied)
    assert isinstance(ok2, Applied)
    assert isinstance(bad, Failed)
    assert isinstance(bad.error, TypeMismatch)
    assert h.value("new") is None, "nothing of the failed request was written"
    assert h.value("other") is None
    assert h.value("r") == b"v"
    assert h.store.context.vv.get(h.store.origin) == before.vv.get(h.store.origin) + 2, (
        "the failed request minted no dots"
    )
    h.reopen()
    assert h.value("n") == 1
    assert h.value("s") == frozenset({"m"})


def test_requests_in_one_batch_see_each_other(h: Harness) -> None:
    results = h.write(
        WriteRequest([AddMembers("s", ("a",))]),
        WriteRequest([RemoveMembers("s", ("a",)), AddMembers("s", ("b",))]),
        WriteRequest([Increment("s", 1)]),  # s is a set by now
    )
    assert isinstance(results[2], Failed)
    assert h.value("s") == frozenset({"b"})


def test_delete_removes_the_key_from_storage(h: Harness) -> None:
    h.one(AddMembers("s", ("a",)))
    h.one(DeleteKey("s"))
    assert h.store.get("s") is None
    assert h.store.count_keys() == 0


def test_idempotency_key_applies_once_and_refuses_a_different_request(h: Harness) -> None:
    first = h.one(Increment("n", 5), key=b"req-1")
    again = h.one(Increment("n", 5), key=b"req-1")
    assert isinstance(first, Applied)
    assert isinstance(again, Applied)
    assert again.replayed
    assert again.token == first.token
    assert h.value("n") == 5
    other = h.one(Increment("n", 6), key=b"req-1")
    assert isinstance(other, Failed)
    assert isinstance(other.error, IdempotencyConflict)
    # Within one batch too, and across a reopen.
    a, b = h.write(WriteRequest([Increment("m", 1)], b"req-2"), WriteRequest([Increment("m", 1)], b"req-2"))
    assert isinstance(b, Applied)
    assert b.replayed
    h.reopen()
    replay = h.one(Increment("n", 5), key=b"req-1")
    assert isinstance(replay, Applied)
    assert replay.replayed
    assert h.value("n") == 5
    assert h.value("m") == 1
    assert isinstance(a, Applied)


def test_idempotency_records_expire_and_are_bounded(make: Make) -> None:
    h = make("s", idempotency_ttl_s=60, idempotency_records_max=10)
    for i in range(30):
        h.one(Increment("n", 1), key=f"k{i}".encode())
    with h.store.env.begin() as txn:
        assert txn.stat(h.store.idem)["entries"] <= 11
    h.wall.advance(61_000)
    h.one(Increment("n", 1), key=b"fresh")
    with h.store.env.begin() as txn:
        assert txn.stat(h.store.idem)["entries"] == 1
        assert txn.stat(h.store.idem_time)["entries"] == 1
    # An expired key is a new request again: that is what the TTL means.
    assert isinstance(h.one(Increment("n", 1), key=b"k29"), Applied)
    assert h.value("n") == 32


def test_a_data_directory_of_another_region_is_refused(h: Harness) -> None:
    h.one(SetRegister("r", b"v"))
    h.store.close()
    with pytest.raises(WrongRegion, match="belongs to region 'eu', not 'us'"):
        LmdbStore(StorageConfig(h.config.path, "us"))


def test_an_unwritable_directory_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot create the data directory"):
        LmdbStore(StorageConfig(blocker / "store", "eu"))


def test_the_map_grows_when_it_fills(make: Make) -> None:
    h = make("s", map_size_bytes=256 * 1024, map_size_bytes_max=64 * 1024 * 1024)
    for i in range(40):
        assert isinstance(h.one(SetRegister(f"k{i}", b"x" * 50_000)), Applied)
    assert h.store.env.info()["map_size"] > 256 * 1024
    h.reopen()
    assert h.value("k39") == b"x" * 50_000


def test_a_full_store_refuses_with_nothing_half_written(make: Make) -> None:
    h = make("s", map_size_bytes=256 * 1024, map_size_bytes_max=512 * 1024)
    landed = 0
    failed: Failed | None = None
    for i in range(200):
        result = h.one(SetRegister(f"a{i}", b"x" * 20_000), SetRegister(f"b{i}", b"y" * 20_000))
        if isinstance(result, Failed):
            failed = result
            break
        landed += 1
    assert failed is not None
    assert isinstance(failed.error, StoreFull)
    assert "maximum size" in str(failed.error)
    i = landed
    assert h.value(f"a{i}") is None
    assert h.value(f"b{i}") is None
    # Small requests that fit still land in a batch with one that does not.
    small, big = h.write(WriteRequest([Increment("n", 1)]), WriteRequest([SetRegister("big", b"z" * 400_000)]))
    assert isinstance(big, Failed)
    assert isinstance(small, Applied)
    h.reopen()
    assert h.value(f"a{landed - 1}") == b"x" * 20_000
    assert h.value("n") == 1


def test_long_keys_are_stored_whole_and_scanned_by_prefix(h: Harness) -> None:
    base = "p" * 470
    keys = [base + suffix for suffix in ("", "a", "b" * 40, "b" * 40 + "c" * 500, "z" * 554)]
    for key in keys:
        h.one(SetRegister(key, key[-3:].encode()))
    for key in keys:
        assert h.value(key) == key[-3:].encode()
    found, _ = h.store.scan(prefix=base + "b")
    assert sorted(k for k, _ in found) == [base + "b" * 40, base + "b" * 40 + "c" * 500]
    everything, _ = h.store.scan(prefix="p", limit=100)
    assert sorted(k for k, _ in everything) == sorted(keys)


def test_scan_pages_through_a_prefix_in_key_order(h: Harness) -> None:
    for i in range(25):
        h.one(SetRegister(f"user/{i:03d}", b"v"), SetRegister(f"zzz/{i}", b"w"))
    h.one(SetRegister("user", b"not under the prefix"), SetRegister("user0", b"nor this"))
    seen: list[str] = []
    after = b""
    for _ in range(10):
        page, after = h.store.scan("user/", after, limit=7)
        seen.extend(k for k, _ in page)
        if not after:
            break
    assert seen == [f"user/{i:03d}" for i in range(25)]


def test_scan_pages_are_bounded_in_bytes(h: Harness) -> None:
    for i in range(10):
        h.one(SetRegister(f"k{i}", b"x" * 10_000))
    page, after = h.store.scan("", b"", limit=100, bytes_max=25_000)
    assert 1 <= len(page) <= 3
    assert after


def test_the_delta_log_rebuilds_the_state(h: Harness) -> None:
    h.one(SetRegister("r", b"1"), AddMembers("s", ("a", "b")))
    h.one(Increment("n", 3), RemoveMembers("s", ("a",)))
    h.one(DeleteKey("r"), SetRegister("r", b"2"))
    h.one(DeleteKey("n"))
    rebuilt = functools.reduce(lambda acc, e: acc.join_delta(e.delta), h.store.log_entries(), StoreMap())
    assert rebuilt.context == h.store.context
    stored = dict(h.store.scan("", limit=100)[0])
    assert dict(rebuilt.entries) == stored
    assert [(e.origin, e.first, e.last, e.source) for e in h.store.log_entries()] == [
        (h.store.origin, 1, 3, ""),
        (h.store.origin, 4, 5, ""),
        (h.store.origin, 6, 7, ""),
        (h.store.origin, 8, 8, ""),
    ]


def test_the_delta_log_is_bounded_in_bytes(make: Make) -> None:
    h = make("s", delta_log_bytes_max=20_000)
    for i in range(60):
        h.one(SetRegister(f"k{i}", b"x" * 1_000))
    entries = list(h.store.log_entries())
    assert 10 <= len(entries) < 60
    assert entries[-1].last == 60, "the newest entries are kept"
    # What went is recorded, so a peer that needed it is repaired, and the record survives reopen.
    assert h.store.log_horizon == VersionVector({h.store.origin: entries[0].first - 1})
    h.reopen()
    assert h.store.log_horizon == VersionVector({h.store.origin: entries[0].first - 1})


def test_log_since_sends_what_a_peer_lacks_in_apply_order_and_bounded(h: Harness) -> None:
    for i in range(10):
        h.one(SetRegister(f"k{i}", b"x" * 100))
    entries, reached, _ = h.store.log_since(VersionVector({h.store.origin: 4}), bytes_max=1 << 20)
    assert [(e.origin, e.first, e.last) for e in entries] == [(h.store.origin, n, n) for n in range(5, 11)]
    assert reached == VersionVector({h.store.origin: 10})
    assert h.store.log_since(VersionVector({h.store.origin: 10}), bytes_max=1 << 20) == ([], VersionVector(), None)
    one_by_one, reached, _ = h.store.log_since(VersionVector(), bytes_max=1)
    assert [e.last for e in one_by_one] == [1], "at least one entry, however small the bound"
    assert reached == VersionVector({h.store.origin: 1})


def test_trim_log_removes_what_every_peer_has_and_records_the_horizon(h: Harness) -> None:
    for i in range(10):
        h.one(Increment(f"n{i}", 1))
    assert h.store.trim_log(VersionVector({h.store.origin: 6}), budget=4) == 4
    assert h.store.trim_log(VersionVector({h.store.origin: 6})) == 2
    assert h.store.trim_log(VersionVector({h.store.origin: 6})) == 0
    assert [e.last for e in h.store.log_entries()] == [7, 8, 9, 10]
    assert h.store.log_horizon == VersionVector({h.store.origin: 6})
    assert [e.first for e in h.store.log_since(VersionVector(), bytes_max=1 << 20)[0]] == [7, 8, 9, 10]
    h.reopen()
    assert h.store.log_horizon == VersionVector({h.store.origin: 6})


def test_a_request_whose_change_cannot_travel_in_one_message_is_refused_whole(make: Make) -> None:
    h = make("s", log_entry_bytes_max=4_000)
    assert isinstance(h.one(SetRegister("small", b"x" * 100)), Applied)
    result = h.one(SetRegister("a", b"x" * 3_000), SetRegister("b", b"y" * 3_000))
    assert isinstance(result, Failed) and isinstance(result.error, KeyTooLarge)
    assert "log_entry_bytes_max" in str(result.error)
    assert h.store.get("a") is None and h.store.get("b") is None
    assert [e.last for e in h.store.log_entries()] == [1]


def test_the_clock_mark_survives_reopen_so_no_timestamp_repeats(h: Harness) -> None:
    h.one(SetRegister("r", b"1"))
    mark = h.store.hlc_mark
    h.wall.set(1_000)  # the wall clock stepped far back across the restart
    h.reopen()
    assert h.clock.now() > mark
    h.one(SetRegister("r", b"2"))
    state = h.store.get("r")
    assert state is not None
    slot = state.slots[ValueType.REGISTER]
    assert slot.winner().value == b"2"  # type: ignore[union-attr]


@pytest.mark.processes
def test_stale_readers_of_a_killed_process_are_cleared_at_open(tmp_path: Path, make: Make) -> None:
    path = tmp_path / "s"
    make("s").store.close()
    holder = textwrap.dedent(
        f"""
        import lmdb, sys, time
        env = lmdb.open({str(path)!r}, max_dbs=8, subdir=True)
        txn = env.begin()
        print("reading", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "reading"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
    env = lmdb.open(str(path), max_dbs=8, subdir=True)
    assert env.info()["num_readers"] >= 1, "the killed process left its reader slot behind"
    env.close()
    h = make("s")
    assert h.store.env.reader_check() == 0, "LmdbStore cleared the stale slot when it opened"


def test_a_second_store_on_the_same_directory_is_refused(h: Harness) -> None:
    """Regression (review): two processes on one directory minted the same dots."""
    with pytest.raises(StorageError, match="another crdtstore process is using"):
        LmdbStore(h.config)
    h.one(SetRegister("still", b"works"))
    assert h.value("still") == b"works"


def test_bounds_hold_with_batches_larger_than_the_housekeeping_budget(make: Make) -> None:
    """Regression (review): housekeeping removed 256 entries per batch while a batch could add 1,024."""
    h = make("s", delta_log_bytes_max=50_000, idempotency_records_max=100, housekeeping_per_batch_max=4)
    for b in range(20):
        h.write(*(WriteRequest([SetRegister(f"k{b}-{i}", b"x" * 100)], f"{b}-{i}".encode()) for i in range(64)))
    with h.store.env.begin() as txn:
        assert txn.stat(h.store.idem)["entries"] <= 100 + 64
    log_bytes = sum(len(encode(e.delta)) for e in h.store.log_entries())
    assert log_bytes <= 50_000 + 64 * 300, "at most the bound plus one batch"


def test_a_key_cannot_grow_past_its_bound(make: Make) -> None:
    h = make("s", key_state_bytes_max=20_000)
    assert isinstance(h.one(SetRegister("big", b"x" * 10_000)), Applied)
    result = h.one(SetRegister("big", b"y" * 25_000), Increment("other", 1))
    assert isinstance(result, Failed)
    assert isinstance(result.error, KeyTooLarge)
    assert h.value("other") is None, "nothing of the refused request was written"
    assert h.value("big") == b"x" * 10_000


def test_a_set_is_not_bound_by_the_key_state_bound(make: Make) -> None:
    """Its members are records of their own: the set grows past key_state_bytes_max, a member at a time."""
    h = make("s", key_state_bytes_max=20_000)
    for i in range(0, 3_000, 1_000):
        assert isinstance(h.one(AddMembers("big", tuple(f"m{n:05d}" for n in range(i, i + 1_000)))), Applied)
    assert len(h.value("big")) == 3_000  # type: ignore[arg-type]


def test_a_damaged_key_fails_only_its_own_request(h: Harness) -> None:
    h.one(SetRegister("good", b"1"), SetRegister("bad", b"2"))
    with h.store.env.begin(write=True) as txn:
        txn.put(b"bad", b"\x00garbage", db=h.store.data)
    ok, broken = h.write(WriteRequest([SetRegister("good", b"3")]), WriteRequest([SetRegister("bad", b"4")]))
    assert isinstance(ok, Applied)
    assert isinstance(broken, Failed)
    assert isinstance(broken.error, DataCorruption)
    assert h.value("good") == b"3"


def test_regression_log_since_never_adds_an_entry_past_the_byte_bound(h: Harness) -> None:
    """From review: a message could be nearly the bound plus one more entry of up to 16.5 MiB (over gRPC's limit)."""
    for i in range(5):
        h.one(SetRegister(f"small{i}", b"s" * 100))
    h.one(SetRegister("big", b"b" * 5_000))
    entries, _, _ = h.store.log_since(VersionVector(), bytes_max=2_000)
    assert [e.last for e in entries] == [1, 2, 3, 4, 5], "the big entry waits for the next message"
    alone, _, _ = h.store.log_since(VersionVector({h.store.origin: 5}), bytes_max=2_000)
    assert [e.last for e in alone] == [6], "alone, an entry larger than the bound still goes"
