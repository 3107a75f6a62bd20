"""Library peers: crdtstore's add-wins set beside npm ``delta-crdts`` and PyPI ``pycrdt`` on the same workloads.

Delta bytes of one add as the set grows, state bytes per element, and merge throughput of deltas and of a whole
state, each beside its runtime's raw decode. Run it from the repository root::

    python -m benchmarks.peers              # sets of up to 10,000 members, 5 repeats (about a minute)
    python -m benchmarks.peers --quick      # up to 1,000 members, 3 repeats (a few seconds)
    python -m benchmarks.peers --json bench-out/peers.json

How each library is driven, what is measured, the baselines, fairness and skips: ``benchmarks/METHODS.md``,
section "peers".
"""

from __future__ import annotations

import gc
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from benchmarks.common import group_parser, print_line
from benchmarks.figures import Baseline, Figure, Stats, stats_of, write_json
from benchmarks.micro import R_A, R_B, SET_KEY, member
from crdtstore.crdt import AWSet, Causal, CausalContext, KeyState, StoreMap, ValueType, decode_as, encode
from crdtstore.testing.npm import install_locked

__all__ = [
    "JS_DIR",
    "PEERS",
    "Config",
    "PeerRun",
    "RateRow",
    "SizeRow",
    "Skipped",
    "collect",
    "make_config",
    "run_crdtstore",
    "run_delta_crdts",
    "run_pycrdt",
]

GROUP = "peers"
CRDTSTORE, DELTA_CRDTS, PYCRDT = "crdtstore", "delta-crdts", "pycrdt"
PEERS = (CRDTSTORE, DELTA_CRDTS, PYCRDT)
SEC_DELTA = "Delta bytes of one add as the set grows"
SEC_STATE = "Encoded state bytes per element"
SEC_DELTA_MERGE = "Merge throughput: single-add deltas from another replica (decode + merge)"
SEC_STATE_MERGE = "Merge throughput: a whole remote state (decode + merge)"
STORE_VARIANT = "StoreMap delta, as the node logs and sends it"
INTENDED_VARIANT = "one-dot delta, what the mutator means to return"

JS_DIR = Path(__file__).resolve().parent / "peers_js"
NPM_TIMEOUT_S = 300.0
PYCRDT_ROOT = "set"
PYCRDT_CLIENT_A, PYCRDT_CLIENT_B, PYCRDT_CLIENT_RECEIVER = 1, 2, 3
MEMBER_PREFIX, MEMBER_DIGITS = "member-", 6  # member(i) of benchmarks.micro

Log = Callable[[str], None]
SetState = Causal[AWSet]
T = TypeVar("T")


def _quiet(_: str) -> None:
    pass


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed (imported from the checkout)"


# ---------------------------------------------------------------------------
# configuration and results
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    sizes: tuple[int, ...]  # set sizes at which the delta of an add and the state are counted
    probes: int  # adds counted at each size
    merge_deltas: tuple[int, ...]  # single-add deltas merged per run
    merge_states: tuple[int, ...]  # members of each side of a whole-state merge
    repeats: int
    min_seconds: float  # wall time of one repeat, at least
    build_by_adds_max: int  # delta-crdts: larger sets are made directly (checked against a build by adds)
    node_timeout_s: float

    def __post_init__(self) -> None:
        if not self.sizes or self.sizes[0] < 1 or self.probes < 1 or self.repeats < 1:
            raise ValueError("sizes, probes and repeats must be at least 1")
        # Each size is counted before its probe adds, which grow the set: the next size must lie beyond them.
        for small, large in itertools.pairwise(self.sizes):
            if large < small + self.probes:
                raise ValueError(f"set sizes {small} and {large} are closer than {self.probes} probe adds")


def make_config(quick: bool, repeats: int | None = None, smoke: bool = False) -> Config:
    if smoke:
        cfg = Config((1, 10, 100), 3, (50,), (100,), 1, 0.01, 10, 120.0)
    elif quick:
        cfg = Config((1, 10, 100, 1_000), 5, (300,), (1_000,), 3, 0.05, 100, 180.0)
    else:
        cfg = Config((1, 10, 100, 1_000, 10_000), 5, (1_000,), (1_000, 10_000), 5, 0.2, 1_000, 1_800.0)
    return cfg if repeats is None else replace(cfg, repeats=repeats)


