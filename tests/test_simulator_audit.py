"""The simulator's audit checker: a run's trails pass it, and stores that lose, forge or skip records are caught."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from crdtstore.audit.record import is_audit_key
from crdtstore.crdt import CausalContext, StoreMap
from crdtstore.storage import LmdbStore, LogEntry
from crdtstore.storage.audit import AuditTrail
from simulations.checkers import check
from simulations.history import AuditRead, FeedRead, FinalRead, Op
from simulations.sim import Scenario, SimResult, Simulation


def simulate(tmp_path: Path, scenario: Scenario) -> SimResult:
    return Simulation(scenario, tmp_path / f"seed-{scenario.seed}-{scenario.faults}").run()


def audits(result: SimResult) -> list[AuditRead]:
    return [r for r in result.history if isinstance(r, AuditRead)]


def audit_kinds(found: dict[str, int]) -> int:
    return sum(n for kind, n in found.items() if kind.startswith("audit-"))


def test_every_region_holds_a_record_of_every_request_and_the_checker_passes(tmp_path: Path) -> None:
    # Not vacuous: the run retries requests (replayed by idempotency key) and refuses some (a type mismatch).
    kinds: Counter[str] = Counter()
    for seed in (1, 3):
        result = simulate(tmp_path, Scenario(seed, regions=3, ops=200, faults="crash,network"))
        verdict = check(result.history)
        assert verdict.ok, (seed, verdict.violations[:5], result.scenario.command())
        trails = audits(result)
        assert [a.region for a in trails] == ["ra", "rb", "rc"]
        assert all(a.records == trails[0].records for a in trails)
        kinds.update(record[3] for record in trails[0].records)
        ops = [r for r in result.history if isinstance(r, Op)]
        assert verdict.counts["audit_records"] == sum(len(op.audit) for op in ops)
    assert kinds["write"] and kinds["replay"] and kinds["refused"], kinds


def test_the_system_keyspace_is_not_among_the_keys_the_other_checkers_judge(tmp_path: Path) -> None:
    result = simulate(tmp_path, Scenario(2, regions=3, ops=100, faults="none"))
    for record in result.history:
        if isinstance(record, FinalRead | FeedRead):
            assert not any(key.startswith("\x00") for key in record.keys), record.region
    assert audits(result)[0].records


def test_a_writer_that_skips_records_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = AuditTrail._put_record
    calls = itertools.count()

    def forgetful(self: AuditTrail, txn: Any, chain: list[object], sealed: Any) -> None:
        if next(calls) % 9 == 8:
            chain[:] = [sealed.dot.region, sealed.seq, sealed.digest]  # the chain moves on; the record is not written
            return
        real(self, txn, chain, sealed)

    monkeypatch.setattr(AuditTrail, "_put_record", forgetful)
    found = check(simulate(tmp_path, Scenario(5, regions=3, ops=60, faults="none")).history).by_kind()
    assert found.get("audit-chain", 0) > 0, found
    assert found.get("audit-missing", 0) > 0, found


def test_a_replica_that_drops_the_records_it_receives_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = LmdbStore._apply_entry

    def without_records(self: LmdbStore, records: Any, allocate: Any, entry: LogEntry, context: CausalContext) -> None:
        delta = StoreMap({k: s for k, s in entry.delta.entries.items() if not is_audit_key(k)}, entry.delta.context)
        real(self, records, allocate, entry._replace(delta=delta, encoded=b""), context)

    monkeypatch.setattr(LmdbStore, "_apply_entry", without_records)
    found = check(simulate(tmp_path, Scenario(6, regions=3, ops=40, faults="none")).history).by_kind()
    assert found.get("audit-chain", 0) > 0, found
    assert found.get("audit-missing", 0) + found.get("audit-diverged", 0) > 0, found


def test_a_record_nobody_asked_for_and_a_record_of_the_wrong_kind_are_caught(tmp_path: Path) -> None:
    result = simulate(tmp_path, Scenario(4, regions=3, ops=150, faults="none"))
    assert check(result.history).ok
    history = list(result.history)
    trails = audits(result)
    forged = ["ra#000000000000", 1, 1, "write", "c9-99999", [["r/1", "set", 0]], ""]
    history += [replace(a, records=[*a.records, forged]) for a in trails]
    history = [r for r in history if not (isinstance(r, AuditRead) and r in trails)]
    assert check(history).by_kind().get("audit-unexpected", 0) > 0
    # A write answered as a refusal: the record's kind is not what its writer answered.
    flipped = [[*rec[:3], "refused", *rec[4:]] if i == 0 else rec for i, rec in enumerate(trails[0].records)]
    history = [r for r in result.history if not isinstance(r, AuditRead)] + [
        replace(a, records=flipped) for a in trails
    ]
    found = check(history).by_kind()
    assert found.get("audit-mismatch", 0) + found.get("audit-missing", 0) > 0, found


def test_a_request_built_to_be_refused_that_applies_is_caught(tmp_path: Path) -> None:
    result = simulate(tmp_path, Scenario(1, regions=3, ops=300, faults="none"))
    bad = [r for r in result.history if isinstance(r, Op) and r.f == "bad"]
    assert bad and all(op.outcome == "fail" and op.token is None for op in bad)
    applied = replace(bad[0], outcome="ok", token={"ra": 1})
    history = [applied if r is bad[0] else r for r in result.history]
    assert check(history).by_kind().get("audit-refusal", 0) == 1


# Seeds where a state transfer's last page overtook its first (the network reorders) and was taken for the
# continuation of the transfer before: the join dropped every key the page lacked, audit records among them.
_LATE_PAGE_SEEDS = (14,)


@pytest.mark.slow
def test_regression_a_late_transfer_page_never_finishes_another_transfer(tmp_path: Path) -> None:
    """The simulator's form of ``test_driver``'s regression test of the same name (which the default run runs)."""
    for seed in _LATE_PAGE_SEEDS:
        result = simulate(tmp_path, Scenario(seed, regions=5, ops=500, faults="all"))
        verdict = check(result.history)
        assert audit_kinds(verdict.by_kind()) == 0, (seed, verdict.violations[:5])
        assert result.converged_after_ms is not None, seed


# Seeds where the simulator's change-feed consumer (KV.Watch's rule: feed_start, feed_read, must_restart,
# pass_record) ended holding a key every region deleted, with auditing on (none of the same 200 seeds with it off).
# In each, the consumer read a region's state-transfer record (origin "") from a token ahead of that region's vector
# before the transfer: the record names the keys the transfer changed there, not a key the region never held but the
# consumer did, and the token then covered the delete's event, which was never delivered. The fix: such a stream
# starts again from a snapshot (``crdtstore.storage.feed.must_restart``; a unit test in test_feed.py). Which seeds
# showed it moved with the records' sizes: 2 and 6 as this test was written, 108 and 162 on the merged tree.
_FEED_SEEDS = (2, 6, 108, 162)


@pytest.mark.slow
def test_regression_a_watch_that_passes_a_state_transfer_misses_no_delete(tmp_path: Path) -> None:
    found: Counter[str] = Counter()
    for seed in _FEED_SEEDS:
        found.update(check(simulate(tmp_path, Scenario(seed, regions=5, ops=500, faults="all")).history).by_kind())
    assert found["feed-diverged"] == 0, found
