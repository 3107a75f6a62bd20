"""Crash safety: kill -9 a real node while clients write; every acknowledged write must survive.

Each cycle starts a few writer threads that send a mix of writes, each with an
idempotency key of its own:

* a register write to a key written only once, with a unique value,
* an increment (of 1 to 5) to one of a few counters shared by every writer and cycle,
* an add of a unique member to a set of the cycle,
* a batch of all three, which must land whole or not at all.

Every attempt is recorded before it is sent and every acknowledgement after it
arrives. Once the node has acknowledged a write of the cycle, and then after a
random 50-300 ms more, it is killed with SIGKILL; writers stop at their first
error (or at a per-cycle cap on requests). The node is started again on the same
directory and port, and:

* every acknowledged write is there; nothing that was never attempted is;
* a counter lies between its acknowledged and its attempted total;
* a batch whose outcome is unknown is all there or all missing;
* each write of unknown outcome is then sent again with its idempotency key:
  it must be answered ``replayed`` exactly when it had landed, after which
  every value is exact (counters equal to the attempted total).

After every kill (on the directory the restart recovers from) and after the
final clean stop, the audit trail must account for it all: the node's chain
verifies up to the head it noted beside the data, its records' events tile
its version vector (no change without its record, no record without its
change), every acknowledged write has exactly one ``write`` record naming
its keys, every register a record says was written holds the value whose
digest the record carries, and the counters and sets hold what the records'
amounts add up to.

At the end a clean stop (SIGTERM, exit 0) and start must show all of it, and
replays of acknowledged writes must still be answered from the idempotency
records, not applied again.

The default run (the README's ``pytest``) makes 3 cycles; the run marked
``slow`` (``pytest -m slow``, which ``.ci/run`` runs) makes
``CRDTSTORE_CRASH_CYCLES`` of them (default 100; a long run:
``CRDTSTORE_CRASH_CYCLES=1000 pytest -m slow tests/test_crash.py``).
``CRDTSTORE_CRASH_SEED`` replays a run: the seed is in every failure message.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crdtstore.audit.record import AuditRecord, check_chain, decode, parse_record_key
from crdtstore.client import Client, ClientError
from crdtstore.crdt import VersionVector
from crdtstore.operations import AddMembers, Increment, Operation, SetRegister
from crdtstore.storage import LmdbStore, StorageConfig
from crdtstore.testing.process import ServerProcess

# ServerProcess.start() leaks its handle on the server's log file; see
# test_node_e2e.test_server_process_leaves_no_file_open. Only that warning is ignored.
pytestmark = [
    pytest.mark.processes,
    pytest.mark.filterwarnings("ignore:unclosed file <_io.TextIOWrapper name='[^']*[.]log' mode='a':ResourceWarning"),
]

SHORT_CYCLES = 3
CYCLES = int(os.environ.get("CRDTSTORE_CRASH_CYCLES", "100"))
SEED = int(os.environ.get("CRDTSTORE_CRASH_SEED") or random.SystemRandom().randrange(2**32))
WRITERS = 4
WRITES_PER_WRITER_MAX = 2_000  # per cycle: a bound on requests however fast the node is
WRITE_WINDOW_S = (0.05, 0.3)  # how much longer the writers write, after a first acknowledgement, before the kill
JOIN_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 5.0
COUNTERS = ("ctr/0", "ctr/1", "ctr/2")
PAGE = 1000


@dataclass(frozen=True)
class Attempt:
    """One request: its operations, its idempotency key, and what it writes."""

    ops: tuple[Operation, ...]
    idempotency_key: bytes
    register: tuple[str, bytes] | None = None
    counter: tuple[str, int] | None = None
    member: tuple[str, str] | None = None


@dataclass
class Ledger:
    """What the writers attempted and what was acknowledged; shared by the writer threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    registers_attempted: dict[str, bytes] = field(default_factory=dict)
    registers_acked: dict[str, bytes] = field(default_factory=dict)
    counters_attempted: Counter[str] = field(default_factory=Counter)
    counters_acked: Counter[str] = field(default_factory=Counter)
    members_attempted: dict[str, set[str]] = field(default_factory=dict)
    members_acked: dict[str, set[str]] = field(default_factory=dict)
    acked: list[Attempt] = field(default_factory=list)
    attempts: dict[bytes, Attempt] = field(default_factory=dict)  # by idempotency key
    unknown: list[Attempt] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def attempting(self, attempt: Attempt) -> None:
        with self.lock:
            self.attempts[attempt.idempotency_key] = attempt
            if attempt.register:
                key, value = attempt.register
                assert key not in self.registers_attempted
                self.registers_attempted[key] = value
            if attempt.counter:
                self.counters_attempted[attempt.counter[0]] += attempt.counter[1]
            if attempt.member:
                self.members_attempted.setdefault(attempt.member[0], set()).add(attempt.member[1])

    def acknowledged(self, attempt: Attempt) -> None:
        with self.lock:
            self.acked.append(attempt)
            if attempt.register:
                self.registers_acked[attempt.register[0]] = attempt.register[1]
            if attempt.counter:
                self.counters_acked[attempt.counter[0]] += attempt.counter[1]
            if attempt.member:
                self.members_acked.setdefault(attempt.member[0], set()).add(attempt.member[1])

    def outcome_unknown(self, attempt: Attempt, unexpected: str | None) -> None:
        with self.lock:
            self.unknown.append(attempt)
            if unexpected is not None:
                self.unexpected.append(unexpected)


