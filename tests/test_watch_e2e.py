"""The change feed end to end: ``KV.Watch`` on real nodes, through the real clients and the SQLite projection.

The projection (``crdtstore.tools.projection``) commits its rows with the
stream's token; with ``record_dots`` each delivered event's dot is kept under
a uniqueness constraint, so an event delivered twice after a resume fails
the test. The checks: the projection equals the store in every region, and
every acknowledged write's dot was delivered.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from crdtstore.client import AsyncClient, Change, Client, ClientError, Progress, ResetBegin, ResetEnd
from crdtstore.crdt import VersionVector, decode_as
from crdtstore.crdt.origin import region_of
from crdtstore.operations import Increment, SetRegister
from crdtstore.testing.process import ServerProcess
from crdtstore.testing.regions import RegionProcesses
from crdtstore.tools.projection import SqliteProjection, row_value
from crdtstore.v1 import kv_pb2, kv_pb2_grpc

pytestmark = pytest.mark.processes

PREFIX = "orders/"
WAIT_S = 60.0


def _vv(token: bytes) -> VersionVector:
    return decode_as(token, VersionVector)


def _store_rows(client: Client, prefix: str = PREFIX) -> dict[str, str]:
    return {entry.key: row_value(entry) for entry in client.scan(prefix, page_size=1000)}


def _dot_of(token: bytes, region: str) -> tuple[str, int]:
    """A write's dot: its region's entry in the token the write returned (the last event the request minted)."""
    ((origin, counter),) = [(o, n) for o, n in _vv(token).items() if region_of(o) == region][-1:]
    return origin, counter


def _caught_up(targets: Callable[[], list[VersionVector]]) -> Callable[[bytes], bool]:
    """A projection's stop: once its token covers every target vector (read afresh now and then)."""
    last: list[float] = [0.0]
    wanted: list[list[VersionVector]] = [[]]

    def stop(token: bytes) -> bool:
        if time.monotonic() - last[0] > 0.2:
            wanted[0], last[0] = targets(), time.monotonic()
        have = _vv(token)
        return bool(wanted[0]) and all(have.dominates(t) for t in wanted[0])

    return stop


# -- one node -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("watch") / "data") as server:
        yield server


def _items(client: Client, prefix: str, count: int, **kwargs: Any) -> list[Any]:
    out = []
    stream = client.watch(prefix, progress_interval_ms=100, **kwargs)
    try:
        for item in stream:
            out.append(item)
            if len(out) == count:
                return out
    finally:
        stream.close()
    return out


def test_a_watch_starts_with_a_snapshot_then_sends_each_change_as_it_comes(node: ServerProcess) -> None:
    with Client(node.addr) as kv:
        kv.set("w1/a", "1")
        kv.sadd("w1/s", "x", "y")
        kv.set("other/b", "2")
        stream = kv.watch("w1/", progress_interval_ms=100)
        try:
            assert isinstance(next(stream), ResetBegin)
            snapshot = [next(stream), next(stream)]
            assert all(isinstance(c, Change) for c in snapshot)
            assert [(c.key, c.changes, c.reset) for c in snapshot if isinstance(c, Change)] == [
                ("w1/a", ("snapshot",), True),
                ("w1/s", ("snapshot",), True),
            ]
            end = next(stream)
            assert isinstance(end, ResetEnd)
            w = kv.set("w1/a", "3")
            change = next(stream)
            while isinstance(change, Progress):
                change = next(stream)
            assert isinstance(change, Change)
            assert (change.key, change.changes, change.entry.value, change.region) == ("w1/a", ("set",), b"3", "local")
            assert change.group_end and change.dot == _dot_of(w.token, "local")
            assert _vv(change.token).dominates(_vv(w.token))
            kv.incr("w1/n", -2)
            kv.srem("w1/s", "x")
            kv.delete("w1/a")
            seen: list[tuple[str, tuple[str, ...], object]] = []
            while len(seen) < 3:
                item = next(stream)
                if isinstance(item, Change):
                    seen.append((item.key, item.changes, item.entry.value))
            assert seen == [
                ("w1/n", ("incr",), -2),
                ("w1/s", ("remove",), frozenset({"y"})),
                ("w1/a", ("delete",), None),
            ]
        finally:
            stream.close()


