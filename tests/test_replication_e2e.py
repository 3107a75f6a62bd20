"""Multi-region replication end to end: real node processes on loopback, links through cuttable proxies.

Every check goes through the real client: writes are acknowledged (or not) by
a region, and after healing every region must show the same data and vector,
with every acknowledged write in it.

Most tests share one module-wide cluster of three regions (``three``): each
writes under keys of its own, and after each test every link is healed, every
region is running again and all three agree, so no test sees another's faults.
Tests that start regions with settings of their own, or damage a region's data,
start their own.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import random
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import lmdb
import pytest

from crdtstore.client import Client, ClientError
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.replica.wire import SYNC_METHOD
from crdtstore.testing.regions import RegionProcesses
from crdtstore.v1 import replication_pb2 as rpb

pytestmark = pytest.mark.processes

NAMES_5 = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegionProcesses]:
    with RegionProcesses(tmp_path_factory.mktemp("three"), NAMES_5[:3]) as regions:
        yield regions


@pytest.fixture
def three(cluster: RegionProcesses) -> Iterator[RegionProcesses]:
    """The shared cluster, whole: after the test, every link healed, every region up, all of them agreeing."""
    yield cluster
    cluster.heal()
    for name in cluster.names:
        server = cluster.servers[name]
        if server.proc is None or server.proc.poll() is not None:
            cluster.start(name)
    cluster.wait_connected()
    cluster.wait_converged()


@pytest.fixture
def own_three(tmp_path: Path) -> Iterator[RegionProcesses]:
    """Three regions of the test's own, for a test that leaves them changed."""
    with RegionProcesses(tmp_path, NAMES_5[:3]) as regions:
        yield regions


@dataclass(frozen=True)
class Unknown:
    """A write that was not acknowledged: it may or may not have landed in ``region``."""

    region: str
    operation: Operation
    idempotency_key: bytes
    record: Callable[[], None]  # what to count once it is acknowledged


@dataclass
class Acked:
    """What the regions acknowledged: the expected state of a history without deletes of these keys.

    ``prefix`` keeps a test's keys apart from other tests' on the shared cluster.
    """

    prefix: str
    increments: int = 0
    added: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    registers: set[bytes] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: Counter[str] = field(default_factory=Counter)  # sent to a region and not yet answered
    acknowledged_by: Counter[str] = field(default_factory=Counter)
    unknown: list[Unknown] = field(default_factory=list)
    halt_on_error: set[str] = field(default_factory=set)  # regions whose writer ends at its first failed write

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def count(self, n: int) -> None:
        self.increments += n


def _writer(regions: RegionProcesses, name: str, ops: int, acked: Acked, seed: int) -> None:
    """Conflicting writes of every type on shared keys; own set members only, so adds and removes are exact."""
    rng = random.Random(seed)
    client = regions.clients[name]
    mine: list[str] = []
    for i in range(ops):
        kind = rng.choice(["set", "incr", "add", "remove"])
        operation: Operation
        record: Callable[[], None]
        if kind == "set":
            value = f"{name}-{i}".encode()
            operation = SetRegister(acked.key("reg"), value)
            record = functools.partial(acked.registers.add, value)
        elif kind == "incr":
            n = rng.randint(-5, 9)
            operation = Increment(acked.key("count"), n)
            record = functools.partial(acked.count, n)
        elif kind == "add" or not mine:
            member = f"{name}-{i}"
            operation = AddMembers(acked.key("members"), (member,))
            record = functools.partial(acked.added.add, member)
        else:
            member = mine.pop(rng.randrange(len(mine)))
            operation = RemoveMembers(acked.key("members"), (member,))
            record = functools.partial(acked.removed.add, member)
        idempotency_key = f"{acked.prefix}/{name}/{i}".encode()
        with acked.lock:
            acked.in_flight[name] += 1
        try:
            client.mutate([operation], idempotency_key=idempotency_key)
        except ClientError:
            # Not acknowledged: it may or may not be there. Sent again with its key before the checks.
            with acked.lock:
                acked.in_flight[name] -= 1
                acked.unknown.append(Unknown(name, operation, idempotency_key, record))
            if name in acked.halt_on_error:
                return
            continue
        with acked.lock:
            acked.in_flight[name] -= 1
            acked.acknowledged_by[name] += 1
            record()
        if isinstance(operation, AddMembers):
            mine.append(member)