@dataclass(frozen=True, slots=True)
class SizeRow:
    set_size: int
    delta_bytes: tuple[int, ...]  # one per probe add
    state_bytes: int  # the whole state at set_size members (0 where not counted)

    def as_json(self) -> dict[str, Any]:
        return {"set_size": self.set_size, "delta_bytes": list(self.delta_bytes), "state_bytes": self.state_bytes}


@dataclass(frozen=True, slots=True)
class RateRow:
    count: int  # deltas merged per run, or members of the remote state
    encoded_bytes: int  # bytes decoded per run
    rates: tuple[float, ...]  # one per repeat
    baselines: tuple[tuple[str, tuple[float, ...]], ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "encoded_bytes": self.encoded_bytes,
            "rates": list(self.rates),
            "baselines": [{"name": name, "rates": list(rates)} for name, rates in self.baselines],
        }


@dataclass
class PeerRun:
    implementation: str
    encoding: str
    mapping: str  # what a set add and a merge are in this implementation
    versions: dict[str, str]
    delta_sizes: list[SizeRow] = field(default_factory=list)
    delta_merges: list[RateRow] = field(default_factory=list)
    state_merges: list[RateRow] = field(default_factory=list)
    variants: dict[str, list[SizeRow]] = field(default_factory=dict)  # other deltas of the same adds
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "mapping": self.mapping,
            "versions": self.versions,
            "delta_sizes": [r.as_json() for r in self.delta_sizes],
            "delta_merges": [r.as_json() for r in self.delta_merges],
            "state_merges": [r.as_json() for r in self.state_merges],
            "variants": {label: [r.as_json() for r in rows] for label, rows in self.variants.items()},
            **self.extra,
        }


@dataclass(frozen=True, slots=True)
class Skipped:
    implementation: str
    reason: str


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


def _rates(prepare: Callable[[], T], run: Callable[[T], object], count: int, cfg: Config) -> tuple[float, ...]:
    """Operations per second of ``run(prepare())``, one figure per repeat; ``prepare`` is not timed."""
    run(prepare())  # warm-up
    out: list[float] = []
    clock = time.perf_counter
    for _ in range(cfg.repeats):
        gc.collect()
        elapsed, ops = 0.0, 0
        while True:
            made = prepare()
            began = clock()
            run(made)
            elapsed += clock() - began
            ops += count
            if elapsed >= cfg.min_seconds:
                break
        out.append(ops / elapsed)
    return tuple(out)


def _unpack_all(encoded: Sequence[bytes]) -> Callable[[object], object]:
    """The raw baseline: ``msgpack.unpackb`` of every one of ``encoded``, with the codec's options."""
    unpackb = msgpack.unpackb

    def run(_: object) -> None:
        for data in encoded:
            unpackb(data, raw=False, use_list=True, strict_map_key=True)

    return run


def _nothing() -> None:
    return None


def _unpack_baseline(what: str, encoded: Sequence[bytes], count: int, cfg: Config) -> tuple[str, tuple[float, ...]]:
    return what, _rates(_nothing, _unpack_all(encoded), count, cfg)


# ---------------------------------------------------------------------------
# crdtstore
# ---------------------------------------------------------------------------


def _empty() -> SetState:
    return Causal(AWSet(), CausalContext())


def _add(state: SetState, name: str, region: str) -> tuple[SetState, SetState]:
    """The state after adding ``name``, and the add's delta."""
    delta = state.store.add(name, state.next_dot(region))
    return state.join_delta(delta), delta


def _grown(region: str, start: int, n: int) -> SetState:
    """A set of members ``start .. start+n-1``, added one by one by ``region``."""
    state = _empty()
    for i in range(start, start + n):
        state, _ = _add(state, member(i), region)
    return state


def _store_delta(state: SetState, name: str, region: str) -> StoreMap:
    """The same add as the node makes it: a ``StoreMap`` delta naming key and slot."""
    entries = {SET_KEY: KeyState({ValueType.SET: state.store})} if state.store.entries else {}
    return StoreMap(entries, state.context).add_members(SET_KEY, [name], region)


def crdtstore_delta_bytes(n: int) -> list[bytes]:
    """Replica B's deltas of adding members 0 .. n-1 one by one, encoded."""
    state, out = _empty(), []
    for i in range(n):
        state, delta = _add(state, member(i), R_B)
        out.append(encode(delta))
    return out


