"""Memory and disk: metadata bytes per set element and per key, and LMDB file size against the raw payload.

Sizes are counted, not timed (every figure is one count). Run it from the repository root::

    python -m benchmarks.storage              # 100,000-member set, 100,000 keys on disk (about a minute)
    python -m benchmarks.storage --quick      # 10,000 of each (a few seconds)

What is counted and against what: ``benchmarks/METHODS.md``, section "storage".
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from benchmarks.common import group_parser, print_line
from benchmarks.figures import Baseline, Figure, Stats, write_json
from benchmarks.micro import R_A, VALUE, build_register_store, build_set_batched, member, the_set
from benchmarks.report import table
from crdtstore.crdt import HybridLogicalClock, encode
from crdtstore.operations import SetRegister
from crdtstore.storage import LmdbStore, StorageConfig, WriteRequest

GROUP = "storage"
MEMORY = "Memory: encoded metadata"
DISK = "Disk: LMDB file size against the raw payload"
TARGET_SET_ELEMENT_BYTES = 16
DISK_VALUE = bytes(range(100))  # every register value on disk: 100 bytes
DISK_KEY = "key-{:08d}"
KEYS_PER_TXN = 1_000
TABLES = ("data", "log", "log_index", "incoming", "meta", "idem", "idem_time")

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Config:
    set_members: int
    keys: int  # in memory and on disk


def make_config(quick: bool, smoke: bool = False) -> Config:
    if smoke:
        return Config(200, 500)
    if quick:
        return Config(10_000, 10_000)
    return Config(100_000, 100_000)


def _packed(x: str | bytes) -> int:
    return len(msgpack.packb(x, use_bin_type=True))


def _count(value: float, unit: str) -> Stats:
    return Stats(value, value, value, unit)


def _size(section: str, name: str, value: float, unit: str, baseline: tuple[str, float] | None, **kw: Any) -> Figure:
    baselines = (Baseline(baseline[0], _count(baseline[1], unit), 1),) if baseline else ()
    return Figure(GROUP, section, name, _count(value, unit), 1, baselines, better="lower", **kw)


def memory_figures(cfg: Config, log: Log) -> tuple[list[Figure], dict[str, Any]]:
    n = cfg.set_members
    began = time.perf_counter()
    sm = build_set_batched(n, min(5_000, max(1, n // 10)))
    aw = the_set(sm)
    member_bytes = sum(_packed(member(i)) for i in range(n))
    store_bytes, aw_bytes = len(encode(sm)), len(encode(aw))
    per_element = (store_bytes - member_bytes) / n
    log(
        f"set of {n:,} members built in {time.perf_counter() - began:.2f} s: {store_bytes:,} B encoded, "
        f"{member_bytes:,} B of member strings; metadata {per_element:.2f} B per element"
    )
    k = cfg.keys
    reg = build_register_store(k)
    payload = sum(_packed(f"key-{i:06d}") + _packed(VALUE) for i in range(k))
    reg_bytes = len(encode(reg))
    per_key = (reg_bytes - payload) / k
    log(f"{k:,} register keys of {len(VALUE)} B: {reg_bytes:,} B encoded, {payload:,} B payload; {per_key:.2f} B/key")
    size = {"members": n}
    figures = [
        _size(
            MEMORY,
            f"metadata per set element, set of {n:,}",
            per_element,
            "bytes/element",
            None,
            target=f"<= {TARGET_SET_ELEMENT_BYTES} B",
            params=size,
            note="(encoded StoreMap - members' msgpack bytes) / members",
        ),
        _size(
            MEMORY,
            f"metadata per set element, AWSet alone, set of {n:,}",
            (aw_bytes - member_bytes) / n,
            "bytes/element",
            None,
            params=size,
        ),
        _size(
            MEMORY,
            f"encoded set per element, set of {n:,}",
            store_bytes / n,
            "bytes/element",
            ("members' own msgpack bytes per element", member_bytes / n),
            params=size,
        ),
        _size(
            MEMORY,
            f"metadata per register key, {k:,} keys",
            per_key,
            "bytes/key",
            None,
            params={"keys": k},
            note=f"(encoded StoreMap - msgpack of key and {len(VALUE)}-byte value) / keys",
        ),
        _size(
            MEMORY,
            f"encoded store per register key, {k:,} keys",
            reg_bytes / k,
            "bytes/key",
            ("msgpack of key + value per key", payload / k),
            params={"keys": k},
        ),
    ]
    detail = {
        "set_members": n,
        "set_store_bytes": store_bytes,
        "set_awset_bytes": aw_bytes,
        "set_member_bytes": member_bytes,
        "register_keys": k,
        "register_store_bytes": reg_bytes,
        "register_payload_bytes": payload,
    }
    return figures, detail


def _table_bytes(path: Path) -> dict[str, dict[str, int]]:
    """Entries, key + value bytes and pages of each of the store's tables, read after it closed."""
    out: dict[str, dict[str, int]] = {}
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=len(TABLES) + 1, subdir=True)
    try:
        for name in TABLES:
            try:
                db = env.open_db(name.encode(), create=False)
            except lmdb.NotFoundError:
                continue
            with env.begin(db=db) as txn:
                st = txn.stat(db)
                pairs = sum(len(key) + len(value) for key, value in txn.cursor())
            pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            out[name] = {"entries": st["entries"], "key_value_bytes": pairs, "page_bytes": pages * st["psize"]}
    finally:
        env.close()
    return out