def register_prefix(cycle: int) -> str:
    return f"reg/{cycle:05d}/"


def set_prefix(cycle: int) -> str:
    return f"set/{cycle:05d}/"


def make_attempt(rng: random.Random, cycle: int, writer: int, i: int) -> Attempt:
    idem = f"crash/{SEED}/{cycle}/{writer}/{i}".encode()
    register = (f"{register_prefix(cycle)}{writer}/{i:05d}", f"value {SEED}.{cycle}.{writer}.{i}".encode())
    counter = (rng.choice(COUNTERS), rng.randint(1, 5))
    member = (f"{set_prefix(cycle)}{writer % 2}", f"m.{writer}.{i}")
    kind = rng.choice(("register", "counter", "member", "batch"))
    if kind == "register":
        return Attempt((SetRegister(*register),), idem, register=register)
    if kind == "counter":
        return Attempt((Increment(*counter),), idem, counter=counter)
    if kind == "member":
        return Attempt((AddMembers(member[0], (member[1],)),), idem, member=member)
    ops = (SetRegister(*register), Increment(*counter), AddMembers(member[0], (member[1],)))
    return Attempt(ops, idem, register=register, counter=counter, member=member)


def write_until_stopped(
    addr: str, cycle: int, writer: int, ledger: Ledger, *, stop: threading.Event, killing: threading.Event
) -> None:
    rng = random.Random(f"{SEED}/{cycle}/{writer}")
    try:
        # No retries: a write that fails is of unknown outcome, and the writer stops there.
        with Client(addr, timeout_s=RPC_TIMEOUT_S, retries_max=0) as kv:
            for i in range(WRITES_PER_WRITER_MAX):
                if stop.is_set():
                    return
                attempt = make_attempt(rng, cycle, writer, i)
                ledger.attempting(attempt)
                try:
                    result = kv.mutate(attempt.ops, idempotency_key=attempt.idempotency_key)
                except ClientError as exc:
                    # Before the kill, no write may fail.
                    where = f"writer {writer}, write {i}: {exc.code.name} {exc.message}"
                    ledger.outcome_unknown(attempt, None if killing.is_set() else where)
                    return
                if result.replayed:
                    ledger.outcome_unknown(attempt, f"writer {writer}, write {i}: a fresh key answered as a replay")
                    return
                ledger.acknowledged(attempt)
    except Exception as exc:  # anything else is a bug; report it from the main thread
        with ledger.lock:
            ledger.unexpected.append(f"writer {writer} crashed: {exc!r}")


# -- reading the node back -------------------------------------------------------------------


