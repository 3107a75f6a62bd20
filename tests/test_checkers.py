"""The checkers catch what they are for: each known-bad history is reported, each good one passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.checkers import check
from simulations.history import FinalRead, KeyRead, Meta, Nemesis, Op, Record, Sibling, read_jsonl, write_jsonl

REGIONS = ["ra", "rb"]


class History:
    """Builds a history: operations with tokens that a region's counter gives out in order."""

    def __init__(self, **detail: object) -> None:
        self.records: list[Record] = [Meta("test", REGIONS, detail=dict(detail))]
        self.vectors: dict[str, dict[str, int]] = {r: {} for r in REGIONS}
        self.next_id = 0

    def op(
        self,
        region: str,
        f: str,
        key: str,
        value: str | int | list[str] | None,
        outcome: str = "ok",
        *,
        seen: list[Op] = (),  # type: ignore[assignment]
        applied: bool = False,
    ) -> Op:
        """An operation at ``region`` that had seen everything ``region`` wrote and the ops in ``seen``."""
        vector = self.vectors[region]
        for other in seen:
            assert other.token is not None
            for r, n in other.token.items():
                vector[r] = max(vector.get(r, 0), n)
        token = None
        if outcome == "ok" or applied:
            vector[region] = vector.get(region, 0) + 1
            token = dict(vector)
        self.next_id += 1
        at = 10 * self.next_id  # invoked at this time, completed 5 ms later
        op = Op(self.next_id, 0, region, f, key, value, outcome, at, at + 5, token)
        self.records.append(op)
        return op

    def final(self, keys: dict[str, KeyRead], *, regions: list[str] = REGIONS) -> list[Record]:
        return [*self.records, *(FinalRead(r, keys) for r in regions)]


def register(*values: str) -> KeyRead:
    return KeyRead("register", values[0], [Sibling(v, "ra", [0, 0]) for v in values])


def kinds(records: list[Record]) -> dict[str, int]:
    return check(records).by_kind()


# -- sets (Jepsen's set checker) ------------------------------------------------------------


def test_a_good_set_history_passes() -> None:
    h = History()
    a = h.op("ra", "sadd", "s", ["x"])
    h.op("rb", "sadd", "s", ["y"])
    h.op("ra", "srem", "s", ["x"], seen=[a])
    result = check(h.final({"s": KeyRead("set", ["y"])}))
    assert result.ok, result.violations


def test_a_lost_acknowledged_add_is_caught() -> None:
    h = History()
    h.op("ra", "sadd", "s", ["x"])
    h.op("rb", "sadd", "s", ["y"])
    assert kinds(h.final({"s": KeyRead("set", ["y"])})) == {"lost": 1}


def test_a_resurrected_element_is_caught() -> None:
    h = History()
    add = h.op("ra", "sadd", "s", ["x"])
    h.op("rb", "srem", "s", ["x"], seen=[add])
    assert kinds(h.final({"s": KeyRead("set", ["x"])})) == {"resurrected": 1}


def test_a_remove_that_had_not_seen_the_add_leaves_it_add_wins() -> None:
    h = History()
    h.op("ra", "sadd", "s", ["x"])
    h.op("rb", "srem", "s", ["x"])  # concurrent: rb had not seen the add
    assert check(h.final({"s": KeyRead("set", ["x"])})).ok
    assert kinds(h.final({"s": KeyRead("set", [])})) == {"lost": 1}


def test_an_element_nobody_added_is_unexpected() -> None:
    h = History()
    h.op("ra", "sadd", "s", ["x"])
    h.op("ra", "sadd", "s", ["y"], outcome="fail")
    assert kinds(h.final({"s": KeyRead("set", ["x", "y", "z"])})) == {"unexpected": 2}


def test_an_add_with_an_unknown_outcome_may_or_may_not_be_there() -> None:
    h = History()
    h.op("ra", "sadd", "s", ["x"], outcome="unknown")
    present = check(h.final({"s": KeyRead("set", ["x"])}))
    assert present.ok and present.counts["recovered"] == 1
    assert check(h.final({})).ok