def test_a_batch_comes_as_one_group_and_an_idle_stream_sends_progress(node: ServerProcess) -> None:
    with Client(node.addr) as kv:
        stream = kv.watch("w2/", start="now", progress_interval_ms=100)
        try:
            first = next(stream)
            assert isinstance(first, Progress)  # at once: the consumer holds a token from the start
            result = kv.mutate([SetRegister("w2/a", b"1"), Increment("w2/b", 1), SetRegister("other/c", b"x")])
            group: list[Change] = []
            while not group or not group[-1].group_end:
                item = next(stream)
                if isinstance(item, Change):
                    group.append(item)
            assert [c.key for c in group] == ["w2/a", "w2/b"]  # not other/c: outside the prefix
            assert len({c.token for c in group}) == 1
            # Each event its own dot (a deduplication key); the last key's is the request's, as its token names.
            assert len({c.dot for c in group}) == 2 and group[-1].dot == _dot_of(result.token, "local")
            assert [c.group_end for c in group] == [False, True]
            # Idle: progress messages, whose tokens cover the write.
            item = next(stream)
            assert isinstance(item, Progress) and _vv(item.token).dominates(_vv(result.token))
        finally:
            stream.close()


def test_resuming_from_a_token_sends_exactly_what_it_lacks(node: ServerProcess) -> None:
    with Client(node.addr) as kv:
        kv.set("w3/a", "1")
        items = _items(kv, "w3/", 3)
        assert isinstance(items[-1], ResetEnd)
        token = items[-1].token
        kv.set("w3/b", "2")
        kv.set("w3/c", "3")
        later = _items(kv, "w3/", 2, after=token)
        assert [(c.key, c.entry.value) for c in later] == [("w3/b", b"2"), ("w3/c", b"3")]
        # A write's own token resumes too: only what came after it.
        w = kv.set("w3/d", "4")
        kv.set("w3/e", "5")
        (after_write,) = _items(kv, "w3/", 1, after=w.token)
        assert isinstance(after_write, Change) and after_write.key == "w3/e"


def test_bad_watch_requests_are_refused_with_reasons(node: ServerProcess) -> None:
    with grpc.insecure_channel(node.addr) as channel:
        stub: Any = kv_pb2_grpc.KVStub(channel)
        cases = [
            (kv_pb2.WatchRequest(start="later"), "start"),
            (kv_pb2.WatchRequest(on_expired="ignore"), "on_expired"),
            (kv_pb2.WatchRequest(after=kv_pb2.CausalToken(vector=b"\xff\x00")), "token"),
            (kv_pb2.WatchRequest(prefix="\x00auth/"), "NUL"),
            (kv_pb2.WatchRequest(after=kv_pb2.CausalToken(vector=b"\x90"), start="now"), "either"),
        ]
        for request, word in cases:
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stub.Watch(request, timeout=10)))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert word in (info.value.details() or ""), (word, info.value.details())


