"""Micro benchmark of the pure CRDT core (``crdtstore.crdt``), each figure next to a raw baseline.

Throughput of mutate, join, apply delta, encode and decode for each type and the keyed store; the size of one set
add delta as the set grows; metadata bytes per set element; how an add and a write scale. Run it from the
repository root::

    python -m benchmarks.micro                  # full run, 5 repeats (one to two minutes)
    python -m benchmarks.micro --quick          # smaller sizes, 3 repeats (about 15 s)
    python -m benchmarks.micro --repeats 9 --json bench-out/micro.json

What is measured, the baselines and how: ``benchmarks/METHODS.md``, section "micro".
"""

from __future__ import annotations

import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from benchmarks.common import group_parser, print_line
from benchmarks.figures import Baseline, Figure, Stats
from crdtstore.crdt import (
    AWSet,
    Causal,
    CausalContext,
    Counter,
    Dot,
    KeyState,
    Register,
    StoreMap,
    Timestamp,
    ValueType,
    Version,
    VersionVector,
    decode,
    encode,
)

# ---------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------

Run = Callable[[], int]
"""A timed run: performs some operations and returns how many."""

Bench = Callable[[int], Run]
"""Prepares (untimed) a run of ``n`` operations."""


@dataclass(frozen=True, slots=True)
class Config:
    quick: bool
    repeats: int
    target_s: float  # wall time of one repeat
    moderate: int  # members per set replica, keys per store replica
    set_sizes: tuple[int, ...]  # sets whose add delta is encoded
    store_sizes: tuple[int, ...]  # stores whose write cost is measured
    batch: int  # members per delta when building a big set


def make_config(quick: bool, repeats: int | None, smoke: bool = False) -> Config:
    if smoke:  # the suite's test: checks that every figure is produced, in a second or two
        return Config(True, repeats or 1, 0.004, 40, (10, 200), (100,), 100)
    if quick:
        return Config(True, repeats or 3, 0.04, 300, (10, 1_000, 10_000), (1_000, 10_000), 1_000)
    return Config(False, repeats or 5, 0.12, 1_000, (10, 1_000, 100_000), (1_000, 10_000, 100_000), 5_000)


def _time(run: Run) -> tuple[int, float]:
    start = time.perf_counter()
    ops = run()
    return ops, time.perf_counter() - start


def measure(bench: Bench, cfg: Config, max_ops: int = 1 << 30) -> Stats:
    """Operations per second of ``bench``: median, min and max over ``cfg.repeats`` repeats.

    ``max_ops`` caps the operations of one run, for runs that grow their state
    (each run starts again from the same state, so a cap keeps the size fixed).
    """
    gc.collect()
    # Warm-up and calibration in one: double the op count until a run is long enough.
    n = 1
    while True:
        ops, elapsed = _time(bench(n))
        if elapsed >= cfg.target_s / 8 or n >= max_ops:
            break
        n = min(max_ops, n * 2 if elapsed <= 0 else max(n * 2, int(n * cfg.target_s / 4 / elapsed)))
    per_run = max(elapsed, 1e-9)
    calls = max(1, math.ceil(cfg.target_s / per_run))
    rates: list[float] = []
    for _ in range(cfg.repeats):
        total_ops, total_s = 0, 0.0
        for _ in range(calls):
            ops, elapsed = _time(bench(n))
            total_ops += ops
            total_s += elapsed
        rates.append(total_ops / total_s)
    return Stats(statistics.median(rates), min(rates), max(rates), "ops/s")


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------

R_A = "us-east-1"
R_B = "eu-west-1"
REGIONS = (R_A, R_B, "ap-south-1", "sa-east-1", "af-south-1")
WALL_MS = 1_700_000_000_000
VALUE = bytes(range(64))  # a 64-byte register value
SET_KEY = "set-under-test"
VERIFY_BATCH = 300  # members per delta of the batched build checked against the one-by-one build
PROBE = "probe-member"  # added to every set to get an add delta; never a member before


def member(i: int) -> str:
    return f"member-{i:06d}"