def test_a_remove_with_an_unknown_outcome_excuses_a_missing_element() -> None:
    h = History()
    h.op("ra", "sadd", "s", ["x"])
    h.op("ra", "srem", "s", ["x"], outcome="unknown")
    assert check(h.final({})).ok


def test_a_delete_that_saw_the_add_removes_it_and_one_that_did_not_does_not() -> None:
    h = History()
    add = h.op("ra", "sadd", "s", ["x"])
    h.op("rb", "del", "s", None, seen=[add])
    assert check(h.final({})).ok
    assert kinds(h.final({"s": KeyRead("set", ["x"])})) == {"resurrected": 1}


# -- counters --------------------------------------------------------------------------------


def test_a_counter_off_by_one_is_caught() -> None:
    h = History()
    h.op("ra", "incr", "c", 5)
    h.op("rb", "incr", "c", -2)
    assert check(h.final({"c": KeyRead("counter", 3)})).ok
    assert kinds(h.final({"c": KeyRead("counter", 4)})) == {"counter": 1}
    assert kinds(h.final({"c": KeyRead("counter", 2)})) == {"counter": 1}


def test_unknown_increments_widen_the_range_by_their_sign() -> None:
    h = History()
    h.op("ra", "incr", "c", 5)
    h.op("ra", "incr", "c", 2, outcome="unknown")
    h.op("rb", "incr", "c", -1, outcome="unknown")
    for value in (4, 5, 6, 7):
        assert check(h.final({"c": KeyRead("counter", value)})).ok, value
    assert kinds(h.final({"c": KeyRead("counter", 8)})) == {"counter": 1}
    assert kinds(h.final({"c": KeyRead("counter", 3)})) == {"counter": 1}


def test_a_failed_increment_must_not_count() -> None:
    h = History()
    h.op("ra", "incr", "c", 1)
    h.op("ra", "incr", "c", 1, outcome="fail")
    assert kinds(h.final({"c": KeyRead("counter", 2)})) == {"counter": 1}


# -- registers -------------------------------------------------------------------------------


def test_an_overwritten_value_that_survives_is_resurrected() -> None:
    h = History()
    first = h.op("ra", "set", "r", "v1")
    h.op("rb", "set", "r", "v2", seen=[first])
    assert check(h.final({"r": register("v2")})).ok
    assert kinds(h.final({"r": register("v1")})) == {"resurrected": 1, "lost": 1}


def test_concurrent_writes_both_survive_and_dropping_one_is_a_loss() -> None:
    h = History()
    h.op("ra", "set", "r", "v1")
    h.op("rb", "set", "r", "v2")
    assert check(h.final({"r": register("v2", "v1")})).ok
    assert kinds(h.final({"r": register("v2")})) == {"lost": 1}


def test_a_winner_that_is_not_the_latest_timestamp_is_caught() -> None:
    h = History()
    h.op("ra", "set", "r", "v1")
    h.op("rb", "set", "r", "v2")
    read = KeyRead("register", "v1", [Sibling("v1", "ra", [5, 0]), Sibling("v2", "rb", [9, 0])])
    assert kinds(h.final({"r": read})) == {"winner": 1}


def test_a_value_nobody_wrote_is_unexpected() -> None:
    h = History()
    h.op("ra", "set", "r", "v1")
    assert kinds(h.final({"r": register("v1", "v9")})) == {"unexpected": 1}


def test_a_region_whose_clock_ran_backwards_is_caught() -> None:
    h = History()
    a = h.op("ra", "set", "r", "v1")
    b = h.op("ra", "set", "r", "v2")
    a.ts, b.ts = [100, 0], [100, 0]
    assert kinds(h.final({"r": register("v2")})) == {"clock": 1}
    b.ts = [99, 7]
    assert kinds(h.final({"r": register("v2")})) == {"clock": 1}
    b.ts = [100, 1]
    assert check(h.final({"r": register("v2")})).ok


# -- replicas --------------------------------------------------------------------------------


