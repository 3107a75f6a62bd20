"""The restore drill and disaster recovery, on real processes (docs/backup.md).

Drill: three regions write (registers, counters, set adds and removes,
deletes), each to keys of its own so the expected state is known exactly;
region a is backed up at t1 while writes go on; writes continue everywhere
until t2; a's directory is wiped and the t1 backup restored into it; a
starts and catches up. Then every write acknowledged anywhere before t2 is
in a (nothing lost), nothing deleted between t1 and t2 is back (nothing
resurrected), the regions hold the same state, and ``verify`` says agree.
One cycle in the default run restores while the only region holding a's
newest writes is cut off from it (the case that once lost acknowledged
writes), and a writes meanwhile under its new incarnation.

``CRDTSTORE_RESTORE_CYCLES=100 pytest -m slow tests/test_backup_drill.py``
is the long run (``pytest -m slow`` runs 10 cycles).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import lmdb
import pytest

from crdtstore.backup.restore import restore_backup
from crdtstore.backup.take import take_backup
from crdtstore.client import Client, ClientError, Entry
from crdtstore.operations import SetRegister
from crdtstore.testing.regions import RegionProcesses
from crdtstore.tools.verify import AGREE, compare_regions

pytestmark = pytest.mark.processes

REGIONS = ("a", "b", "c")
ModelValue = bytes | int | frozenset[str]


@dataclass
class Model:
    """What each key must hold: every acknowledged write applied in order (each key has one writer)."""

    ns: str  # every key of this model starts with it: tests that share a cluster never see each other's keys
    keys: dict[str, ModelValue] = field(default_factory=dict)
    serial: int = 0

    def fresh(self, region: str, kind: str) -> str:
        self.serial += 1
        return f"{self.ns}{region}/{kind}/{self.serial}"


def _writes(client: Client, region: str, model: Model, rng: random.Random, n: int, *, fresh_only: bool) -> None:
    """``n`` acknowledged writes by ``region`` to its own keys; ``fresh_only`` touches no key written before."""
    mine = [k for k in model.keys if k.startswith(f"{model.ns}{region}/")]
    for _ in range(n):
        roll = rng.random()
        if fresh_only or not mine or roll < 0.3:
            kind = rng.choice(["reg", "cnt", "set"])
            key = model.fresh(region, kind)
            if kind == "reg":
                client.set(key, f"{key}=1")
                model.keys[key] = f"{key}=1".encode()
            elif kind == "cnt":
                client.incr(key, 3)
                model.keys[key] = 3
            else:
                client.sadd(key, "x", "y", "z")
                model.keys[key] = frozenset({"x", "y", "z"})
            if not fresh_only:
                mine.append(key)
            continue
        key = rng.choice(mine)
        value = model.keys[key]
        if roll < 0.45:
            client.delete(key)
            del model.keys[key]
            mine.remove(key)
        elif isinstance(value, bytes):
            new = f"{key}={rng.randrange(1000)}".encode()
            client.set(key, new)
            model.keys[key] = new
        elif isinstance(value, int):
            client.incr(key, -1)
            model.keys[key] = value - 1
        elif value and roll < 0.7:
            member = rng.choice(sorted(value))
            client.srem(key, member)
            model.keys[key] = value - {member}
        else:
            member = f"m{rng.randrange(100)}"
            client.sadd(key, member)
            model.keys[key] = value | {member}


def _state(client: Client, ns: str) -> dict[str, ModelValue]:
    out: dict[str, ModelValue] = {}
    for entry in client.scan(ns, page_size=500):
        assert isinstance(entry, Entry)
        assert not entry.siblings and not entry.conflicts, f"{entry.key}: one writer per key, yet {entry}"
        if entry.value is not None and not (isinstance(entry.value, frozenset) and not entry.value):
            out[entry.key] = entry.value
    return out


def _check(rp: RegionProcesses, model: Model) -> None:
    """Converged; nothing lost, nothing resurrected, nothing unexpected; verify agrees; no event id used twice."""
    rp.wait_converged(timeout_s=90)
    expected = {k: v for k, v in model.keys.items() if not (isinstance(v, frozenset) and not v)}
    for name in REGIONS:
        state = _state(rp.clients[name], model.ns)
        lost = sorted(k for k in expected if k not in state)
        resurrected = sorted(k for k in state if k not in expected)
        wrong = sorted(k for k in expected if k in state and state[k] != expected[k])
        assert not lost, f"{name} lost acknowledged writes: {lost[:5]}"
        assert not resurrected, f"{name} shows keys deleted before: {resurrected[:5]}"
        assert not wrong, f"{name} holds other values: {[(k, state[k], expected[k]) for k in wrong[:5]]}"
        assert rp.clients[name].status()["conflicting_events"] == 0
    clients = {rp.servers[name].addr: rp.clients[name] for name in REGIONS}
    result = compare_regions(clients, deadline_s=30)
    assert result.exit_code == AGREE, result.as_json()


def _wipe_and_restore(rp: RegionProcesses, name: str, backup: Path) -> str:
    rp.stop(name)
    rp.clients.pop(name).close()
    data_dir = rp.servers[name].data_dir
    shutil.rmtree(data_dir)
    return restore_backup(backup, data_dir).origin


def drill_cycle(rp: RegionProcesses, model: Model, rng: random.Random, work: Path, *, partition: bool) -> None:
    """One cycle of the drill (see the module docstring)."""
    clients = rp.clients
    for name in REGIONS:
        _writes(clients[name], name, model, rng, 15, fresh_only=False)
    backup = work / f"a-{model.serial}"
    # t1: the backup, while b writes on.
    take_backup(clients["a"], backup)
    for name in REGIONS:
        _writes(clients[name], name, model, rng, 15, fresh_only=False)
    if partition:
        # a's newest writes reach b only; then b is cut off from the restored a.
        rp.cut("a", "c")
        rp.cut("b", "c")
        _writes(clients["a"], "a", model, rng, 10, fresh_only=False)
        a_vector = clients["a"].status()["token"]
        deadline = time.monotonic() + 30
        while not _has(clients["b"], a_vector):
            assert time.monotonic() < deadline, "b did not receive a's writes"
            time.sleep(0.05)
    else:
        rp.wait_converged(timeout_s=60)  # a's writes reached its peers before its disk was lost
    # t2: a loses its directory and is restored from the t1 backup.
    origin = _wipe_and_restore(rp, "a", backup)
    if partition:
        rp.heal("b", "c")
        rp.cut("a", "b")
    rp.start("a")
    assert rp.clients["a"].status()["origin"] == origin
    if partition:
        # The region holding a's newest writes is cut off: a stays in rejoin mode and refuses writes.
        with Client(rp.servers["a"].addr, timeout_s=5, retries_max=0) as probe, pytest.raises(ClientError) as info:
            probe.set(f"{model.ns}a/refused", "x")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "restored from a backup" in info.value.message and "waiting to hear from b" in info.value.message
        assert rp.clients["a"].status()["rejoin_waiting"].startswith("waiting to hear from b")  # status says so
        rp.heal()
    _wait_writable(rp.clients["a"], f"{model.ns}a/writable")
    assert rp.clients["a"].status()["rejoin_waiting"] == ""
    model.keys[f"{model.ns}a/writable"] = b"yes"
    # Out of rejoin mode, a has everything its peers had: it writes on its own keys, under its new incarnation.
    _writes(rp.clients["a"], "a", model, rng, 10, fresh_only=False)
    _check(rp, model)


def _wait_writable(client: Client, key: str, timeout_s: float = 60.0) -> None:
    """Until the restored region's peers have filled it in and it takes writes (its probe key is its own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.set(key, "yes")
            return
        except ClientError as err:
            if err.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def _has(client: Client, token: bytes) -> bool:
    try:
        client.get("\x01probe", after=token)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegionProcesses]:
    """One cluster for the module: each test leaves every region running and in step, under keys of its own."""
    with RegionProcesses(tmp_path_factory.mktemp("drill") / "regions", REGIONS) as rp:
        rp.wait_connected()
        yield rp