def _crdtstore_delta_merges(cfg: Config, n: int) -> RateRow:
    encoded = crdtstore_delta_bytes(n)

    def merge(target: SetState) -> SetState:
        for data in encoded:
            target = target.join_delta(decode_as(data, Causal))
        return target

    _check_members(merge(_empty()).store.value(), range(n), CRDTSTORE)
    rates = _rates(_empty, merge, n, cfg)
    baseline = _unpack_baseline("msgpack.unpackb of the same bytes", encoded, n, cfg)
    return RateRow(n, sum(map(len, encoded)), rates, (baseline,))


def _crdtstore_state_merges(cfg: Config, n: int) -> RateRow:
    local, data = _grown(R_A, 0, n), encode(_grown(R_B, n, n))

    def the_local() -> SetState:
        return local  # states are immutable: every run may merge into the same one

    def merge(target: SetState) -> SetState:
        return target.join(decode_as(data, Causal))

    _check_members(merge(local).store.value(), range(2 * n), CRDTSTORE)
    rates = _rates(the_local, merge, n, cfg)
    baseline = _unpack_baseline("msgpack.unpackb of the same bytes", [data], n, cfg)
    return RateRow(n, len(data), rates, (baseline,))


def run_crdtstore(cfg: Config, log: Log = _quiet, step: Log = _quiet) -> PeerRun:
    run = PeerRun(
        CRDTSTORE,
        "crdtstore.crdt.codec: canonical msgpack, the encoding the node writes to LMDB and sends to peers "
        "(encode(Causal[AWSet]) for a delta or a state)",
        "AWSet.add(member, dot) gives a Causal[AWSet] delta; merged with Causal.join_delta (a whole state with "
        "Causal.join)",
        {"crdtstore": _version("crdtstore"), "msgpack": ".".join(map(str, msgpack.version))},
    )
    step(f"crdtstore: delta of an add at sizes up to {cfg.sizes[-1]:,}")
    state, count = _empty(), 0
    store_rows: list[SizeRow] = []
    for n in cfg.sizes:
        while count < n:
            state, _ = _add(state, member(count), R_A)
            count += 1
        state_bytes = len(encode(state))
        deltas, store_deltas = [], []
        for _ in range(cfg.probes):
            store_deltas.append(len(encode(_store_delta(state, member(count), R_A))))
            state, delta = _add(state, member(count), R_A)
            deltas.append(len(encode(delta)))
            count += 1
        run.delta_sizes.append(SizeRow(n, tuple(deltas), state_bytes))
        store_rows.append(SizeRow(n, tuple(store_deltas), 0))
    run.variants[STORE_VARIANT] = store_rows

    for n in cfg.merge_deltas:
        step(f"crdtstore: merging {n:,} single-add deltas")
        run.delta_merges.append(_crdtstore_delta_merges(cfg, n))
    for n in cfg.merge_states:
        step(f"crdtstore: merging a state of {n:,} into one of {n:,}")
        run.state_merges.append(_crdtstore_state_merges(cfg, n))
    log("crdtstore: done")
    return run


def _check_members(value: Iterable[str], indexes: range, who: str) -> None:
    got, want = set(value), {member(i) for i in indexes}
    if got != want:
        raise RuntimeError(f"{who}: a merge ended with {len(got):,} members, expected {len(want):,}")


# ---------------------------------------------------------------------------
# pycrdt
# ---------------------------------------------------------------------------


def _py_doc(client_id: int) -> Any:
    """A pycrdt document with its root Map made (pycrdt imported by the caller already)."""
    from pycrdt import Doc, Map

    doc: Any = Doc(client_id=client_id)
    doc.get(PYCRDT_ROOT, type=Map)
    return doc


def _py_map(doc: Any) -> Any:
    from pycrdt import Map

    return doc.get(PYCRDT_ROOT, type=Map)


def _py_grown(client_id: int, start: int, n: int) -> Any:
    """A document whose Map holds members ``start .. start+n-1``, set one by one."""
    doc = _py_doc(client_id)
    entries = _py_map(doc)
    for i in range(start, start + n):
        entries[member(i)] = True
    return doc


def _py_members(doc: Any) -> list[str]:
    return [str(key) for key in _py_map(doc)]


def _py_receiver() -> Any:
    return _py_doc(PYCRDT_CLIENT_RECEIVER)