def registers_under(kv: Client, prefix: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for entry in kv.scan(prefix, page_size=PAGE):
        assert entry.type == "register" and isinstance(entry.value, bytes), entry
        out[entry.key] = entry.value
    return out


def sets_under(kv: Client, prefix: str) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for entry in kv.scan(prefix, page_size=PAGE):
        assert entry.type == "set" and isinstance(entry.value, frozenset), entry
        out[entry.key] = entry.value
    return out


def counter_value(kv: Client, key: str) -> int:
    entry = kv.get(key)
    if entry.type is None:
        return 0
    assert entry.type == "counter" and isinstance(entry.value, int), entry
    return entry.value


def check_after_crash(kv: Client, ledger: Ledger, cycle: int, why: str) -> tuple[dict[str, bytes], set[str]]:
    """Acknowledged writes present, nothing unattempted present; returns what landed of this cycle."""
    registers = registers_under(kv, register_prefix(cycle))
    for key, value in ledger.registers_acked.items():
        if key.startswith(register_prefix(cycle)):
            assert registers.get(key) == value, f"{why}: acknowledged register {key} lost"
    for key, value in registers.items():
        assert ledger.registers_attempted.get(key) == value, f"{why}: register {key}={value!r} was never written"

    for key in COUNTERS:
        total = counter_value(kv, key)
        acked, attempted = ledger.counters_acked[key], ledger.counters_attempted[key]
        assert acked <= total <= attempted, f"{why}: counter {key} is {total}, acked {acked}, attempted {attempted}"

    sets = sets_under(kv, set_prefix(cycle))
    landed_members: set[str] = set()
    for key, attempted_members in ledger.members_attempted.items():
        if not key.startswith(set_prefix(cycle)):
            continue
        members = sets.get(key, frozenset())
        lost = ledger.members_acked.get(key, set()) - members
        assert not lost, f"{why}: acknowledged members {sorted(lost)[:5]} of {key} lost"
        phantom = members - attempted_members
        assert not phantom, f"{why}: members {sorted(phantom)[:5]} of {key} were never added"
        landed_members |= {f"{key}\x00{m}" for m in members}
    assert set(sets) <= set(ledger.members_attempted), f"{why}: a set nobody wrote"
    return registers, landed_members


def check_exact(kv: Client, ledger: Ledger, cycles: range, why: str) -> None:
    """Once every outcome is known: the node holds exactly what was written."""
    for cycle in cycles:
        expected_registers = {k: v for k, v in ledger.registers_acked.items() if k.startswith(register_prefix(cycle))}
        assert registers_under(kv, register_prefix(cycle)) == expected_registers, f"{why}: registers of {cycle}"
        expected_sets = {k: frozenset(v) for k, v in ledger.members_acked.items() if k.startswith(set_prefix(cycle))}
        assert sets_under(kv, set_prefix(cycle)) == expected_sets, f"{why}: sets of cycle {cycle}"
    for key in COUNTERS:
        assert counter_value(kv, key) == ledger.counters_acked[key], f"{why}: counter {key}"


def resolve_unknown(kv: Client, ledger: Ledger, landed: tuple[dict[str, bytes], set[str]], why: str) -> int:
    """Send each write of unknown outcome again with its idempotency key; it is answered from the record if it landed.

    Every unknown write of a cycle writes something only it writes (a register
    or a member) unless it is a bare increment, so "did it land" is known for
    all but those, whose sum the exact check afterwards covers. Returns how
    many had landed (were answered ``replayed``).
    """
    registers, members = landed
    replayed = 0
    for attempt in ledger.unknown:
        was_there: bool | None = None
        if attempt.register:
            was_there = attempt.register[0] in registers
        if attempt.member:
            member_there = f"{attempt.member[0]}\x00{attempt.member[1]}" in members
            assert was_there is None or was_there == member_there, f"{why}: batch {attempt.ops} landed in part"
            was_there = member_there
        result = kv.mutate(attempt.ops, idempotency_key=attempt.idempotency_key)
        if was_there is not None:
            assert result.replayed == was_there, (
                f"{why}: {attempt.ops} {'landed' if was_there else 'did not land'} before the crash, "
                f"but its retry says replayed={result.replayed}"
            )
        replayed += result.replayed
        ledger.acknowledged(attempt)
    ledger.unknown.clear()
    return replayed


def check_feed_tiles_the_vector(server: ServerProcess, why: str) -> None:
    """The change feed's index, written in each change's transaction, survived every kill -9 with it.

    Its records' dot ranges, per origin, tile 1..vector exactly: every committed
    change has its record, and no record outlived a change that was not committed.
    """
    store = LmdbStore(StorageConfig(server.data_dir, server.region))
    try:
        assert store.feed_floor() == VersionVector(), why  # a new directory: the index holds everything
        records = store.feed_read(0, 10**9, 10**9).records
        ranges: dict[str, list[tuple[int, int]]] = {}
        for record in records:
            ranges.setdefault(record.origin, []).append((record.first, record.last))
        vector = store.context.vv
        assert set(ranges) == set(vector.regions()), why
        for origin, spans in ranges.items():
            expected_first = 1
            for first, last in spans:
                assert first == expected_first and last >= first, f"{why}: feed records of {origin} at {first}..{last}"
                expected_first = last + 1
            assert expected_first - 1 == vector.get(origin), f"{why}: feed of {origin} ends before the vector"
    finally:
        store.close()


def check_audit_trail(server: ServerProcess, ledger: Ledger, why: str) -> None:
    """The audit trail of a stopped (or killed) node accounts for exactly the writes its directory holds."""
    store = LmdbStore(StorageConfig(server.data_dir, server.region))
    try:
        vector = store.context.vv
        records: list[AuditRecord] = []
        for origin, held in vector.items():
            raws = [(parse_record_key(key)[1], raw) for key, raw in store.iter_audit(origin)]
            anchor = store.audit_chain_head(origin) if origin == store.origin else None
            report = check_chain(origin, raws, floor=store.audit_floor(origin), anchor=anchor)
            assert report.ok, f"{why}: the chain of {origin} does not verify: {report.findings[:3]}"
            chain = [decode(raw) for _, raw in raws]
            # Every event of the origin is in exactly one record: a change and its record commit together.
            assert chain and chain[0].first == 1, f"{why}: the records of {origin} do not start at its first event"
            assert chain[-1].last == held, f"{why}: {origin}'s events run to {held}, its records to {chain[-1].last}"
            records += chain
        assert set(store.audit_origins()) <= set(vector.regions()), f"{why}: records of an origin with no events"
        by_key: dict[bytes, list[AuditRecord]] = {}
        for record in records:
            assert record.idempotency_key in ledger.attempts, f"{why}: a record of a request nobody made: {record}"
            by_key.setdefault(record.idempotency_key, []).append(record)
        acked = {a.idempotency_key for a in ledger.acked}
        counters: Counter[str] = Counter()
        members: Counter[str] = Counter()
        for idem, attempt in ledger.attempts.items():
            writes = [r for r in by_key.get(idem, []) if r.kind == "write"]
            assert len(writes) <= 1, f"{why}: {len(writes)} write records of {idem!r}"
            if idem in acked:
                assert writes, f"{why}: acknowledged write {idem!r} has no record"
            if not writes:
                continue
            named = {(op.key, op.kind): op for op in writes[0].operations}
            if attempt.register:
                key, value = attempt.register
                op = named.get((key, "set"))
                assert op is not None and op.value_sha256 == hashlib.sha256(value).digest(), f"{why}: {writes[0]}"
                # The record committed with its change: the register holds the value the record hashed.
                state = store.get(key)
                held_value = state.read() if state is not None else None
                assert held_value is not None and held_value.value == value, f"{why}: {key} has a record, no value"
            if attempt.counter:
                key, amount = attempt.counter
                assert named.get((key, "incr")) == (key, "incr", amount, b""), f"{why}: {writes[0]}"
                counters[key] += amount
            if attempt.member:
                key, _ = attempt.member
                assert named.get((key, "add")) == (key, "add", 1, b""), f"{why}: {writes[0]}"
                members[key] += 1
        for key in COUNTERS:
            state = store.get(key)
            total = state.read() if state is not None else None
            assert (total.value if total is not None else 0) == counters[key], f"{why}: counter {key} vs its records"
        for key, added in members.items():
            state = store.get(key)
            held_set = state.read() if state is not None else None
            members_held = held_set.value if held_set is not None else frozenset()
            assert isinstance(members_held, frozenset) and len(members_held) == added, (
                f"{why}: set {key} vs its records"
            )
    finally:
        store.close()


# -- the test --------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", region="crash")
    try:
        yield proc
    finally:
        proc.kill()


def test_acknowledged_writes_survive_kill_9(server: ServerProcess) -> None:
    crash_cycles(server, SHORT_CYCLES)


@pytest.mark.slow
def test_acknowledged_writes_survive_many_kill_9_cycles(server: ServerProcess) -> None:
    crash_cycles(server, CYCLES)


def wait_for_an_ack(ledger: Ledger, before: int, why: str) -> None:
    """Wait until a write is acknowledged past the first ``before``: the kill then lands while writes go on."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S  # only so that the test ends if the node never answers
    while len(ledger.acked) <= before:
        assert not ledger.unexpected, f"{why}: {ledger.unexpected}"
        assert time.monotonic() < deadline, f"{why}: no write acknowledged in {JOIN_TIMEOUT_S} s"
        time.sleep(0.001)


def crash_cycles(server: ServerProcess, cycles: int) -> None:
    assert cycles >= 1
    rng = random.Random(SEED)
    ledger = Ledger()
    server.start()
    unknown_total = unknown_landed = 0

    for cycle in range(cycles):
        why = f"seed {SEED}, cycle {cycle} (CRDTSTORE_CRASH_SEED={SEED} replays this run)"
        stop, killing = threading.Event(), threading.Event()
        writers = [
            threading.Thread(
                target=write_until_stopped,
                args=(server.addr, cycle, w, ledger),
                kwargs={"stop": stop, "killing": killing},
                name=f"crash-writer-{w}",
                daemon=True,
            )
            for w in range(WRITERS)
        ]
        acked_before = len(ledger.acked)
        for thread in writers:
            thread.start()
        try:
            wait_for_an_ack(ledger, acked_before, why)
            time.sleep(rng.uniform(*WRITE_WINDOW_S))
            killing.set()
            server.kill()
        finally:
            stop.set()
            for thread in writers:
                thread.join(timeout=JOIN_TIMEOUT_S)
        assert not any(t.is_alive() for t in writers), f"{why}: a writer did not stop"
        assert ledger.unexpected == [], f"{why}: {ledger.unexpected}"
        check_audit_trail(server, ledger, why)  # the directory the restart recovers from

        server.start()
        with Client(server.addr, timeout_s=RPC_TIMEOUT_S) as kv:
            landed = check_after_crash(kv, ledger, cycle, why)
            unknown_total += len(ledger.unknown)
            unknown_landed += resolve_unknown(kv, ledger, landed, why)
            check_exact(kv, ledger, range(cycle, cycle + 1), why)

    assert ledger.acked, "no write was acknowledged in any cycle"
    why = f"seed {SEED}, after a clean restart"
    assert server.stop() == 0
    server.start()
    with Client(server.addr, timeout_s=RPC_TIMEOUT_S) as kv:
        check_exact(kv, ledger, range(cycles), why)
        assert registers_under(kv, "reg/") == ledger.registers_acked, why
        status = kv.status()
        counters = sum(1 for key in COUNTERS if ledger.counters_acked[key])
        expected_keys = len(ledger.registers_acked) + counters + len(ledger.members_acked)
        assert status["keys"] == expected_keys, why
        # The idempotency records survived every crash and the clean restart too.
        for attempt in random.Random(SEED).sample(ledger.acked, min(50, len(ledger.acked))):
            assert kv.mutate(attempt.ops, idempotency_key=attempt.idempotency_key).replayed, why
        check_exact(kv, ledger, range(cycles), why)
    assert server.stop() == 0
    check_feed_tiles_the_vector(server, why)
    check_audit_trail(server, ledger, why)
    print(
        f"crash test: seed {SEED}, {cycles} cycles, {len(ledger.acked)} writes, "
        f"{unknown_total} of unknown outcome ({unknown_landed} of them had landed)"
    )