def test_restore_drill(cluster: RegionProcesses, tmp_path: Path) -> None:
    model, rng = Model("drill/"), random.Random(20261205)
    drill_cycle(cluster, model, rng, tmp_path, partition=False)
    drill_cycle(cluster, model, rng, tmp_path, partition=True)


@pytest.mark.slow
def test_restore_drill_long(cluster: RegionProcesses, tmp_path: Path) -> None:
    cycles = int(os.environ.get("CRDTSTORE_RESTORE_CYCLES", "10"))
    seed = int(os.environ.get("CRDTSTORE_RESTORE_SEED", str(random.randrange(1 << 30))))
    model, rng = Model("long/"), random.Random(seed)
    for cycle in range(cycles):
        try:
            drill_cycle(cluster, model, rng, tmp_path, partition=cycle % 3 == 2)
        except AssertionError as exc:
            raise AssertionError(f"cycle {cycle} (CRDTSTORE_RESTORE_SEED={seed} replays the writes): {exc}") from exc


def test_disaster_recovery_from_backups_taken_at_different_times(cluster: RegionProcesses, tmp_path: Path) -> None:
    """Every region lost; each restored from its own backup, taken at a different time: they converge to the join."""
    model, rng = Model("dr/"), random.Random(7)
    backups: dict[str, Path] = {}
    newest: dict[str, ModelValue] = {}
    for name in REGIONS:
        for writer in REGIONS:
            _writes(cluster.clients[writer], writer, model, rng, 12, fresh_only=False)
        cluster.wait_converged(timeout_s=60)
        backups[name] = tmp_path / f"dr-{name}"
        take_backup(cluster.clients[name], backups[name])
        newest = _state(cluster.clients[name], model.ns)
    # Writes after the newest backup that no backup holds: what a disaster loses (docs/backup.md).
    _writes(cluster.clients["a"], "a", model, rng, 5, fresh_only=True)
    origins = {name: _wipe_and_restore(cluster, name, backups[name]) for name in REGIONS}
    for name in REGIONS:
        cluster.start(name)
        assert cluster.clients[name].status()["origin"] == origins[name]
    cluster.wait_converged(timeout_s=90)
    # The newest backup (c's) had seen everything the older ones held, so the join is its state.
    for name in REGIONS:
        assert _state(cluster.clients[name], model.ns) == newest
    clients = {cluster.servers[name].addr: cluster.clients[name] for name in REGIONS}
    assert compare_regions(clients, deadline_s=30).exit_code == AGREE