def disk_figures(cfg: Config, log: Log) -> tuple[list[Figure], dict[str, Any]]:
    k = cfg.keys
    keys = [DISK_KEY.format(i) for i in range(k)]
    raw_payload = sum(len(key.encode()) + len(DISK_VALUE) for key in keys)
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-storage-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        store = LmdbStore(StorageConfig(root / "store", R_A))
        clock = HybridLogicalClock(lambda: time.time_ns() // 1_000_000)
        try:
            for start in range(0, k, KEYS_PER_TXN):
                ops = [SetRegister(key, DISK_VALUE) for key in keys[start : start + KEYS_PER_TXN]]
                store.write_batch([WriteRequest(ops)], clock)
        finally:
            store.close()
        file_bytes = (root / "store" / "data.mdb").stat().st_size
        tables = _table_bytes(root / "store")
        log(f"{k:,} keys through LmdbStore in {time.perf_counter() - began:.2f} s: data.mdb {file_bytes:,} B")

        env = lmdb.open(str(root / "raw"), map_size=1 << 34, subdir=True, sync=True, metasync=True)
        try:
            for start in range(0, k, KEYS_PER_TXN):
                with env.begin(write=True) as txn:
                    for key in keys[start : start + KEYS_PER_TXN]:
                        txn.put(key.encode(), DISK_VALUE)
        finally:
            env.close()
        raw_file_bytes = (root / "raw" / "data.mdb").stat().st_size
    data = tables.get("data", {"entries": 0, "key_value_bytes": 0, "page_bytes": 0})
    payload = ("raw payload: UTF-8 key + value bytes", float(raw_payload))
    params = {"keys": k, "value_bytes": len(DISK_VALUE)}
    pages = ", ".join(f"{name} {t['page_bytes'] / 2**20:.2f} MiB" for name, t in tables.items() if t["page_bytes"])
    figures = [
        _size(DISK, f"LmdbStore data.mdb, {k:,} keys", file_bytes, "bytes", payload, params=params, note=pages),
        _size(
            DISK,
            f"LmdbStore data.mdb against raw LMDB, {k:,} keys",
            file_bytes,
            "bytes",
            ("raw LMDB data.mdb of the same pairs, same transactions", float(raw_file_bytes)),
            params=params,
        ),
        _size(
            DISK,
            f"raw LMDB data.mdb, {k:,} keys",
            raw_file_bytes,
            "bytes",
            payload,
            params=params,
            note="LMDB's own overhead: pages, branch nodes, free space",
        ),
        _size(
            DISK,
            f"data table record per key (key + stored state), {k:,} keys",
            data["key_value_bytes"] / k,
            "bytes/key",
            ("raw payload per key", raw_payload / k),
            params=params,
        ),
    ]
    detail = {"keys": k, "data_mdb_bytes": file_bytes, "raw_lmdb_data_mdb_bytes": raw_file_bytes, "tables": tables}
    detail["raw_payload_bytes"] = raw_payload
    return figures, detail


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    step(f"memory: set of {cfg.set_members:,}, {cfg.keys:,} register keys")
    memory, memory_detail = memory_figures(cfg, log)
    step(f"disk: {cfg.keys:,} keys through LmdbStore and raw LMDB")
    disk, disk_detail = disk_figures(cfg, log)
    return {"memory": memory_detail, "disk": disk_detail}, memory + disk


def main(argv: Sequence[str] | None = None) -> int:
    parser = group_parser("storage", __doc__, "10,000 members and keys instead of 100,000")
    args = parser.parse_args(argv)

    log = print_line

    detail, figures = collect(make_config(args.quick), log, lambda _: None)
    print()
    print("\n".join(table(figures)))  # the table REPORT.md has
    if args.json is not None:
        write_json(args.json, {"figures": [f.as_json() for f in figures], "detail": detail})
    return 0


if __name__ == "__main__":
    sys.exit(main())