def _py_apply_all(target: Any, updates: Sequence[bytes]) -> Any:
    for update in updates:
        target.apply_update(update)
    return target


def _yrs_decode(updates: Sequence[bytes], count: int, cfg: Config) -> tuple[float, ...]:
    """The second baseline: ``pycrdt.get_state`` of every update (Yrs decodes it; nothing is applied)."""
    from pycrdt import get_state

    def run(_: object) -> None:
        for update in updates:
            get_state(update)

    return _rates(_nothing, run, count, cfg)


def _pycrdt_sizes(cfg: Config, run: PeerRun) -> None:
    doc = _py_doc(PYCRDT_CLIENT_A)
    entries, count = _py_map(doc), 0
    for n in cfg.sizes:
        while count < n:
            entries[member(count)] = True
            count += 1
        state_bytes = len(doc.get_update())
        deltas = []
        for _ in range(cfg.probes):
            before = doc.get_state()
            entries[member(count)] = True
            deltas.append(len(doc.get_update(before)))
            count += 1
        run.delta_sizes.append(SizeRow(n, tuple(deltas), state_bytes))


def _pycrdt_delta_merges(cfg: Config, n: int) -> RateRow:
    source = _py_doc(PYCRDT_CLIENT_B)
    entries, updates = _py_map(source), []
    for i in range(n):
        before = source.get_state()
        entries[member(i)] = True
        updates.append(bytes(source.get_update(before)))
    _check_members(_py_members(_py_apply_all(_py_receiver(), updates)), range(n), PYCRDT)
    rates = _rates(_py_receiver, partial(_py_apply_all, updates=updates), n, cfg)
    baselines = (
        _unpack_baseline("msgpack.unpackb of crdtstore's bytes of the same deltas", crdtstore_delta_bytes(n), n, cfg),
        ("pycrdt.get_state of the same bytes (Yrs decodes, applies nothing)", _yrs_decode(updates, n, cfg)),
    )
    return RateRow(n, sum(map(len, updates)), rates, baselines)


def _pycrdt_state_merges(cfg: Config, n: int) -> RateRow:
    local = bytes(_py_grown(PYCRDT_CLIENT_A, 0, n).get_update())
    remote = bytes(_py_grown(PYCRDT_CLIENT_B, n, n).get_update())

    def copy_of_local() -> Any:
        return _py_apply_all(_py_receiver(), [local])

    merge = partial(_py_apply_all, updates=[remote])
    _check_members(_py_members(merge(copy_of_local())), range(2 * n), PYCRDT)
    rates = _rates(copy_of_local, merge, n, cfg)
    crdtstore_state = [encode(_grown(R_B, n, n))]
    baselines = (
        _unpack_baseline("msgpack.unpackb of crdtstore's bytes of the same state", crdtstore_state, n, cfg),
        ("pycrdt.get_state of the same bytes (Yrs decodes, applies nothing)", _yrs_decode([remote], n, cfg)),
    )
    return RateRow(n, len(remote), rates, baselines)


def run_pycrdt(cfg: Config, log: Log = _quiet, step: Log = _quiet) -> PeerRun | Skipped:
    try:
        import pycrdt  # noqa: F401  (whether it imports is the question)
    except ImportError as exc:
        return Skipped(PYCRDT, f"pycrdt is not importable ({exc}); install it with pip install -e '.[bench]'")
    version = _version("pycrdt")
    run = PeerRun(
        PYCRDT,
        "Yjs update format v1 (lib0 variable-length integers): a delta is Doc.get_update(state_vector) with the "
        "state vector taken just before the add; a state is Doc.get_update()",
        f"no OR-set in pycrdt: a set add is map[member] = True on a root Map {PYCRDT_ROOT!r} (the closest analogue: "
        "one key per member, membership is the key's presence); merged with Doc.apply_update",
        {"pycrdt": version},
    )
    step(f"pycrdt: delta of an add at sizes up to {cfg.sizes[-1]:,}")
    _pycrdt_sizes(cfg, run)
    for n in cfg.merge_deltas:
        step(f"pycrdt: merging {n:,} single-add deltas")
        run.delta_merges.append(_pycrdt_delta_merges(cfg, n))
    for n in cfg.merge_states:
        step(f"pycrdt: merging a state of {n:,} into one of {n:,}")
        run.state_merges.append(_pycrdt_state_merges(cfg, n))
    log(f"pycrdt {version}: done")
    return run