def test_a_consumer_that_stops_reading_is_cut_off_and_writers_go_on(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[server]\nwatch_stall_s = 1\n")
    with (
        ServerProcess(tmp_path / "data", extra_args=("--config", str(config))) as server,
        grpc.insecure_channel(server.addr) as channel,
        Client(server.addr) as kv,
    ):
        stub: Any = kv_pb2_grpc.KVStub(channel)
        call = stub.Watch(kv_pb2.WatchRequest(prefix="big/", start="now"))
        next(call)  # the first progress message; then the consumer reads nothing
        value = b"v" * 60_000
        written = 0
        # Enough to fill gRPC's windows many times over; every write is acknowledged meanwhile.
        while written < 600:
            for i in range(20):
                kv.set(f"big/{written + i}", value)
            written += 20
            if kv.status()["watch_streams_cut"]:
                break
        deadline = time.monotonic() + WAIT_S
        while not kv.status()["watch_streams_cut"]:  # the node waits watch_stall_s on the last send
            assert time.monotonic() < deadline, "the stalled stream was never cut"
            time.sleep(0.1)
        assert kv.status()["watch_streams_cut"] == 1
        with pytest.raises(grpc.RpcError) as info:
            for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "resume from the last token" in (info.value.details() or "")


def test_an_expired_token_gets_a_reset_or_out_of_range(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    # Every record goes at the first trim: the bound is below one page.
    config.write_text("[storage]\nwatch_retention_bytes_max = 1\n")
    with ServerProcess(tmp_path / "data", extra_args=("--config", str(config))) as server, Client(server.addr) as kv:
        first = kv.set("e/a", "1")
        deadline = time.monotonic() + WAIT_S
        while True:  # until the node has trimmed the index past the write
            try:
                _items(kv, "e/", 1, after=first.token, on_expired="error")
            except ClientError as exc:
                assert exc.code == grpc.StatusCode.OUT_OF_RANGE
                assert "older than" in str(exc)
                break
            kv.set("e/b", "2")
            assert time.monotonic() < deadline, "the index was never trimmed"
            time.sleep(0.2)
        projection = SqliteProjection(tmp_path / "p.db", "e/")
        projection.db.execute("INSERT INTO rows VALUES ('e/gone', 'stale')")
        projection.db.execute("INSERT INTO feed VALUES (1, ?)", (first.token,))
        projection.db.commit()
        done = kv.set("e/c", "3")
        projection.follow(kv, progress_interval_ms=100, stop=lambda token: _vv(token).dominates(_vv(done.token)))
        assert projection.rows() == _store_rows(kv, "e/")  # the reset dropped the stale row
        projection.close()


def test_a_stream_that_falls_behind_what_the_index_keeps_starts_again_from_a_snapshot(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    # Trimmed every second down to the newest record; a consumer may stall for a minute before it is cut.
    config.write_text("[storage]\nwatch_retention_bytes_max = 1\n[server]\nwatch_stall_s = 60\n")
    with (
        ServerProcess(tmp_path / "data", extra_args=("--config", str(config))) as server,
        # A snapshot page may pass 4 MiB by one key, as a Scan page may (the Python client takes any size).
        grpc.insecure_channel(server.addr, options=[("grpc.max_receive_message_length", -1)]) as channel,
        Client(server.addr) as kv,
    ):
        stub: Any = kv_pb2_grpc.KVStub(channel)
        call = stub.Watch(kv_pb2.WatchRequest(prefix="lag/", start="now"), timeout=WAIT_S)
        assert next(call).progress
        value = b"v" * 60_000
        for i in range(300):  # more than gRPC's windows hold: the stream waits while the consumer does not read
            kv.set(f"lag/{i}", value)
        deadline = time.monotonic() + WAIT_S
        while kv.status()["feed_records"] > 1:  # trimmed past where the stream is
            assert time.monotonic() < deadline, "the index was never trimmed"
            time.sleep(0.1)
        last = kv.set("lag/last", "x")
        reset = done = False
        for message in call:  # now the consumer reads: a snapshot comes, not a history with a hole in it
            reset = reset or message.reset
            if message.reset_done:
                done = True
                assert _vv(bytes(message.token.vector)).dominates(_vv(last.token))
                break
        call.cancel()
        assert reset and done


# -- three regions ------------------------------------------------------------------------------


class Writers:
    """One thread per region writing under the prefix; each acknowledged write's dot is kept."""

    def __init__(self, regions: RegionProcesses, names: list[str]) -> None:
        self.regions = regions
        self.names = names
        self.acked: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n, i), daemon=True) for i, n in enumerate(names)]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self, name: str, seed: int) -> None:
        rng = random.Random(seed)
        with Client(self.regions.servers[name].addr, timeout_s=2, retries_max=0) as kv:
            while not self.stop.is_set():
                key = f"{PREFIX}{rng.randrange(12)}"
                try:
                    kind = rng.randrange(5)
                    if kind == 4:  # a request of two changes: one group
                        result = kv.mutate([SetRegister(key + "r", name.encode()), Increment(key + "n", 1)])
                    elif kind == 0:
                        result = kv.set(key + "r", f"{name}{rng.randrange(100)}")
                    elif kind == 1:
                        result = kv.incr(key + "n", rng.randrange(-3, 4) or 1)
                    elif kind == 2:
                        result = kv.sadd(key + "s", f"m{rng.randrange(6)}")
                    else:
                        result = kv.srem(key + "s", f"m{rng.randrange(6)}")
                except ClientError:
                    time.sleep(0.05)  # a region down or cut: its writes are not acknowledged
                    continue
                with self.lock:
                    self.acked.add(_dot_of(result.token, name))
                time.sleep(0.005)