def test_one_backup_at_a_time_and_a_receiver_that_leaves_ends_its_copy(
    cluster: RegionProcesses, tmp_path: Path
) -> None:
    client = cluster.clients["b"]
    for batch in range(4):
        client.mutate([SetRegister(f"bulk/{batch}/{i}", b"x" * 1000) for i in range(500)])
    first = client.backup_chunks(chunk_bytes=4096)
    assert next(first).data, "the copy is streaming"
    with pytest.raises(ClientError) as info:
        list(client.backup_chunks())
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already running" in info.value.message
    first.close()  # the receiver leaves mid-copy
    deadline = time.monotonic() + 30
    while True:
        try:
            result = take_backup(client, tmp_path / "after")
            break
        except ClientError as err:
            assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            shutil.rmtree(tmp_path / "after", ignore_errors=True)
            time.sleep(0.05)
    assert result.manifest["keys"] >= 2000


def test_rejoin_mode_ends_by_itself_once_caught_up(cluster: RegionProcesses, tmp_path: Path) -> None:
    """Without a write to ask, a restored region leaves rejoin mode once its peers filled it in, and for good."""
    take_backup(cluster.clients["c"], tmp_path / "c")
    cluster.clients["a"].set("rejoin/after-backup", "x")
    _wipe_and_restore(cluster, "c", tmp_path / "c")
    data_dir = cluster.servers["c"].data_dir
    assert _rejoin_pending(data_dir)
    cluster.start("c")
    deadline = time.monotonic() + 60
    while _rejoin_pending(data_dir):
        assert time.monotonic() < deadline, "the restored region never left rejoin mode"
        time.sleep(0.1)
    assert cluster.clients["c"].get("rejoin/after-backup").value == b"x"
    cluster.stop("c")
    cluster.start("c")
    with Client(cluster.servers["c"].addr, timeout_s=5, retries_max=0) as c:
        c.set("rejoin/taken-at-once", "y")  # no rejoin mode after a restart
    cluster.wait_converged(timeout_s=60)


def _rejoin_pending(data_dir: Path) -> bool:
    """Read the mark beside the running node, as another LMDB reader (it never writes)."""
    env = lmdb.open(str(data_dir), readonly=True, max_dbs=16, subdir=True)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            return txn.get(b"rejoin_pending", db=meta) is not None
    finally:
        env.close()