# ---------------------------------------------------------------------------
# delta-crdts, through Node.js
# ---------------------------------------------------------------------------


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:])


def _install(js_dir: Path, npm: str | None, log: Log) -> str | None:
    """Install the locked packages with ``npm ci`` unless they are there; the reason it could not, or None."""
    return install_locked(js_dir, npm, lambda message: log(f"delta-crdts: {message}"), NPM_TIMEOUT_S)


def _node_request(cfg: Config) -> dict[str, Any]:
    return {
        "sizes": list(cfg.sizes),
        "probes": cfg.probes,
        "merge_deltas": list(cfg.merge_deltas),
        "merge_states": list(cfg.merge_states),
        "repeats": cfg.repeats,
        "min_seconds": cfg.min_seconds,
        "build_by_adds_max": cfg.build_by_adds_max,
        "member_prefix": MEMBER_PREFIX,
        "member_digits": MEMBER_DIGITS,
        "replica_a": R_A,
        "replica_b": R_B,
    }


def _rate_row(raw: dict[str, Any]) -> RateRow:
    baselines = tuple((str(b["name"]), tuple(float(r) for r in b["rates"])) for b in raw["baselines"])
    return RateRow(int(raw["count"]), int(raw["bytes"]), tuple(float(r) for r in raw["rates"]), baselines)


def _from_node(raw: dict[str, Any]) -> PeerRun:
    if raw.get("first_member") != member(0):
        raise RuntimeError(f"the Node driver names members {raw.get('first_member')!r}..., not {member(0)!r}...")
    versions = {str(k): str(v) for k, v in raw["versions"].items()}
    run = PeerRun(
        DELTA_CRDTS,
        f"delta-crdts-msgpack-codec {versions['delta-crdts-msgpack-codec']} (msgpack5 {versions['msgpack5']}, "
        "extension types 0x40 = Map, 0x41 = Set), the codec delta-crdts depends on: codec.encode of what the "
        "mutator returns, or of replica.state()",
        f"{raw['type']}: replica.add(member) returns the delta; merged with replica.apply(codec.decode(bytes))",
        versions,
    )
    for row in raw["delta_sizes"]:
        run.delta_sizes.append(
            SizeRow(int(row["set_size"]), tuple(map(int, row["delta_bytes"])), int(row["state_bytes"]))
        )
    run.variants[INTENDED_VARIANT] = [
        SizeRow(int(row["set_size"]), (int(row["intended_delta_bytes"]),), 0) for row in raw["delta_sizes"]
    ]
    run.delta_merges = [_rate_row(row) for row in raw["delta_merges"]]
    run.state_merges = [_rate_row(row) for row in raw["state_merges"]]
    run.extra = {
        "sets_made_directly": list(raw["constructed_sizes"]),
        "direct_build_checked_against_adds_at": raw["construction_checked_at"] or None,
        "gc_between_repeats": bool(raw["gc_between_repeats"]),
    }
    return run