def ts(i: int) -> Timestamp:
    return Timestamp(WALL_MS + i // 8, i % 8)


RegState = Causal[Register]
CntState = Causal[Counter]
SetState = Causal[AWSet]


def plain_vv(ctx: CausalContext) -> dict[str, int]:
    return dict(ctx.vv.items())


@dataclass(frozen=True, slots=True)
class Case:
    """One type's states and the benches of its five operations, core and raw."""

    name: str
    workload: str  # what the states hold, for the legend
    benches: dict[str, tuple[Bench, Bench, str, int]]  # op -> (core, raw, baseline text, max ops per run)


def _repeat(op: Callable[[], object]) -> Bench:
    """A bench calling ``op`` n times (for core ops, whose cost dwarfs a call)."""

    def bench(n: int) -> Run:
        def run() -> int:
            for _ in range(n):
                op()
            return n

        return run

    return bench


def _merge(x: Any, y: Any, vx: dict[str, int], vy: dict[str, int]) -> Bench:
    """A bench of the plain merge ``(x | y, vx | vy)``, written out (no call per op)."""

    def bench(n: int) -> Run:
        def run() -> int:
            for _ in range(n):
                _ = (x | y, vx | vy)
            return n

        return run

    return bench


def _codec_benches(state: Any) -> tuple[dict[str, tuple[Bench, Bench, str, int]], int]:
    data = encode(state)
    plain = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    if msgpack.packb(plain, use_bin_type=True) != data:
        raise RuntimeError("the plain baseline structure does not pack to the codec's bytes")
    decoded = decode(data)
    if decoded != state:
        raise RuntimeError(f"decode(encode(x)) != x for {type(state).__name__}")
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def pack_raw(n: int) -> Run:
        def run() -> int:
            for _ in range(n):
                packb(plain, use_bin_type=True)
            return n

        return run

    def unpack_raw(n: int) -> Run:
        def run() -> int:
            for _ in range(n):
                unpackb(data, raw=False, use_list=True, strict_map_key=True)
            return n

        return run

    return {
        "encode": (
            _repeat(lambda: encode(state)),
            pack_raw,
            f"msgpack.packb of the same plain lists ({len(data):,} B)",
            1 << 30,
        ),
        "decode": (
            _repeat(lambda: decode(data)),
            unpack_raw,
            "msgpack.unpackb of the same bytes",
            1 << 30,
        ),
    }, len(data)


def register_case(cfg: Config) -> Case:
    def write(state: RegState, region: str, i: int) -> RegState:
        return state.join(state.store.write(VALUE, ts(i), state.next_dot(region)))

    base: RegState = write(Causal(Register(), CausalContext()), R_A, 0)
    a, b = base, base
    for i in range(1, 4):
        a = write(a, R_A, i)
        b = write(b, R_B, 10 + i)
    joined = a.join(b)
    delta = b.store.write(VALUE, ts(20), b.next_dot(R_B))

    def plain(state: Causal[Register]) -> dict[tuple[str, int], tuple[int, int, bytes]]:
        return {
            (d.region, d.counter): (v.timestamp.wall_ms, v.timestamp.logical, v.value)
            for d, v in state.store.entries.items()
        }

    pa, pb, pd = plain(a), plain(b), plain(delta)
    va, vb = plain_vv(a.context), plain_vv(b.context)
    vd = {d.region: d.counter for d in delta.context.dots()}

    def mutate_core(n: int) -> Run:
        stamps = [ts(100 + i) for i in range(n)]

        def run() -> int:
            state = a
            for stamp in stamps:
                state = state.join(state.store.write(VALUE, stamp, state.next_dot(R_A)))
            return n

        return run

    def mutate_raw(n: int) -> Run:
        d = dict(pa)
        key = next(iter(pa))
        items = [(key, (WALL_MS, 100 + i, VALUE)) for i in range(n)]

        def run() -> int:
            for k, v in items:
                d[k] = v
            return n

        return run

    benches: dict[str, tuple[Bench, Bench, str, int]] = {
        "mutate": (mutate_core, mutate_raw, f"d[k] = v into a dict of {len(pa)} entry", 1 << 30),
        "join state": (
            _repeat(lambda: a.join(b)),
            _merge(pa, pb, va, vb),
            f"dict a | b ({len(pa)}+{len(pb)} entries) and vv a | b",
            1 << 30,
        ),
        "apply delta": (
            _repeat(lambda: a.join(delta)),
            _merge(pa, pd, va, vd),
            f"dict a | delta ({len(pa)}+{len(pd)} entries) and vv",
            1 << 30,
        ),
    }
    codec, size = _codec_benches(joined)
    benches.update(codec)
    workload = (
        f"register: replicas of 1 value ({len(VALUE)} B) that wrote concurrently; "
        f"joined state has {len(joined.store.entries)} siblings, {size} B encoded"
    )
    return Case("register", workload, benches)


def counter_case(cfg: Config) -> Case:
    def inc(state: CntState, region: str, amount: int) -> CntState:
        return state.join(state.store.increment(amount, state.next_dot(region)))

    base: CntState = Causal(Counter(), CausalContext())
    for i, region in enumerate(REGIONS):
        base = inc(base, region, 1000 * (i + 1))
    a, b = base, base
    for i in range(3):
        a = inc(inc(a, REGIONS[0], 7 + i), REGIONS[1], -3)
        b = inc(inc(b, REGIONS[2], 5 + i), REGIONS[3], -2)
    joined = a.join(b)
    delta = b.store.increment(1, b.next_dot(REGIONS[2]))

    def plain(state: CntState) -> dict[tuple[str, int], tuple[int, int]]:
        return {(d.region, d.counter): (s.positive, s.negative) for d, s in state.store.entries.items()}

    pa, pb, pd = plain(a), plain(b), plain(delta)
    va, vb = plain_vv(a.context), plain_vv(b.context)
    vd = {d.region: d.counter for d in delta.context.dots()}

    def mutate_core(n: int) -> Run:
        amounts = [(i % 7) - 3 or 1 for i in range(n)]

        def run() -> int:
            state = a
            for amount in amounts:
                state = state.join(state.store.increment(amount, state.next_dot(R_A)))
            return n

        return run

    def mutate_raw(n: int) -> Run:
        d = dict(pa)
        key = next(iter(pa))
        items = [(key, (1000 + i, 3)) for i in range(n)]

        def run() -> int:
            for k, v in items:
                d[k] = v
            return n

        return run

    benches: dict[str, tuple[Bench, Bench, str, int]] = {
        "mutate": (mutate_core, mutate_raw, f"d[k] = v into a dict of {len(pa)} entries", 1 << 30),
        "join state": (
            _repeat(lambda: a.join(b)),
            _merge(pa, pb, va, vb),
            f"dict a | b ({len(pa)}+{len(pb)} entries) and vv a | b",
            1 << 30,
        ),
        "apply delta": (
            _repeat(lambda: a.join(delta)),
            _merge(pa, pd, va, vd),
            f"dict a | delta ({len(pa)}+{len(pd)} entries) and vv",
            1 << 30,
        ),
    }
    codec, size = _codec_benches(joined)
    benches.update(codec)
    workload = (
        f"counter: {len(REGIONS)} regions incremented, then two replicas incremented concurrently; "
        f"joined state has {len(joined.store.entries)} shares, {size} B encoded"
    )
    return Case("counter", workload, benches)


def set_case(cfg: Config) -> Case:
    n_base = cfg.moderate
    n_conc = max(1, n_base // 10)

    def add(state: SetState, m: str, region: str) -> SetState:
        return state.join(state.store.add(m, state.next_dot(region)))

    def remove(state: SetState, m: str, region: str) -> SetState:
        return state.join(state.store.remove(m, state.next_dot(region)))

    base: SetState = Causal(AWSet(), CausalContext())
    for i in range(n_base):
        base = add(base, member(i), R_A)
    a, b = base, base
    for i in range(n_conc):
        a = add(a, f"a-{i:06d}", R_A)
        b = add(b, f"b-{i:06d}", R_B)
    for i in range(0, n_conc, 2):  # a removes what b concurrently re-adds: b's add wins
        a = remove(a, member(i), R_A)
        b = add(b, member(i), R_B)
    joined = a.join(b)
    delta = b.store.add("b-fresh", b.next_dot(R_B))

    def plain(state: SetState) -> set[str]:
        return set(state.store.entries)

    pa, pb, pd = plain(a), plain(b), plain(delta)
    va, vb = plain_vv(a.context), plain_vv(b.context)
    vd = {d.region: d.counter for d in delta.context.dots()}
    a_entries = {m: [(d.region, d.counter) for d in dots] for m, dots in a.store.entries.items()}
    top = a.context.vv.get(R_A)

    def mutate_core(n: int) -> Run:
        fresh = [f"new-{i:06d}" for i in range(n)]

        def run() -> int:
            state = a
            for m in fresh:
                state = state.join(state.store.add(m, state.next_dot(R_A)))
            return n

        return run

    def mutate_raw(n: int) -> Run:
        d = dict(a_entries)
        items = [(f"new-{i:06d}", [(R_A, top + 1 + i)]) for i in range(n)]

        def run() -> int:
            for k, v in items:
                d[k] = v
            return n

        return run

    benches: dict[str, tuple[Bench, Bench, str, int]] = {
        "mutate": (
            mutate_core,
            mutate_raw,
            f"d[k] = v, fresh keys, into a dict of {len(pa):,} entries",
            n_conc,
        ),
        "join state": (
            _repeat(lambda: a.join(b)),
            _merge(pa, pb, va, vb),
            f"set a | b ({len(pa):,}+{len(pb):,} members) and vv a | b",
            1 << 30,
        ),
        "apply delta": (
            _repeat(lambda: a.join(delta)),
            _merge(pa, pd, va, vd),
            f"set a | delta ({len(pa):,}+{len(pd)} members) and vv",
            1 << 30,
        ),
    }
    codec, size = _codec_benches(joined)
    benches.update(codec)
    workload = (
        f"set: {n_base:,} members, then each replica added {n_conc:,} and a removed {len(range(0, n_conc, 2))} "
        f"that b re-added; joined state has {len(joined.store.entries):,} members, {size:,} B encoded; "
        f"mutate adds up to {n_conc:,} fresh members per run, starting again from replica a"
    )
    return Case("set", workload, benches)


def _store_op(state: StoreMap, key_index: int, region: str, i: int) -> StoreMap:
    """The delta of one operation on key ``key_index``: its type is fixed by the index."""
    key = f"key-{key_index:06d}"
    kind = key_index % 3
    if kind == 0:
        return state.write_register(key, VALUE, ts(i), region)
    if kind == 1:
        return state.increment(key, (i % 5) + 1, region)
    return state.add_members(key, [f"{region}-{i}", f"m{i % 4}"], region)


def _plain_store_value(i: int, key_index: int) -> object:
    kind = key_index % 3
    if kind == 0:
        return VALUE
    if kind == 1:
        return i
    return frozenset((f"m{i % 4}",))


def store_case(cfg: Config) -> Case:
    n_keys = cfg.moderate
    n_conc = max(3, n_keys // 10)
    base = StoreMap()
    for k in range(n_keys):
        base = base.join_delta(_store_op(base, k, R_A, k))
    a, b = base, base
    for j in range(n_conc):
        a = a.join_delta(_store_op(a, (j * 7) % n_keys, R_A, 10_000 + j))
        b = b.join_delta(_store_op(b, (j * 11 + 3) % n_keys, R_B, 20_000 + j))
    joined = a.join(b)
    deltas = [_store_op(b, k, R_B, 30_000 + k) for k in (0, 1, 2)]

    def plain(state: StoreMap) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, ks in state.entries.items():
            kv = ks.read()
            out[key] = None if kv is None else kv.value
        return out

    pa, pb = plain(a), plain(b)
    pds = [plain(d) for d in deltas]
    va, vb = plain_vv(a.context), plain_vv(b.context)
    vds = [{d.region: d.counter for d in delta.context.dots()} for delta in deltas]

    def mutate_core(n: int) -> Run:
        ops = [((j * 13) % n_keys, 40_000 + j) for j in range(n)]

        def run() -> int:
            state = a
            for key_index, i in ops:
                state = state.join_delta(_store_op(state, key_index, R_A, i))
            return n

        return run

    def mutate_raw(n: int) -> Run:
        d = dict(pa)
        items = [(f"key-{(j * 13) % n_keys:06d}", _plain_store_value(j, (j * 13) % n_keys)) for j in range(n)]

        def run() -> int:
            for k, v in items:
                d[k] = v
            return n

        return run

    def apply_core(n: int) -> Run:
        def run() -> int:
            for i in range(n):
                a.join_delta(deltas[i % 3])
            return n

        return run

    def apply_raw(n: int) -> Run:
        def run() -> int:
            for i in range(n):
                _ = (pa | pds[i % 3], va | vds[i % 3])
            return n

        return run

    benches: dict[str, tuple[Bench, Bench, str, int]] = {
        "mutate": (
            mutate_core,
            mutate_raw,
            f"d[k] = v, same keys, into a dict of {len(pa):,} entries",
            n_conc,
        ),
        "join state": (
            _repeat(lambda: a.join(b)),
            _merge(pa, pb, va, vb),
            f"dict a | b ({len(pa):,}+{len(pb):,} keys) and vv a | b",
            1 << 30,
        ),
        "apply delta": (apply_core, apply_raw, f"dict a | delta ({len(pa):,}+1 keys) and vv", 1 << 30),
    }
    codec, size = _codec_benches(joined)
    benches.update(codec)
    workload = (
        f"store: {n_keys:,} keys (a third each registers, counters, sets of 2-4 members), then "
        f"{n_conc:,} concurrent ops per replica; joined state {size:,} B encoded; "
        f"mutate and apply delta cycle register write / increment / add on existing keys"
    )
    return Case("store", workload, benches)


# ---------------------------------------------------------------------------
# set deltas, metadata and scaling
# ---------------------------------------------------------------------------


def build_set_one_by_one(n: int) -> StoreMap:
    sm = StoreMap()
    for i in range(n):
        sm = sm.join_delta(sm.add_members(SET_KEY, [member(i)], R_A))
    return sm


def build_set_batched(n: int, batch: int) -> StoreMap:
    """The same state as ``build_set_one_by_one(n)``, with ``batch`` members per delta.

    ``add_members`` gives members dots in sorted order and ``member(i)`` sorts
    by ``i``, so member ``i`` gets the dot it gets one by one.
    """
    sm = StoreMap()
    for start in range(0, n, batch):
        sm = sm.join_delta(sm.add_members(SET_KEY, [member(i) for i in range(start, min(n, start + batch))], R_A))
    return sm


def the_set(sm: StoreMap) -> AWSet:
    slot = sm.entries[SET_KEY].slots[ValueType.SET]
    assert isinstance(slot, AWSet)
    return slot


def build_register_store(n: int) -> StoreMap:
    """A store of ``n`` register keys written once each by ``R_A``, built directly."""
    entries = {
        f"key-{k:06d}": KeyState({ValueType.REGISTER: Register({Dot(R_A, k + 1): Version(ts(k), VALUE)})})
        for k in range(n)
    }
    return StoreMap(entries, CausalContext(VersionVector({R_A: n})))


def build_register_store_one_by_one(n: int) -> StoreMap:
    sm = StoreMap()
    for k in range(n):
        sm = sm.join_delta(sm.write_register(f"key-{k:06d}", VALUE, ts(k), R_A))
    return sm


@dataclass(frozen=True, slots=True)
class SetSizing:
    n: int
    build: str
    build_s: float
    delta_bytes: int
    causal_delta_bytes: int
    state_bytes: int
    aw_bytes: int
    member_bytes: int
    add_rate: Stats
    raw_rate: Stats


def set_sizing(cfg: Config, log: Callable[[str], None]) -> tuple[list[SetSizing], bool]:
    out: list[SetSizing] = []
    one_by_one_max = 1_000
    verified = False
    for n in cfg.set_sizes:
        start = time.perf_counter()
        if n <= one_by_one_max:
            sm, how = build_set_one_by_one(n), "one by one"
        else:
            sm, how = build_set_batched(n, cfg.batch), f"{cfg.batch:,} per delta"
        build_s = time.perf_counter() - start
        log(f"  built a {n:,}-member set ({how}) in {build_s:.2f} s")
        if n == one_by_one_max:
            # batches of 300 split 1,000 members unevenly over four deltas
            verified = build_set_batched(n, VERIFY_BATCH) == sm
            if not verified:
                raise RuntimeError("a batched set build differs from the one-by-one build")
        aw = the_set(sm)
        if len(aw.entries) != n or PROBE in aw:
            raise RuntimeError("set build went wrong")
        delta = sm.add_members(SET_KEY, [PROBE], R_A)
        causal_delta = aw.add(PROBE, sm.context.next_dot(R_A))
        members = sorted(aw.entries)
        member_bytes = sum(len(msgpack.packb(m, use_bin_type=True)) for m in members)

        def add_core(ops: int, sm: StoreMap = sm) -> Run:
            def run() -> int:
                for i in range(ops):
                    sm.join_delta(sm.add_members(SET_KEY, [f"fresh-{i:06d}"], R_A))
                return ops

            return run

        plain = {m: [(R_A, i + 1)] for i, m in enumerate(members)}

        def add_raw(ops: int, plain: dict[str, list[tuple[str, int]]] = plain, n: int = n) -> Run:
            d = dict(plain)
            items = [(f"fresh-{i:06d}", [(R_A, n + 1)]) for i in range(ops)]

            def run() -> int:
                for k, v in items:
                    d[k] = v
                return ops

            return run

        out.append(
            SetSizing(
                n=n,
                build=how,
                build_s=build_s,
                delta_bytes=len(encode(delta)),
                causal_delta_bytes=len(encode(causal_delta)),
                state_bytes=len(encode(sm)),
                aw_bytes=len(encode(aw)),
                member_bytes=member_bytes,
                add_rate=measure(add_core, cfg),
                # fresh keys as in the core; up to 100 per run even on a small dict, so
                # that a run is not just the timer's own overhead
                raw_rate=measure(add_raw, cfg, max_ops=max(100, n // 10)),
            )
        )
    return out, verified


@dataclass(frozen=True, slots=True)
class StoreSizing:
    keys: int
    write_rate: Stats
    raw_rate: Stats


def store_sizing(cfg: Config) -> list[StoreSizing]:
    check = min(cfg.store_sizes)
    if build_register_store(check) != build_register_store_one_by_one(check):
        raise RuntimeError("the directly built store differs from the one-by-one build")
    out: list[StoreSizing] = []
    for n in cfg.store_sizes:
        sm = build_register_store(n)

        def write_core(ops: int, sm: StoreMap = sm, n: int = n) -> Run:
            def run() -> int:
                for i in range(ops):
                    sm.join_delta(sm.write_register("key-000000", VALUE, ts(n + i), R_B))
                return ops

            return run

        plain = {f"key-{k:06d}": VALUE for k in range(n)}

        def write_raw(ops: int, plain: dict[str, bytes] = plain) -> Run:
            d = dict(plain)

            def run() -> int:
                for _ in range(ops):
                    d["key-000000"] = VALUE
                return ops

            return run

        out.append(StoreSizing(n, measure(write_core, cfg), measure(write_raw, cfg)))
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def rate(x: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= limit * 0.9995:  # so that 999.6 reads 1k, not 1e+03
            return f"{x / limit:.3g}{suffix}"
    return f"{x:.3g}"


def spread(s: Stats) -> str:
    return f"{rate(s.median):>6} [{rate(s.minimum)}..{rate(s.maximum)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


GROUP = "micro"
THROUGHPUT = "CRDT core operations (pure, in memory)"
SCALING = "Cost of one mutation against the size of the state"
DELTAS = "Set add delta size"


def section_throughput(
    cfg: Config, log: Log, figures: list[Figure] | None = None, step: Log = _quiet
) -> list[dict[str, Any]]:
    """Throughput (METHODS.md, micro, item 1): every type and operation next to its raw baseline."""
    out: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    legend: list[str] = []
    for make in (register_case, counter_case, set_case, store_case):
        case = make(cfg)
        legend.append(case.workload)
        for op, (core, raw, baseline, max_ops) in case.benches.items():
            step(f"{case.name} {op}")
            core_stats = measure(core, cfg, max_ops)
            raw_stats = measure(raw, cfg, max_ops)
            slowdown = raw_stats.median / core_stats.median
            rows.append([case.name, op, spread(core_stats), spread(raw_stats), f"{slowdown:,.1f}x", baseline])
            out.append(
                {
                    "type": case.name,
                    "operation": op,
                    "core": core_stats.as_json(),
                    "raw": raw_stats.as_json(),
                    "raw_baseline": baseline,
                    "core_slowdown_vs_raw": {"value": slowdown, "unit": "raw median / core median"},
                    "workload": case.workload,
                }
            )
            if figures is not None:
                figures.append(
                    Figure(
                        GROUP,
                        THROUGHPUT,
                        f"{case.name} {op}",
                        core_stats,
                        cfg.repeats,
                        (Baseline(f"raw: {baseline}", raw_stats, cfg.repeats),),
                        better="higher",
                        params={"type": case.name, "operation": op},
                        note=case.workload,
                    )
                )
    log("1. Throughput in ops/s, median [min..max]; 'slower' = raw median / core median")
    log("")
    header = ["type", "operation", "core ops/s", "raw ops/s", "slower", "raw baseline (same size and shape)"]
    for line in table(header, rows, [False, False, True, True, True, False]):
        log(line)
    log("")
    log("Workloads:")
    for text in legend:
        log(f"  - {text}")
    log("")
    return out


def section_sets(
    cfg: Config, log: Log, out: list[Figure] | None = None, step: Log = _quiet
) -> tuple[list[SetSizing], dict[str, Any]]:
    """METHODS.md, micro, items 2 and 3: the size of a set add delta, and metadata bytes per set element."""
    log("2. Set add delta size and metadata per element")
    step("set add deltas, sets of " + ", ".join(f"{n:,}" for n in cfg.set_sizes))
    sizings, verified = set_sizing(cfg, log)
    if cfg.quick:
        log("  (quick mode: the largest set has 10,000 members instead of 100,000)")
    if verified:
        log(f"  checked: a batched build ({VERIFY_BATCH} members per delta) equals the one-by-one build of 1,000")
    log("")
    rows = [
        [f"{s.n:,}", s.build, f"{s.build_s:.2f}", str(s.delta_bytes), str(s.causal_delta_bytes), f"{s.state_bytes:,}"]
        for s in sizings
    ]
    header = ["members", "built", "build s", "StoreMap add delta B", "Causal[AWSet] add delta B", "state B"]
    for line in table(header, rows, [True, False, True, True, True, True]):
        log(f"  {line}")
    same = len({s.delta_bytes for s in sizings}) == 1 and len({s.causal_delta_bytes for s in sizings}) == 1
    log(f"  add delta sizes identical across set sizes: {'yes' if same else 'NO'}")
    big = sizings[-1]
    per_element = (big.state_bytes - big.member_bytes) / big.n
    per_element_aw = (big.aw_bytes - big.member_bytes) / big.n
    log("")
    log(
        f"  metadata per element at {big.n:,} members: ({big.state_bytes:,} B encoded StoreMap - "
        f"{big.member_bytes:,} B of member strings) / {big.n:,} = {per_element:.2f} B "
        f"(target: at most 16 B; {'met' if per_element <= 16 else 'NOT met'})"
    )
    log(f"  the AWSet alone, without key and context: {per_element_aw:.2f} B per element")
    log("")
    figures = {
        "set_add_delta": [
            {
                "members": s.n,
                "built": s.build,
                "build_seconds": {"value": s.build_s, "unit": "s"},
                "storemap_add_delta": {"value": s.delta_bytes, "unit": "bytes"},
                "causal_awset_add_delta": {"value": s.causal_delta_bytes, "unit": "bytes"},
                "state": {"value": s.state_bytes, "unit": "bytes"},
                "awset": {"value": s.aw_bytes, "unit": "bytes"},
                "member_strings": {"value": s.member_bytes, "unit": "bytes"},
            }
            for s in sizings
        ],
        "set_add_delta_sizes_identical": same,
        "metadata_per_element": {
            "members": big.n,
            "storemap": {"value": per_element, "unit": "bytes/element"},
            "awset_only": {"value": per_element_aw, "unit": "bytes/element"},
            "target": {"value": 16, "unit": "bytes/element", "meaning": "at most"},
        },
    }
    if out is not None:
        for s in sizings:
            size = {"members": s.n}
            note = "should not depend on the size of the set"
            for what, value in (("StoreMap", s.delta_bytes), ("Causal[AWSet]", s.causal_delta_bytes)):
                b = float(value)
                out.append(
                    Figure(
                        GROUP,
                        DELTAS,
                        f"{what} add delta, set of {s.n:,}",
                        Stats(b, b, b, "bytes"),
                        1,
                        (),
                        "",
                        "lower",
                        size,
                        note,
                    )
                )
    return sizings, figures


def section_scaling(
    cfg: Config, sizings: list[SetSizing], log: Log, out: list[Figure] | None = None, step: Log = _quiet
) -> dict[str, Any]:
    """The cost of one mutation against the size of the state it lands in."""
    log("3. Cost of one mutation against the size of the state it lands in")
    step("register write against store size")
    log("")
    rows = [
        [
            "set add (add_members + join_delta)",
            f"{s.n:,} members",
            spread(s.add_rate),
            spread(s.raw_rate),
            f"{s.raw_rate.median / s.add_rate.median:,.1f}x",
        ]
        for s in sizings
    ]
    stores = store_sizing(cfg)
    rows.extend(
        [
            "register write (write_register + join_delta)",
            f"{st.keys:,} keys",
            spread(st.write_rate),
            spread(st.raw_rate),
            f"{st.raw_rate.median / st.write_rate.median:,.1f}x",
        ]
        for st in stores
    )
    header = ["operation", "state", "core ops/s", "raw d[k] = v ops/s", "slower"]
    for line in table(header, rows, [False, True, True, True, True]):
        log(f"  {line}")
    big = sizings[-1]
    if big.n > 1_000:
        projected = big.n / 2 / big.add_rate.median
        log("")
        log(
            f"  an add costs time in proportion to the size of the set, so building the {big.n:,}-member set "
            f"one add at a time would take about {projected:,.0f} s (n/2 adds at the rate measured at n); "
            f"it was built with {cfg.batch:,} members per delta instead"
        )
    if out is not None:
        for s in sizings:
            out.append(
                Figure(
                    GROUP,
                    SCALING,
                    f"set add (add_members + join_delta), set of {s.n:,}",
                    s.add_rate,
                    cfg.repeats,
                    (Baseline("raw: d[k] = v, fresh keys, dict of the same size", s.raw_rate, cfg.repeats),),
                    better="higher",
                    params={"members": s.n},
                )
            )
        for st in stores:
            out.append(
                Figure(
                    GROUP,
                    SCALING,
                    f"register write (write_register + join_delta), {st.keys:,} keys",
                    st.write_rate,
                    cfg.repeats,
                    (Baseline("raw: d[k] = v into a dict of the same size", st.raw_rate, cfg.repeats),),
                    better="higher",
                    params={"keys": st.keys},
                )
            )
    return {
        "set_add_scaling": [
            {
                "members": s.n,
                "add_members_then_join_delta": s.add_rate.as_json(),
                "raw_dict_insert": s.raw_rate.as_json(),
            }
            for s in sizings
        ],
        "store_write_scaling": [
            {
                "keys": st.keys,
                "write_register_then_join_delta": st.write_rate.as_json(),
                "raw_dict_insert": st.raw_rate.as_json(),
            }
            for st in stores
        ],
    }


def collect(cfg: Config, log: Log, step: Log = _quiet) -> tuple[dict[str, Any], list[Figure]]:
    """Every figure of this benchmark: the JSON of ``--json`` (without its meta) and the suite's figures."""
    figures: list[Figure] = []
    result: dict[str, Any] = {"throughput": section_throughput(cfg, log, figures, step)}
    sizings, sets = section_sets(cfg, log, figures, step)
    result.update(sets)
    result.update(section_scaling(cfg, sizings, log, figures, step))
    return result, figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = group_parser(
        "micro",
        __doc__,
        "smaller sizes and 3 repeats (under ~30 s)",
        "repeats per measurement (default 5, 3 with --quick)",
    )
    args = parser.parse_args(argv)
    cfg = make_config(args.quick, args.repeats)
    began = time.perf_counter()

    log = print_line

    msgpack_version = ".".join(map(str, msgpack.version))
    log(
        f"crdtstore micro benchmark ({'quick' if cfg.quick else 'full'}): {cfg.repeats} repeats of ~{cfg.target_s:g} s "
        f"per figure; Python {platform.python_version()}, msgpack {msgpack_version}"
    )
    log("")
    result: dict[str, Any] = {
        "meta": {
            "mode": "quick" if cfg.quick else "full",
            "repeats": cfg.repeats,
            "target_seconds_per_repeat": cfg.target_s,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "msgpack": msgpack_version,
            "platform": platform.platform(),
        },
    }
    result.update(collect(cfg, log)[0])
    elapsed = time.perf_counter() - began
    result["meta"]["total_seconds"] = elapsed
    log("")
    log(f"total {elapsed:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