def _all_vectors(regions: RegionProcesses) -> Callable[[], list[VersionVector]]:
    def vectors() -> list[VersionVector]:
        out = []
        for name in regions.names:
            try:
                out.append(_vv(regions.clients[name].status()["token"]))
            except ClientError:
                return []  # a region is not answering: not caught up yet
        return out

    return vectors


def _check(regions: RegionProcesses, projection: SqliteProjection, acked: set[tuple[str, int]]) -> None:
    views = regions.wait_converged()
    assert views
    rows = projection.rows()
    for name in regions.names:
        assert rows == _store_rows(regions.clients[name]), f"the projection differs from region {name}"
    delivered = set(projection.db.execute("SELECT origin, counter FROM dots"))
    missing = acked - delivered
    assert not missing, f"{len(missing)} acknowledged writes never delivered, e.g. {sorted(missing)[:3]}"


def test_a_projection_killed_half_way_resumes_in_another_region_with_no_gap_and_nothing_twice(
    tmp_path: Path,
) -> None:
    with RegionProcesses(tmp_path / "regions", ["a", "b", "c"]) as regions:
        regions.wait_connected()
        db = tmp_path / "projection.db"
        projection = SqliteProjection(db, PREFIX, record_dots=True)
        # The (empty) snapshot first: every write below is then delivered as a change, with its dot.
        projection.follow(regions.clients["a"], stop=lambda token: True)
        with Writers(regions, ["a", "b", "c"]) as writers:
            regions.cut("a", "c")  # a partition while the consumer reads region a
            stream = regions.clients["a"].watch(PREFIX, after=projection.token, progress_interval_ms=100)
            for n, item in enumerate(stream):
                projection.apply(item)
                if n == 150 and not (isinstance(item, Change) and item.group_end):
                    break  # killed in the middle of a group
                if n > 150 and isinstance(item, Change) and not item.group_end:
                    break
            stream.close()
            projection.close()  # what it applied after its last committed token is rolled back
            regions.heal()
            regions.cut("b", "a")
            time.sleep(1.0)
            regions.heal()
        # Resumed in region c from the stored token, until it has everything every region has.
        projection = SqliteProjection(db, PREFIX, record_dots=True)
        assert projection.token is not None
        regions.wait_converged()
        projection.follow(regions.clients["c"], progress_interval_ms=100, stop=_caught_up(_all_vectors(regions)))
        _check(regions, projection, writers.acked)
        projection.close()


def test_regression_a_resume_in_a_region_behind_the_token_waits_until_it_has_caught_up(tmp_path: Path) -> None:
    """Found by the simulator's feed watcher: a region that lacked what the token covers sent values without it.

    The change it lacked, arriving later, was covered by the token and never sent: the projection kept an
    older value for good. Now the stream waits (progress messages, the token unchanged) until the region
    has seen the token.
    """
    with RegionProcesses(tmp_path / "regions", ["a", "b"]) as regions:
        regions.wait_connected()
        a, b = regions.clients["a"], regions.clients["b"]
        db = tmp_path / "projection.db"
        projection = SqliteProjection(db, PREFIX, record_dots=True)
        projection.follow(a, stop=lambda token: True)  # the (empty) snapshot
        regions.cut("a", "b")
        at_a = a.incr(PREFIX + "n", 10)
        projection.follow(a, progress_interval_ms=100, stop=lambda token: _vv(token).dominates(_vv(at_a.token)))
        projection.close()
        at_b = b.incr(PREFIX + "n", 1)  # b has not seen a's increment
        both = _vv(at_a.token).join(_vv(at_b.token))
        done = threading.Event()

        def resume_in_b() -> None:
            resumed = SqliteProjection(db, PREFIX, record_dots=True)  # SQLite objects stay in their thread
            with Client(regions.servers["b"].addr) as in_b:
                resumed.follow(in_b, progress_interval_ms=100, stop=lambda token: _vv(token).dominates(both))
            resumed.close()
            done.set()

        thread = threading.Thread(target=resume_in_b, daemon=True)
        thread.start()
        assert not done.wait(1.0), "the stream went on in b before b had a's change"
        regions.heal()
        thread.join(WAIT_S)
        assert done.is_set()
        regions.wait_converged()
        projection = SqliteProjection(db, PREFIX)
        assert projection.rows() == _store_rows(a) == _store_rows(b)
        assert json.loads(projection.rows()[PREFIX + "n"])["value"] == 11
        projection.close()


