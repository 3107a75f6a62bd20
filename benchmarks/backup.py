"""Backup, restore and verify: what they cost, each beside a baseline measured in the same run.

* backup throughput (MB/s and keys/s) of ``crdtstore backup`` against a
  running node, beside a raw copy of the same node's LMDB file;
* restore plus catch-up: ``crdtstore restore`` of a backup and the restored
  region's catch-up from its peer after writes it missed, beside a raw copy of
  the backup's data file;
* the write throughput a node keeps while backups run back to back, as a
  ratio to the same writes without them (alternated, same node);
* ``verify`` of 3 regions: its time and the bytes it receives, beside the
  regions' data size.

Run it from the repository root::

    python -m benchmarks.backup            # 100,000 keys, 5 repeats (several minutes)
    python -m benchmarks.backup --quick    # 5,000 keys, 3 repeats (about half a minute)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import group_main, stats
from benchmarks.figures import Baseline, Figure
from crdtstore.backup.restore import restore_backup
from crdtstore.backup.take import take_backup
from crdtstore.client import Client
from crdtstore.crdt import HybridLogicalClock, VersionVector, decode_as
from crdtstore.operations import SetRegister
from crdtstore.storage import Applied, LmdbStore, StorageConfig, WriteRequest
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.regions import RegionProcesses
from crdtstore.tools.verify import compare_regions

GROUP = "backup"
Log = Callable[[str], None]
VALUE = b"v" * 100


@dataclass(frozen=True, slots=True)
class Config:
    keys: int
    repeats: int
    write_s: float
    writer_threads: int


def make_config(quick: bool, repeats: int | None) -> Config:
    if quick:
        return Config(5_000, repeats or 3, 1.0, 4)
    return Config(100_000, repeats or 5, 3.0, 4)


def _seed(path: Path, region: str, keys: int) -> None:
    """``keys`` registers written straight into a new data directory, in batches (faster than through a node)."""
    store = LmdbStore(StorageConfig(path, region))
    try:
        clock = HybridLogicalClock(FakeClock(1_000_000))
        for start in range(0, keys, 1000):
            ops = [SetRegister(f"k/{i:09d}", VALUE) for i in range(start, min(keys, start + 1000))]
            (result,) = store.write_batch([WriteRequest(ops)], clock)
            assert isinstance(result, Applied)
    finally:
        store.close()


def _vector(client: Client) -> VersionVector:
    return decode_as(client.status()["token"], VersionVector)


def _wait_covers(client: Client, target: VersionVector, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not _vector(client).dominates(target):
        if time.monotonic() > deadline:
            raise RuntimeError("the region did not catch up in time")
        time.sleep(0.02)


def _writes_per_s(addr: str, seconds: float, threads: int, prefix: str) -> float:
    done = [0] * threads
    stop = time.monotonic() + seconds

    def run(n: int) -> None:
        with Client(addr, timeout_s=30) as client:
            i = 0
            while time.monotonic() < stop:
                client.set(f"{prefix}/{n}/{i}", VALUE)
                i += 1
            done[n] = i

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.monotonic() - started)


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:  # noqa: PLR0915 (one run, four measurements in the order they need the cluster)
    figures: list[Figure] = []
    detail: dict[str, Any] = {"keys": cfg.keys}
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-backup-") as tmp:
        root = Path(tmp)
        step("seeding")
        _seed(root / "regions" / "a", "a", cfg.keys)
        with RegionProcesses(root / "regions", ["a", "b", "c"]) as rp:
            a = rp.clients["a"]
            target = _vector(a)
            for name in ("b", "c"):
                _wait_covers(rp.clients[name], target)
            data_file = rp.servers["a"].data_dir / "data.mdb"
            # 1. Backup throughput beside a raw copy of the live file.
            backup_mb: list[float] = []
            backup_keys: list[float] = []
            raw_mb: list[float] = []
            raw_keys: list[float] = []
            size = 0
            for repeat in range(cfg.repeats):
                step(f"backup, repeat {repeat + 1}/{cfg.repeats}")
                out = root / f"bk{repeat}"
                result = take_backup(a, out)
                size = result.data_bytes
                backup_mb.append(size / 1e6 / result.seconds)
                backup_keys.append(result.manifest["keys"] / result.seconds)
                started = time.monotonic()
                shutil.copyfile(data_file, root / f"raw{repeat}.mdb")
                raw_s = time.monotonic() - started
                raw_mb.append(data_file.stat().st_size / 1e6 / raw_s)
                raw_keys.append(result.manifest["keys"] / raw_s)
                (root / f"raw{repeat}.mdb").unlink()
                if repeat:
                    shutil.rmtree(out)
            log(f"backup: {stats(backup_mb, 'MB/s').median:.1f} MB/s, raw copy {stats(raw_mb, 'MB/s').median:.1f}")
            figures.append(
                Figure(
                    GROUP,
                    "Backup",
                    "backup throughput",
                    stats(backup_mb, "MB/s"),
                    cfg.repeats,
                    (
                        Baseline(
                            "raw copy of the node's data.mdb (shutil.copyfile)", stats(raw_mb, "MB/s"), cfg.repeats
                        ),
                    ),
                    better="higher",
                    params={"keys": cfg.keys},
                    note=f"{cfg.keys:,} keys, backup {size:,} bytes (compacted), streamed over loopback gRPC, "
                    f"checked after",
                )
            )
            figures.append(
                Figure(
                    GROUP,
                    "Backup",
                    "backup keys/s",
                    stats(backup_keys, "keys/s"),
                    cfg.repeats,
                    (Baseline("the same keys by raw copy of data.mdb", stats(raw_keys, "keys/s"), cfg.repeats),),
                    better="higher",
                )
            )
            # 2. Writes kept while backups run, against the same writes without.
            with_backup: list[float] = []
            without: list[float] = []
            for repeat in range(cfg.repeats):
                step(f"writes under backup, repeat {repeat + 1}/{cfg.repeats}")
                without.append(_writes_per_s(rp.servers["a"].addr, cfg.write_s, cfg.writer_threads, f"w{repeat}"))
                stop = threading.Event()
                taken = [0]

                def backups(repeat: int = repeat, stop: threading.Event = stop, taken: list[int] = taken) -> None:
                    with Client(rp.servers["a"].addr, timeout_s=30) as client:
                        while not stop.is_set():
                            out = root / f"under{repeat}-{taken[0]}"
                            take_backup(client, out)
                            shutil.rmtree(out)
                            taken[0] += 1

                runner = threading.Thread(target=backups)
                runner.start()
                try:
                    with_backup.append(
                        _writes_per_s(rp.servers["a"].addr, cfg.write_s, cfg.writer_threads, f"b{repeat}")
                    )
                finally:
                    stop.set()
                    runner.join()
                detail.setdefault("backups_during_writes", []).append(taken[0])
            figures.append(
                Figure(
                    GROUP,
                    "Backup",
                    "writes/s while backups run back to back",
                    stats(with_backup, "writes/s"),
                    cfg.repeats,
                    (Baseline("the same writes without a backup", stats(without, "writes/s"), cfg.repeats),),
                    better="higher",
                    note=f"{cfg.writer_threads} blocking clients, single-key sets, local durability",
                )
            )
            # 3. verify of 3 regions.
            rp.wait_converged(timeout_s=300)
            verify_s: list[float] = []
            verify_bytes: list[float] = []
            clients = {rp.servers[n].addr: rp.clients[n] for n in ("a", "b", "c")}
            for repeat in range(cfg.repeats):
                step(f"verify, repeat {repeat + 1}/{cfg.repeats}")
                comparison = compare_regions(clients, deadline_s=60)
                assert comparison.exit_code == 0, comparison.message
                verify_s.append(comparison.seconds)
                verify_bytes.append(comparison.bytes_received)
            data_bytes = sum((rp.servers[n].data_dir / "data.mdb").stat().st_size for n in ("a", "b", "c"))
            figures.append(
                Figure(
                    GROUP,
                    "Verify",
                    "verify of 3 regions: bytes received",
                    stats(verify_bytes, "bytes"),
                    cfg.repeats,
                    (Baseline("the 3 regions' data files", stats([float(data_bytes)], "bytes"), 1),),
                    better="lower",
                    params={"keys": cfg.keys},
                )
            )
            figures.append(
                Figure(GROUP, "Verify", "verify of 3 regions: time", stats(verify_s, "s"), cfg.repeats, better="lower")
            )
            # 4. Restore plus catch-up: a restored from the first backup, after b wrote a tenth more keys.
            step("restore and catch-up")
            b = rp.clients["b"]
            for i in range(cfg.keys // 10):
                b.set(f"late/{i}", VALUE)
            late = _vector(b)
            started = time.monotonic()
            rp.stop("a")
            rp.clients.pop("a").close()
            shutil.rmtree(rp.servers["a"].data_dir)
            restore_backup(root / "bk0", rp.servers["a"].data_dir)
            restored_s = time.monotonic() - started
            rp.start("a")
            _wait_covers(rp.clients["a"], late)
            total_s = time.monotonic() - started
            started = time.monotonic()
            shutil.copyfile(root / "bk0" / "data.mdb", root / "raw-restore.mdb")
            raw_s = time.monotonic() - started
            detail["restore"] = {"restore_s": restored_s, "restore_and_catch_up_s": total_s, "raw_copy_s": raw_s}
            log(f"restore {restored_s:.2f} s, with catch-up {total_s:.2f} s, raw copy {raw_s:.3f} s")
            figures.append(
                Figure(
                    GROUP,
                    "Restore",
                    "restore plus catch-up",
                    stats([total_s], "s"),
                    1,
                    (Baseline("raw copy of the backup's data file", stats([raw_s], "s"), 1),),
                    better="lower",
                    params={"keys": cfg.keys},
                    note=f"{cfg.keys:,} keys restored, {cfg.keys // 10:,} written in b meanwhile; restore alone "
                    f"{restored_s:.2f} s; includes stopping and starting the node",
                )
            )
    return detail, figures


def main(argv: Sequence[str] | None = None) -> int:
    return group_main(
        GROUP,
        __doc__,
        quick="5,000 keys, 3 repeats",
        repeats="repeats of each measurement (default 5; 3 quick)",
        make_config=make_config,
        collect=collect,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