def run_delta_crdts(
    cfg: Config,
    log: Log = _quiet,
    step: Log = _quiet,
    *,
    search_path: str | None = None,
    js_dir: Path = JS_DIR,
) -> PeerRun | Skipped:
    """Run ``peers.js`` under ``node`` (found on ``search_path``, default PATH), installing its packages first.

    A missing ``node`` or ``npm``, or a failed ``npm ci``, is a skip; a failure of
    the driver itself is an error.
    """
    node, npm = shutil.which("node", path=search_path), shutil.which("npm", path=search_path)
    if node is None:
        return Skipped(DELTA_CRDTS, "node (Node.js) not found on PATH")
    step("delta-crdts: checking benchmarks/peers_js/node_modules")
    reason = _install(js_dir, npm, log)
    if reason is not None:
        return Skipped(DELTA_CRDTS, reason)
    step(f"delta-crdts: sizes up to {cfg.sizes[-1]:,}, merges, in node")
    command = [node, "--expose-gc", str(js_dir / "peers.js")]
    try:
        done = subprocess.run(
            command,
            cwd=js_dir,
            input=json.dumps(_node_request(cfg)),
            capture_output=True,
            text=True,
            timeout=cfg.node_timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the delta-crdts driver did not finish in {cfg.node_timeout_s:.0f} s") from exc
    if done.returncode != 0:
        raise RuntimeError(f"the delta-crdts driver failed (exit {done.returncode}): {_tail(done.stderr, 12)}")
    run = _from_node(json.loads(done.stdout))
    log(f"delta-crdts: done under node {run.versions.get('node')}")
    return run


# ---------------------------------------------------------------------------
# figures and the text report
# ---------------------------------------------------------------------------


def _member_bytes(n: int) -> float:
    """The members' own msgpack bytes per element, for members 0 .. n-1."""
    return sum(len(msgpack.packb(member(i), use_bin_type=True)) for i in range(n)) / n


def _count(value: float, unit: str) -> Stats:
    return Stats(value, value, value, unit)


def figures_of(run: PeerRun) -> list[Figure]:
    impl = run.implementation
    out: list[Figure] = []
    payload = Baseline("the member's own msgpack bytes", _count(_member_bytes(1), "bytes"), 1)
    variants = [("", run.delta_sizes), *run.variants.items()]
    for label, rows in variants:
        who = f"{impl} ({label})" if label else impl
        for row in rows:
            out.append(
                Figure(
                    GROUP,
                    SEC_DELTA,
                    f"{who}: delta of one add, set of {row.set_size:,}",
                    stats_of(row.delta_bytes, "bytes"),
                    len(row.delta_bytes),
                    (payload,),
                    better="lower",
                    params={"implementation": impl, "variant": label, "set_size": row.set_size, "kind": "delta"},
                )
            )
    for row in run.delta_sizes:
        n = row.set_size
        out.append(
            Figure(
                GROUP,
                SEC_STATE,
                f"{impl}: encoded state per element, set of {n:,}",
                _count(row.state_bytes / n, "bytes/element"),
                1,
                (Baseline("the members' own msgpack bytes per element", _count(_member_bytes(n), "bytes/element"), 1),),
                better="lower",
                params={"implementation": impl, "set_size": n, "kind": "state", "state_bytes": row.state_bytes},
            )
        )
    for section, rate_rows, unit, kind, what in (
        (SEC_DELTA_MERGE, run.delta_merges, "deltas/s", "delta_merge", "{n:,} single-add deltas into an empty replica"),
        (SEC_STATE_MERGE, run.state_merges, "elements/s", "state_merge", "a state of {n:,} into a replica of {n:,}"),
    ):
        for rate in rate_rows:
            out.append(
                Figure(
                    GROUP,
                    section,
                    f"{impl}: {what.format(n=rate.count)}",
                    stats_of(rate.rates, unit),
                    len(rate.rates),
                    tuple(Baseline(name, stats_of(values, unit), len(values)) for name, values in rate.baselines),
                    better="higher",
                    params={
                        "implementation": impl,
                        "count": rate.count,
                        "kind": kind,
                        "encoded_bytes": rate.encoded_bytes,
                    },
                    note=f"{rate.encoded_bytes:,} B decoded per run",
                )
            )
    return out


def _median(values: Sequence[float]) -> float:
    return stats_of(values, "").median


def text_report(runs: Sequence[PeerRun], skipped: Sequence[Skipped]) -> list[str]:
    lines: list[str] = []
    columns: list[tuple[str, dict[int, SizeRow]]] = []
    for run in runs:
        columns.append((run.implementation, {r.set_size: r for r in run.delta_sizes}))
        for label, rows in run.variants.items():
            short = "StoreMap" if label == STORE_VARIANT else "one dot" if label == INTENDED_VARIANT else label
            columns.append((f"{run.implementation} ({short})", {r.set_size: r for r in rows}))
    sizes = sorted({n for _, rows in columns for n in rows})
    width = max([len(name) for name, _ in columns] + [10])

    def table(title: str, value: Callable[[SizeRow], str], only_main: bool) -> None:
        shown = [(name, rows) for name, rows in columns if not only_main or "(" not in name]
        lines.append(title)
        lines.append(f"{'set size':>10}  " + "  ".join(f"{name:>{width}}" for name, _ in shown))
        for n in sizes:
            cells = [value(rows[n]) if n in rows else "-" for _, rows in shown]
            lines.append(f"{n:>10,}  " + "  ".join(f"{cell:>{width}}" for cell in cells))
        lines.append("")

    table(
        "Delta bytes of one add (median over the adds at that size):", lambda r: f"{_median(r.delta_bytes):,.0f}", False
    )
    table("Encoded state, bytes per element:", lambda r: f"{r.state_bytes / r.set_size:,.2f}", True)
    for title, attr, unit in (
        ("Merging single-add deltas from another replica (decode + merge):", "delta_merges", "deltas/s"),
        (
            "Merging a whole remote state into a replica of the same size (decode + merge):",
            "state_merges",
            "elements/s",
        ),
    ):
        lines.append(title)
        for run in runs:
            for row in getattr(run, attr):
                rate = _median(row.rates)
                text = f"  {run.implementation:<12} N={row.count:<7,} {rate:>12,.0f} {unit}"
                for name, values in row.baselines:
                    text += f"; {name}: {_median(values):,.0f} (ratio {rate / _median(values):.3g})"
                lines.append(text)
        lines.append("")
    lines.append("Encodings:")
    lines += [f"  {run.implementation}: {run.encoding}" for run in runs]
    lines.append("What a set add is:")
    lines += [f"  {run.implementation}: {run.mapping}" for run in runs]
    for skip in skipped:
        lines.append(f"SKIPPED {skip.implementation}: {skip.reason}")
    return lines


def report_notes(runs: Sequence[PeerRun], skipped: Sequence[Skipped]) -> list[str]:
    """Lines for REPORT.md beside the tables: each peer's encoding and mapping, the caveats, the skips."""
    notes = [f"{run.implementation}: encoding {run.encoding}. Set add: {run.mapping}." for run in runs]
    if any(run.implementation == DELTA_CRDTS for run in runs):
        notes.append(
            "delta-crdts 0.10.3's aworset add returns the whole state, not a delta (its mutator calls "
            "s.join(removeValue, add), the instance join, which folds the state in): its delta rows are what the "
            f"library returns; the rows '{INTENDED_VARIANT}' give the size of a one-dot delta in the same codec."
        )
    notes.append(
        "Runtimes differ (crdtstore pure Python with msgpack's C reader; pycrdt's merge in Rust; delta-crdts on "
        "V8): compare each ratio to its own runtime's raw decode before comparing rates across runtimes. crdtstore "
        "validates hostile input while decoding; the others' decoders check syntax only."
    )
    notes += [f"SKIPPED {s.implementation}: {s.reason}" for s in skipped]
    return notes


def collect(cfg: Config, log: Log, step: Log = _quiet) -> tuple[dict[str, Any], list[Figure]]:
    outcomes: list[PeerRun | Skipped] = [
        run_crdtstore(cfg, log, step),
        run_delta_crdts(cfg, log, step),
        run_pycrdt(cfg, log, step),
    ]
    runs = [o for o in outcomes if isinstance(o, PeerRun)]
    skipped = [o for o in outcomes if isinstance(o, Skipped)]
    for skip in skipped:
        log(f"{skip.implementation}: SKIPPED: {skip.reason}")
    figures = [f for run in runs for f in figures_of(run)]
    order = {section: i for i, section in enumerate((SEC_DELTA, SEC_STATE, SEC_DELTA_MERGE, SEC_STATE_MERGE))}
    figures.sort(key=lambda f: (order[f.section], f.params.get("set_size", f.params.get("count", 0))))
    log("")
    for line in text_report(runs, skipped):
        log(line)
    detail = {
        "config": asdict(cfg),
        "members": f"{member(0)}, {member(1)}, ... in that order",
        "replicas": {
            "a": R_A,
            "b": R_B,
            "pycrdt_client_ids": [PYCRDT_CLIENT_A, PYCRDT_CLIENT_B, PYCRDT_CLIENT_RECEIVER],
        },
        "peers": {run.implementation: run.as_json() for run in runs},
        "skipped": {s.implementation: s.reason for s in skipped},
        "report_notes": report_notes(runs, skipped),
    }
    return detail, figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = group_parser(
        "peers",
        __doc__,
        "sets of up to 1,000 members, 3 repeats",
        "repeats per measurement (default 5, 3 with --quick)",
    )
    args = parser.parse_args(argv)

    log = print_line

    began = time.perf_counter()
    detail, figures = collect(make_config(args.quick, args.repeats), log)
    log(f"{len(figures)} figures in {time.perf_counter() - began:.1f} s")
    if args.json is not None:
        write_json(args.json, {"figures": [f.as_json() for f in figures], "detail": detail})
    return 0


if __name__ == "__main__":
    sys.exit(main())