def test_the_client_fails_over_when_the_watched_node_is_killed(tmp_path: Path) -> None:
    with RegionProcesses(tmp_path / "regions", ["a", "b", "c"]) as regions:
        regions.wait_connected()
        projection = SqliteProjection(tmp_path / "projection.db", PREFIX, record_dots=True)
        projection.follow(regions.clients["a"], stop=lambda token: True)  # the snapshot, before any write
        addresses = [regions.servers[n].addr for n in ("a", "b", "c")]
        killed = threading.Event()
        with Writers(regions, ["b", "c"]) as writers:

            def kill_a_then_catch_up(token: bytes) -> bool:
                if not killed.is_set() and len(writers.acked) > 100:
                    regions.kill("a")  # mid-stream: the client goes on in region b from its last token
                    killed.set()
                return killed.is_set() and len(writers.acked) > 250

            with Client(addresses[0], timeout_s=5) as kv:
                projection.follow(kv, addresses=addresses, progress_interval_ms=100, stop=kill_a_then_catch_up)
        regions.start("a")
        regions.wait_connected()
        with Client(addresses[1], timeout_s=5) as kv:
            projection.follow(kv, progress_interval_ms=100, stop=_caught_up(_all_vectors(regions)))
        _check(regions, projection, writers.acked)
        projection.close()


def test_the_async_client_watches_too(node: ServerProcess) -> None:
    async def run() -> list[tuple[str, object]]:
        async with AsyncClient(node.addr) as kv:
            await kv.set("w4/a", "1")
            seen: list[tuple[str, object]] = []
            stream = kv.watch("w4/", progress_interval_ms=100)
            async for item in stream:
                if isinstance(item, Change):
                    seen.append((item.key, item.entry.value))
                    if len(seen) == 1:
                        await kv.set("w4/b", "2")
                    else:
                        break
            await stream.aclose()
            return seen

    assert asyncio.run(run()) == [("w4/a", b"1"), ("w4/b", b"2")]


def _cli_watch(addr: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "crdtstore", "--addr", addr, "watch", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _interrupt(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=10)


def test_the_command_line_prints_one_json_object_per_event_until_ctrl_c(node: ServerProcess) -> None:
    with Client(node.addr) as kv:
        kv.set("w5/a", "1")
        with _cli_watch(node.addr, "w5/", "--json") as proc:
            assert proc.stdout is not None
            lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
            assert lines[0] == {"reset_begin": True, "token": ""}  # every object has the token (none yet)
            assert lines[1]["key"] == "w5/a" and lines[1]["changes"] == ["snapshot"] and lines[1]["reset"]
            assert lines[2]["reset_end"] and lines[2]["token"]
            kv.sadd("w5/s", "x")
            event = json.loads(proc.stdout.readline())
            while event.get("progress"):
                event = json.loads(proc.stdout.readline())
            assert _interrupt(proc) == 130
        assert (event["key"], event["changes"], event["value"], event["type"]) == ("w5/s", ["add"], ["x"], "set")
        assert event["group_end"] and event["region"] == "local" and event["counter"] > 0
        # The printed token resumes the command where it was; without --json, one line per change.
        kv.set("w5/b", "2")
        with _cli_watch(node.addr, "w5/", "--after", event["token"]) as resumed:
            assert resumed.stdout is not None
            line = resumed.stdout.readline()
            assert _interrupt(resumed) == 130
        assert line.split("\t")[:2] == ["set", "w5/b"]