def test_a_diverged_replica_is_caught() -> None:
    h = History()
    h.op("ra", "sadd", "s", ["x"])
    records = [*h.records, FinalRead("ra", {"s": KeyRead("set", ["x"])}), FinalRead("rb", {})]
    found = kinds(records)
    assert found["diverged"] == 1
    assert found["lost"] == 1  # rb's view, judged on its own, lost the add


def test_differing_state_digests_are_divergence_even_when_reads_agree() -> None:
    records: list[Record] = [Meta("test", REGIONS), FinalRead("ra", {}, "aa"), FinalRead("rb", {}, "bb")]
    assert kinds(records) == {"diverged": 1}


def test_a_region_without_a_final_read_is_reported() -> None:
    h = History()
    assert kinds(h.final({}, regions=["ra"])) == {"missing-final": 1}


def test_a_key_that_reads_as_a_type_nobody_wrote_is_caught() -> None:
    h = History()
    h.op("ra", "incr", "c", 1)
    assert kinds(h.final({"c": KeyRead("set", ["x"])})) == {"type": 1}


# -- the history format ----------------------------------------------------------------------


def test_a_history_survives_json_lines(tmp_path: Path) -> None:
    h = History()
    h.op("ra", "sadd", "s", ["x"])
    h.records.append(Nemesis(5, "partition", ["ra", "rb"], "halves"))
    records = h.final({"s": KeyRead("set", ["x"]), "r": register("v")})
    write_jsonl(tmp_path / "h.jsonl", records)
    assert list(read_jsonl(tmp_path / "h.jsonl")) == records


def test_a_malformed_history_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"kind": "meta", "source": "x", "regions": []}\n{"kind": "op", "id": 1}\n')
    with pytest.raises(ValueError, match=r"h\.jsonl:2"):
        list(read_jsonl(path))


def test_an_acknowledged_op_without_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="no causal token"):
        Op(1, 0, "ra", "set", "r", "v", "ok", 0)


# -- what the runner vouches for --------------------------------------------------------------


def test_an_unknown_remove_long_finished_before_the_add_excuses_nothing_when_operations_do_not_linger() -> None:
    h = History(linger_ms=100)
    h.op("ra", "srem", "s", ["x"], outcome="unknown")  # gave up at 15 ms
    for _ in range(20):
        h.op("rb", "incr", "c", 1)  # time passes: the add below is invoked at 230 ms
    h.op("rb", "sadd", "s", ["x"])
    found = kinds(h.final({"c": KeyRead("counter", 20)}))
    assert found == {"lost": 1}
    unbounded = History()
    unbounded.records = [Meta("test", REGIONS), *h.records[1:]]
    assert check(unbounded.final({"c": KeyRead("counter", 20)})).ok  # without the bound it might have


def test_an_unknown_delete_excuses_only_adds_it_could_have_seen() -> None:
    h = History(linger_ms=0)
    early = h.op("ra", "sadd", "s", ["x"])
    h.op("ra", "del", "s", None, outcome="unknown", seen=[early])
    for _ in range(3):
        h.op("rb", "sadd", "s", [f"later{_}"])
    assert kinds(h.final({})) == {"lost": 3}  # x may be gone; the later adds may not


def test_with_ground_truth_an_unknown_write_that_applied_is_judged_like_an_acknowledged_one() -> None:
    h = History(ground_truth=True)
    add = h.op("ra", "sadd", "s", ["x"], outcome="unknown", applied=True)
    h.op("rb", "srem", "s", ["x"], seen=[add])
    assert kinds(h.final({"s": KeyRead("set", ["x"])})) == {"resurrected": 1}
    h2 = History(ground_truth=True)
    h2.op("ra", "sadd", "s", ["x"], outcome="unknown", applied=True)
    assert kinds(h2.final({})) == {"lost": 1}


def test_with_ground_truth_an_unknown_write_that_never_applied_must_not_appear() -> None:
    h = History(ground_truth=True)
    h.op("ra", "sadd", "s", ["x"], outcome="unknown")
    h.op("ra", "incr", "c", 4, outcome="unknown")
    assert kinds(h.final({"s": KeyRead("set", ["x"]), "c": KeyRead("counter", 4)})) == {"unexpected": 1, "counter": 1}
    assert check(h.final({})).ok