def _resolve_unknown(regions: RegionProcesses, acked: Acked) -> None:
    """Send every unacknowledged write again, with its idempotency key, to its region: then every write is known.

    One that had landed is answered from the region's record and applies nothing
    again; one that had not lands now. Either way it is acknowledged, so the
    exact checks (the counter's total, the register's winner) hold.
    """
    for unknown in acked.unknown:
        regions.clients[unknown.region].mutate([unknown.operation], idempotency_key=unknown.idempotency_key)
        unknown.record()
    acked.unknown.clear()


def _start_writers(
    regions: RegionProcesses, names: list[str], ops: int, acked: Acked, seed: int = 0
) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=_writer, args=(regions, name, ops, acked, seed * 100 + i))
        for i, name in enumerate(names)
    ]
    for t in threads:
        t.start()
    return threads


def _join_writers(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a writer did not finish"


def _write_concurrently(regions: RegionProcesses, names: list[str], ops: int, acked: Acked, seed: int = 0) -> None:
    _join_writers(_start_writers(regions, names, ops, acked, seed))


def _check_acked(regions: RegionProcesses, name: str, acked: Acked, *, exact: bool = True) -> None:
    assert not acked.unknown, "every write's outcome is known before the checks (_resolve_unknown)"
    client = regions.clients[name]
    members = client.get(acked.key("members")).value or frozenset()
    assert isinstance(members, frozenset)
    lost = acked.added - acked.removed - members
    assert not lost, f"acknowledged adds lost in {name}: {sorted(lost)[:5]}"
    resurrected = members & acked.removed
    assert not resurrected, f"acknowledged removes undone in {name}: {sorted(resurrected)[:5]}"
    if exact:
        assert client.get(acked.key("count")).value == acked.increments
        reg = client.get(acked.key("reg"))
        assert reg.value in acked.registers


@pytest.mark.parametrize("count", [3, 5])
def test_concurrent_conflicting_writes_converge(request: pytest.FixtureRequest, tmp_path: Path, count: int) -> None:
    names = NAMES_5[:count]
    with contextlib.ExitStack() as stack:
        if count == 3:
            regions: RegionProcesses = request.getfixturevalue("three")
        else:
            regions = stack.enter_context(RegionProcesses(tmp_path, names))
        acked = Acked(f"concurrent-{count}")
        _write_concurrently(regions, names, 40, acked)
        _resolve_unknown(regions, acked)
        views = regions.wait_converged()
        for name in names:
            _check_acked(regions, name, acked)
        assert views[names[0]], "the regions agree on something, not on nothing"


def test_partition_with_writes_on_both_sides_converges_after_healing(three: RegionProcesses) -> None:
    three.isolate("a")
    acked = Acked("partition")
    _write_concurrently(three, ["a", "b", "c"], 20, acked, seed=1)
    _resolve_unknown(three, acked)
    # While a is cut off, b and c agree with each other but not with a.
    three.wait_converged(names=["b", "c"])
    assert three.snapshots(["a"])["a"] != three.snapshots(["b"])["b"]
    three.heal()
    three.wait_converged()
    for name in three.names:
        _check_acked(three, name, acked)


def test_partial_partition_converges_through_relay(three: RegionProcesses) -> None:
    three.cut("a", "c")  # a-b and b-c stay up
    acked = Acked("relay")
    _write_concurrently(three, ["a", "c"], 20, acked, seed=2)
    _resolve_unknown(three, acked)
    three.wait_converged()  # without healing: through b
    for name in three.names:
        _check_acked(three, name, acked)


def _kill_while_writing(regions: RegionProcesses, name: str, acked: Acked, *, after: int) -> tuple[int, int]:
    """kill -9 ``name`` once it has acknowledged ``after`` writes and while a write to it is in flight.

    The kill is sent while holding the ledger's lock, so no writer can record an
    answer between the look and the kill. Returns the writes ``name`` had
    acknowledged and those in flight to it at that moment.
    """
    deadline = time.monotonic() + 120  # only so that the test ends if the writes stop
    while time.monotonic() < deadline:
        with acked.lock:
            if acked.acknowledged_by[name] >= after and acked.in_flight[name] > 0:
                regions.kill(name)
                return acked.acknowledged_by[name], acked.in_flight[name]
        time.sleep(0.0005)
    raise AssertionError(f"{name} never had a write in flight after {after} acknowledged ones: {acked.acknowledged_by}")


def test_kill_9_during_writes_loses_nothing_acknowledged(three: RegionProcesses) -> None:
    acked = Acked("kill")
    acked.halt_on_error.add("b")  # after the kill, b's writer stops at its first failed write
    writers = _start_writers(three, ["a", "b", "c"], 40, acked, seed=3)
    try:
        acknowledged, in_flight = _kill_while_writing(three, "b", acked, after=5)
    finally:
        _join_writers(writers)
    # The kill landed mid-stream: b had acknowledged writes, had one in flight, and wrote no more.
    assert acknowledged >= 5 and in_flight >= 1, (acknowledged, in_flight)
    assert any(u.region == "b" for u in acked.unknown), "a write to b went unacknowledged: the kill cut it off"
    assert acked.acknowledged_by["b"] - acknowledged <= in_flight, "b acknowledged nothing sent after its death"
    assert acked.acknowledged_by["a"] and acked.acknowledged_by["c"], acked.acknowledged_by
    three.start("b")
    _resolve_unknown(three, acked)
    three.wait_converged()
    for name in three.names:
        _check_acked(three, name, acked)


def test_a_new_empty_region_catches_up(tmp_path: Path) -> None:
    with RegionProcesses(tmp_path, ["a", "b", "c"], start=["a", "b"]) as regions:
        acked = Acked("catch-up")
        _write_concurrently(regions, ["a", "b"], 30, acked, seed=4)
        _resolve_unknown(regions, acked)
        regions.wait_converged(names=["a", "b"])
        regions.start("c")
        regions.wait_converged()
        _check_acked(regions, "c", acked)


def test_replicated_write_survives_losing_the_origin_right_after_the_ack(own_three: RegionProcesses) -> None:
    own = own_three  # it deletes a region's data: not on the shared cluster
    own.clients["a"].set("before", "x")
    own.cut("a", "c")  # so the write can only reach b: replicated:2 still answers
    result = own.clients["a"].mutate([SetRegister("precious", b"kept")], durability="replicated:2")
    assert not result.replayed
    own.kill("a")
    shutil.rmtree(own.root / "a")
    assert own.clients["b"].get("precious").value == b"kept"  # b acknowledged it durably
    own.heal()
    own.wait_converged(names=["b", "c"])
    assert own.clients["c"].get("precious").value == b"kept"

    # a comes back empty while still cut off: it takes a new incarnation and takes writes at once
    # (no event id of its old one can be reused); its old events come back from the peers.
    own.isolate("a")
    own.start("a")
    own.clients["a"].set("after", "y")
    own.heal()
    own.wait_converged()
    assert own.clients["a"].get("precious").value == b"kept"
    assert own.clients["c"].get("after").value == b"y"


def _members(regions: RegionProcesses, name: str) -> set[str]:
    value = regions.clients[name].get("s").value or frozenset()
    assert isinstance(value, frozenset)
    return set(value)


def _add(regions: RegionProcesses, name: str, *members: str) -> None:
    for member in members:
        regions.clients[name].sadd("s", member)


def _wait_for(regions: RegionProcesses, name: str, members: set[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not members <= _members(regions, name):
        assert time.monotonic() < deadline, f"{name} never received {sorted(members - _members(regions, name))}"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["empty", "empty-rejoin", "old-backup", "two-regions"])
def test_regression_a_region_that_lost_its_disk_rejoins_while_the_holder_of_its_newest_events_is_cut_off(
    tmp_path: Path, how: str
) -> None:
    """Found on real processes: a rejoining region minted new events under the ids of events only c held.

    a's X1..X5 reach only c; a loses its disk (or is restored from an older
    copy) and comes back while c is cut off, so no peer it can reach knows
    of X1..X5; it acknowledges Y1..Y5. Under the same origin, Y took X's ids:
    each side believed it held the other's events, and a, b read Y while c
    read X, forever. Now a directory that cannot prove it minted its
    origin's newest events mints under a new incarnation. Variants: an
    empty directory with and without --rejoin, a restore from an older copy
    of the directory (with --rejoin, as the README says to restore), and a
    second region losing its disk afterwards.
    """
    base, xs, ys = {"base1", "base2"}, {f"X{i}" for i in range(1, 6)}, {f"Y{i}" for i in range(1, 6)}
    with RegionProcesses(tmp_path / "regions", ["a", "b", "c"]) as regions:
        _add(regions, "a", *sorted(base))
        regions.wait_converged()
        if how == "old-backup":
            regions.stop("a")
            shutil.copytree(regions.root / "a", tmp_path / "backup")
            regions.start("a")
            regions.wait_connected()
        regions.isolate("b")
        _add(regions, "a", *sorted(xs))  # acknowledged, fsynced; c receives them, b does not
        _wait_for(regions, "c", base | xs)
        origin_before = regions.clients["a"].status()["origin"]

        regions.kill("a")
        shutil.rmtree(regions.root / "a")
        if how == "old-backup":
            shutil.copytree(tmp_path / "backup", regions.root / "a")
        regions.heal()  # b is back with a; c is cut off from everyone before a returns
        regions.isolate("c")
        if how in ("empty-rejoin", "old-backup"):
            # A restore is started with --rejoin: the copy may even get the original file's inode number
            # (freed by the deletion just before), so the file identity check alone cannot be relied on.
            regions.servers["a"].extra_args += ("--rejoin",)
        regions.start("a")
        _wait_for(regions, "a", base)  # b has spoken to it
        assert regions.clients["a"].status()["origin"] != origin_before
        _add(regions, "a", *sorted(ys))
        expected = base | xs | ys
        if how == "two-regions":
            _wait_for(regions, "b", base | ys)
            regions.kill("b")
            shutil.rmtree(regions.root / "b")
            regions.start("b")
            _wait_for(regions, "b", base | ys)
            _add(regions, "b", "Z1", "Z2")
            expected |= {"Z1", "Z2"}

        regions.heal()
        regions.wait_converged()
        for name in regions.names:
            assert _members(regions, name) == expected, f"{name} lost acknowledged writes"
            assert regions.clients[name].status()["conflicting_events"] == 0


def test_a_directory_restored_in_place_takes_a_new_incarnation_when_a_peer_holds_more_of_its_events(
    tmp_path: Path,
) -> None:
    """A restore the node cannot see by itself (no --rejoin, the same data file): the peers' hellos tell it."""
    with RegionProcesses(tmp_path / "regions", ["a", "b", "c"]) as regions:
        _add(regions, "a", "base1", "base2")
        regions.wait_converged()
        regions.stop("a")
        shutil.copytree(regions.root / "a", tmp_path / "backup")
        regions.start("a")
        _add(regions, "a", "X1", "X2", "X3")
        regions.wait_converged()
        origin = regions.clients["a"].status()["origin"]
        regions.kill("a")
        shutil.rmtree(regions.root / "a")
        shutil.copytree(tmp_path / "backup", regions.root / "a")
        _pass_for_the_original_file(regions.root / "a")
        regions.start("a")
        regions.wait_connected()
        _add(regions, "a", "Y1", "Y2")
        assert regions.clients["a"].status()["origin"] != origin, "the peers hold more of its origin than it does"
        regions.wait_converged()
        for name in regions.names:
            assert _members(regions, name) == {"base1", "base2", "X1", "X2", "X3", "Y1", "Y2"}, name


def _pass_for_the_original_file(directory: Path) -> None:
    """Make a restored copy's file identity match its record, as a copy written over the original in place does."""
    env = lmdb.open(str(directory), max_dbs=8, subdir=True)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        txn.put(b"origin_file", str(os.stat(directory / "data.mdb").st_ino).encode(), db=meta)
    env.close()


# The deadline of a call that must wait out its deadline: what it waits for cannot happen while the link is cut.
HOPELESS_WAIT_S = 3


def test_replicated_write_times_out_when_too_few_regions_are_reachable(three: RegionProcesses) -> None:
    three.isolate("a")
    client = three.clients["a"]
    with (
        Client(three.servers["a"].addr, timeout_s=HOPELESS_WAIT_S, retries_max=0) as hopeless,
        pytest.raises(ClientError) as err,
    ):
        hopeless.mutate([Increment("r2/n", 1)], durability="replicated:2", idempotency_key=b"r2-timeout")
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.get("r2/n").value == 1  # applied here all the same
    three.heal()
    # The retry with the same key applies nothing again, and now gets its confirmation.
    result = client.mutate([Increment("r2/n", 1)], durability="replicated:2", idempotency_key=b"r2-timeout")
    assert result.replayed
    three.wait_converged()
    assert three.clients["b"].get("r2/n").value == 1


def test_replicated_needs_a_possible_count(three: RegionProcesses) -> None:
    with pytest.raises(ClientError) as err:
        three.clients["a"].mutate([Increment("r4/n", 1)], durability="replicated:4")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 to 3" in err.value.message
    assert three.clients["a"].get("r4/n").value is None


def test_a_read_after_a_token_waits_until_the_region_has_it(three: RegionProcesses) -> None:
    three.isolate("c")
    token = three.clients["a"].set("greeting", "hello").token
    with (
        Client(three.servers["c"].addr, timeout_s=HOPELESS_WAIT_S, retries_max=0) as hopeless,
        pytest.raises(ClientError) as err,
    ):
        hopeless.get("greeting", after=token)  # c cannot have it while cut off
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    three.heal()
    assert three.clients["c"].get("greeting", after=token).value == b"hello"


def test_status_shows_peers(three: RegionProcesses) -> None:
    three.clients["a"].set("k", "v")
    three.wait_converged()
    three.wait_connected()
    status = three.clients["a"].status()
    assert [p["region"] for p in status["peers"]] == ["b", "c"]
    assert all(p["connected"] for p in status["peers"])
    assert all(p["behind"] == 0 for p in status["peers"])
    assert not status["clock_fenced"]


def test_a_stranger_is_refused(three: RegionProcesses) -> None:
    hello = rpb.SyncMessage(hello=rpb.SyncHello(region="mallory", vector=b"", protocol=1))
    with grpc.insecure_channel(three.servers["a"].addr) as channel:
        sync: Any = channel.stream_stream(SYNC_METHOD, request_serializer=rpb.SyncMessage.SerializeToString)
        with pytest.raises(grpc.RpcError) as err:
            list(sync(iter([hello]), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "mallory" in (err.value.details() or "")


def test_a_hello_meant_for_another_region_is_refused(three: RegionProcesses) -> None:
    """b's hello for c, arriving at a (c's address pointed at a for a while), must not pass for b's stream with a."""
    hello = rpb.SyncMessage(hello=rpb.SyncHello(region="b", vector=b"", protocol=1, to="c"))
    with grpc.insecure_channel(three.servers["a"].addr) as channel:
        sync: Any = channel.stream_stream(SYNC_METHOD, request_serializer=rpb.SyncMessage.SerializeToString)
        with pytest.raises(grpc.RpcError) as err:
            list(sync(iter([hello]), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "this is region 'a', not 'c'" in (err.value.details() or "")
    three.wait_connected()  # and b's own stream with a was left alone


class _ColdStartCollision(RegionProcesses):
    """c's first port is the a-b link's proxy port: c starts again elsewhere, as a port race makes it.

    Until c's proxies are retargeted, a dial for c reaches b, and b's dial for c reaches b itself.
    """

    def __enter__(self) -> _ColdStartCollision:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proxies_thread.__enter__()
        for x, y in itertools.combinations(sorted(self.names), 2):
            self.links[frozenset((x, y))] = self.proxies_thread.start_proxy("127.0.0.1", self.ports[y])
        taken = self.links[frozenset(("a", "b"))].port
        self.ports["c"] = taken
        for pair in (("a", "c"), ("b", "c")):
            self.links[frozenset(pair)].target_port = taken
        for name in self.names:
            self.servers[name] = self._server(name)
        for name in self._to_start:
            self._start_on_a_free_port(name)
        return self


def test_regression_dials_that_reached_the_wrong_node_do_not_keep_regions_apart(tmp_path: Path) -> None:
    # Found by CI's benchmark smoke run: c's chosen port collided with a proxy's, c started elsewhere,
    # and b and c never connected. gRPC reused the connection that had reached the wrong node for
    # every later dial, and a dial for c that reached b replaced b's stream with a by cancelling its
    # handler, which left a's call open: both views of some link stayed down for good.
    with _ColdStartCollision(tmp_path, ["a", "b", "c"]) as cluster:
        assert "in use" in cluster.servers["c"].log_path.read_text(), "c's first port was taken, as intended"
        cluster.wait_connected(timeout_s=30.0)
        token = cluster.clients["b"].set("after", "collision").token
        assert cluster.clients["c"].get("after", after=token).value == b"collision"


def test_a_node_with_a_bad_clock_is_fenced_and_its_timestamps_do_not_drag_the_others(tmp_path: Path) -> None:
    ahead = {"CRDTSTORE_CHAOS_CLOCK_OFFSET_MS": "5000"}  # c's clock runs 5 s ahead; the bound is 500 ms
    with RegionProcesses(tmp_path, ["a", "b", "c"], start=["c"], env={"c": ahead}) as regions:
        # Alone, c cannot tell its clock is wrong: it writes with timestamps 5 s ahead.
        regions.clients["c"].set("early", "from c")
        regions.start("a")
        regions.start("b")
        regions.wait_converged()
        regions.wait_connected()
        # a and b applied c's write (convergence first) but their clocks did not follow it.
        for name in ("a", "b"):
            status = regions.clients[name].status()
            assert status["clock_skew_events"] >= 1
            assert not status["clock_fenced"]  # one peer of two out of bounds is not most of them
            offsets = {p["region"]: p["clock_offset_ms"] for p in status["peers"]}
            assert offsets["c"] > 4000
        # Out of bounds against both its peers, c refuses writes.
        with pytest.raises(ClientError) as err:
            regions.clients["c"].set("r", "from c")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "clock" in err.value.message
        assert regions.clients["c"].status()["clock_fenced"]
        # Regression (review): role changes were not fenced. A role stamped 5 s ahead would win over every
        # change of it made elsewhere until real time caught up.
        with pytest.raises(ClientError) as err:
            regions.clients["c"].put_role("readers", {"r": ["read"]})
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "clock" in err.value.message
        regions.clients["a"].set("r", "from a")
        regions.wait_converged()
        assert regions.clients["c"].get("r").value == b"from a"


def _small_log_config(tmp_path: Path) -> tuple[str, ...]:
    config = tmp_path / "small-log.toml"
    config.write_text("[storage]\ndelta_log_bytes_max = 20000\n")
    return ("--config", str(config))


def test_a_region_behind_the_trimmed_log_is_repaired_by_state_transfer(tmp_path: Path) -> None:
    with RegionProcesses(tmp_path / "regions", ["a", "b", "c"], extra_args=_small_log_config(tmp_path)) as regions:
        a = regions.clients["a"]
        a.mutate([SetRegister(f"old/{i}", b"v") for i in range(20)])
        a.sadd("set", "kept", "removed-while-away")
        regions.wait_converged()
        regions.isolate("c")
        c_only = regions.clients["c"].sadd("set", "added-by-c-while-away")
        for i in range(40):  # far past the 20 kB log bound: c's missing entries are trimmed
            a.mutate([SetRegister(f"new/{i}/{j}", b"x" * 200) for j in range(10)])
        a.mutate([DeleteKey(f"old/{i}") for i in range(10)])
        a.srem("set", "removed-while-away")
        assert c_only.token
        regions.heal()
        views = regions.wait_converged(timeout_s=90)
        keys = {json.loads(line)[0] for line in views["c"]}
        assert {f"old/{i}" for i in range(10)}.isdisjoint(keys), "deletes reached c through the transfer"
        assert {f"old/{i}" for i in range(10, 20)} <= keys
        assert regions.clients["c"].get("set").value == frozenset({"kept", "added-by-c-while-away"})
        assert "joined a state transfer" in (regions.root / "c.log").read_text()
        # Back on the log afterwards: a new write reaches c as usual.
        token = a.set("after", "repair").token
        assert regions.clients["c"].get("after", after=token).value == b"repair"


def test_a_new_empty_region_joins_after_the_log_was_trimmed(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    with RegionProcesses(
        tmp_path / "regions", names, extra_args=_small_log_config(tmp_path), start=["a", "b"]
    ) as regions:
        for i in range(40):
            regions.clients["a"].mutate([SetRegister(f"k/{i}/{j}", b"x" * 200) for j in range(10)])
        regions.wait_converged(names=["a", "b"])
        regions.start("c")
        regions.wait_converged(timeout_s=90)
        assert regions.clients["c"].get("k/39/9").value == b"x" * 200
        assert "joined a state transfer" in (regions.root / "c.log").read_text()


def test_a_batch_becomes_visible_atomically_in_other_regions(three: RegionProcesses) -> None:
    writer, reader = three.clients["a"], three.clients["b"]
    three.wait_connected()
    seen: set[tuple[object, ...]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            # One scan page is one read transaction: a consistent view of b.
            values = tuple(e.value for e in reader.scan("pair/", page_size=10))
            seen.add(values)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(1, 60):
            writer.mutate([SetRegister("pair/x", str(i).encode()), SetRegister("pair/y", str(i).encode())])
        three.wait_converged()
    finally:
        stop.set()
        watcher.join(timeout=60)
    torn = [values for values in seen if len(values) == 2 and values[0] != values[1]]
    assert not torn, f"b showed half of a batch: {torn[:3]}"
    assert any(len(values) == 2 for values in seen), "the watcher saw the batches arrive"


def test_a_region_behind_the_trimmed_log_is_repaired_without_a_full_copy(tmp_path: Path) -> None:
    with RegionProcesses(tmp_path / "regions", ["a", "b", "c"], extra_args=_small_log_config(tmp_path)) as regions:
        a = regions.clients["a"]
        for i in range(4):
            a.mutate([SetRegister(f"old/{i}/{j}", b"v") for j in range(500)])
        regions.wait_converged()
        regions.isolate("c")
        for i in range(30):  # 30 kB of changes, past the 20 kB log bound
            a.set(f"new/{i}", "x" * 1000)
        a.delete("old/0/0")
        logs = [regions.root / f"{name}.log" for name in ("a", "b")]
        before = [len(log.read_text()) for log in logs]
        regions.heal()
        regions.wait_converged(timeout_s=90)
        assert regions.clients["c"].get("old/0/0").value is None
        since_heal = "".join(log.read_text()[start:] for log, start in zip(logs, before, strict=True))
        repairs = re.findall(r"repaired c: (\d+) of \d+ buckets differed; sent (\d+) of (\d+) keys", since_heal)
        assert repairs, "c was repaired, not sent the log"
        for _, sent, total in repairs:
            assert int(sent) * 10 < int(total), f"sent {sent} of {total} keys: that is no better than a full copy"


def test_regression_a_node_that_peers_dialled_drains_without_waiting_for_their_streams(tmp_path: Path) -> None:
    # Found by the chaos runner: b (dialled by a) cancelled the handler of a's
    # stream on SIGTERM, which left the call open, and the server waited out
    # its whole drain grace for it. With a grace of an hour, b must still stop
    # by itself well inside the harness's 30 s wait, and cleanly.
    config = tmp_path / "long-grace.toml"
    config.write_text("[server]\ndrain_grace_s = 3600\n")
    with RegionProcesses(tmp_path, ["a", "b"], extra_args=("--config", str(config))) as regions:
        regions.wait_connected()
        regions.clients["a"].set("k", "v")
        regions.wait_converged()
        assert regions.stop("b") == 0
        assert "stopped cleanly" in (tmp_path / "b.log").read_text()
