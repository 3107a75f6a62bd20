"""Named semantic cases: what each type promises, scenario by scenario."""

from __future__ import annotations

import pytest

from crdtstore.crdt import INT64_MAX, INT64_MIN, Counter, Register, StoreMap, Timestamp, TypeMismatch, ValueType
from crdtstore.testing.cluster import LocalCluster

# -- set -------------------------------------------------------------------------


def test_add_wins_over_a_concurrent_remove() -> None:
    c = LocalCluster()
    c.add("eu", "s", "x")
    c.sync_all()
    c.remove("eu", "s", "x")
    c.add("us", "s", "x")  # concurrent with the remove
    c.sync_all()
    assert c.converged()
    assert c.value("ap", "s") == frozenset({"x"})


def test_remove_of_a_member_never_seen_is_a_no_op() -> None:
    c = LocalCluster()
    c.add("eu", "s", "x")
    c.remove("us", "s", "x")  # "us" never saw x
    c.remove("eu", "s", "y")  # nobody ever added y
    c.sync_all()
    assert c.value("us", "s") == frozenset({"x"})


def test_remove_after_observing_removes_everywhere() -> None:
    c = LocalCluster()
    c.add("eu", "s", "x", "y")
    c.sync_all()
    c.remove("us", "s", "x")
    c.sync_all()
    assert c.value("eu", "s") == frozenset({"y"})
    assert c.converged()


def test_delete_then_concurrent_add_keeps_the_add() -> None:
    c = LocalCluster()
    c.add("eu", "s", "old")
    c.sync_all()
    c.delete("eu", "s")
    c.add("us", "s", "new")  # concurrent with the delete
    c.sync_all()
    assert c.value("eu", "s") == frozenset({"new"}), "only what the delete saw is gone"
    assert c.converged()


def test_no_resurrection_once_a_delete_has_reached_every_replica() -> None:
    c = LocalCluster()
    adds = [c.add("eu", "s", "x"), c.add("us", "s", "y"), c.incr("ap", "n", 3), c.write("us", "r", b"v")]
    c.sync_all()
    deletes = [c.delete("ap", "s"), c.delete("eu", "n"), c.delete("eu", "r")]
    c.sync_all()
    # Old deltas arriving late, twice, in any order, bring nothing back.
    for delta in reversed(adds + adds):
        c.deliver(delta, *c.regions)
    for region in c.regions:
        assert c.read(region, "s") is None
        assert c.read(region, "n") is None
        assert c.read(region, "r") is None
        assert c.states[region].entries == {}, "nothing is kept per deleted key"
    # And a state that never saw the delete cannot bring it back either.
    stale = StoreMap().join_delta(adds[0])
    assert c.states["eu"].join(stale).get("s") is None
    assert deletes  # the deletes are deltas like any other


# -- counter -----------------------------------------------------------------------


def test_counter_is_exact_under_duplicated_and_reordered_delivery() -> None:
    c = LocalCluster()
    deltas = [c.incr("eu", "n", 5), c.incr("eu", "n", -2), c.incr("us", "n", 10), c.incr("eu", "n", 1)]
    for delta in deltas + list(reversed(deltas)) + deltas:
        c.deliver(delta, "ap")
    assert c.value("ap", "n") == 14
    c.sync_all()
    assert c.value("eu", "n") == 14
    assert c.converged()


def test_counter_takes_any_64_bit_amount_exactly() -> None:
    c = LocalCluster()
    for _ in range(3):
        c.incr("eu", "n", INT64_MAX)
        c.incr("us", "n", INT64_MIN)
    c.sync_all()
    assert c.value("ap", "n") == 3 * (INT64_MAX + INT64_MIN)
    with pytest.raises(ValueError, match="64-bit"):
        c.incr("eu", "n", INT64_MAX + 1)


def test_counter_keeps_one_entry_per_region() -> None:
    c = LocalCluster()
    for _ in range(50):
        c.incr("eu", "n")
        c.incr("us", "n", -1)
    c.sync_all()
    state = c.states["ap"].entries["n"].slots[ValueType.COUNTER]
    assert isinstance(state, Counter)
    assert len(state.entries) == 2


def test_counter_delete_with_a_concurrent_increment_keeps_that_regions_share() -> None:
    """The documented causal-counter semantics (see crdtstore/crdt/counter.py)."""
    c = LocalCluster()
    c.incr("eu", "n", 5)
    c.incr("us", "n", 7)
    c.sync_all()
    c.delete("ap", "n")
    c.incr("eu", "n", 1)  # concurrent with the delete
    c.sync_all()
    assert c.value("us", "n") == 6  # eu's running share survives; us's share is gone
    assert c.converged()
    c.delete("us", "n")
    c.sync_all()
    assert c.read("eu", "n") is None


# -- register ------------------------------------------------------------------------


def test_register_siblings_are_visible_and_the_winner_is_the_same_everywhere() -> None:
    c = LocalCluster()
    c.clocks["eu"].set(5_000)
    c.clocks["us"].set(5_000)  # equal wall clocks: the region breaks the tie
    c.write("eu", "r", b"from-eu")
    c.write("us", "r", b"from-us")
    c.write("ap", "r", b"from-ap")
    c.sync_all()
    reads = [c.read(r, "r") for r in c.regions]
    assert all(kv == reads[0] for kv in reads)
    kv = reads[0]
    assert kv is not None
    assert {s.value for s in kv.siblings} == {b"from-eu", b"from-us", b"from-ap"}
    assert kv.value == b"from-us", "highest (timestamp, region) wins: us > eu at 5000 ms"
    # A write that has seen the siblings collapses them.
    c.write("ap", "r", b"resolved")
    c.sync_all()
    kv = c.read("eu", "r")
    assert kv is not None
    assert kv.value == b"resolved"
    assert kv.siblings == ()


def test_causal_overwrite_wins_against_a_higher_wall_clock() -> None:
    c = LocalCluster()
    c.clocks["eu"].set(1_000_000)  # eu's clock is far ahead
    c.clocks["us"].set(1_000)
    first = c.write("eu", "r", b"first")
    # us has a clock far behind and a max offset that refuses eu's timestamp,
    # yet its write has seen eu's, so it overwrites it.
    c.hlcs["us"] = type(c.hlcs["us"])(c.clocks["us"], max_offset_ms=10)
    c.deliver(first, "us")
    second = c.write("us", "r", b"second")
    written = second.entries["r"].slots[ValueType.REGISTER]
    assert isinstance(written, Register)
    assert written.winner() is not None
    assert written.winner().timestamp < first.entries["r"].slots[ValueType.REGISTER].winner().timestamp  # type: ignore[union-attr]
    c.sync_all()
    assert c.value("eu", "r") == b"second"
    assert c.value("ap", "r") == b"second"


# -- the map: types, conflicts, deletes -------------------------------------------------


def test_wrong_type_operation_is_refused_and_changes_nothing() -> None:
    c = LocalCluster()
    c.write("eu", "k", b"v")
    before = c.states["eu"]
    with pytest.raises(TypeMismatch, match="holds a register"):
        c.incr("eu", "k")
    with pytest.raises(TypeMismatch, match="holds a register"):
        c.add("eu", "k", "x")
    with pytest.raises(TypeMismatch, match="holds a register"):
        c.remove("eu", "k", "x")
    assert c.states["eu"] == before


def test_concurrent_creation_with_different_types_keeps_both_and_agrees() -> None:
    c = LocalCluster()
    c.add("eu", "k", "x")
    c.incr("us", "k", 4)
    c.write("ap", "k", b"v")
    c.sync_all()
    assert c.converged()
    kv = c.read("eu", "k")
    assert kv is not None
    assert kv.type is ValueType.REGISTER, "register, counter, set: the fixed read precedence"
    assert kv.value == b"v"
    assert kv.conflicts == ((ValueType.COUNTER, 4), (ValueType.SET, frozenset({"x"})))
    # Operations of the visible type are accepted, others refused.
    c.write("us", "k", b"w")
    with pytest.raises(TypeMismatch):
        c.add("us", "k", "y")
    c.sync_all()
    # Deleting the key resolves the conflict; the key can then take any type.
    c.delete("ap", "k")
    c.sync_all()
    assert c.read("eu", "k") is None
    c.add("eu", "k", "z")
    c.sync_all()
    kv = c.read("us", "k")
    assert kv is not None
    assert (kv.type, kv.value, kv.conflicts) == (ValueType.SET, frozenset({"z"}), ())


def test_delete_is_an_observed_remove_across_types() -> None:
    c = LocalCluster()
    c.write("eu", "r", b"seen")
    c.sync_all()
    c.delete("eu", "r")
    c.write("us", "r", b"concurrent")
    c.sync_all()
    assert c.value("ap", "r") == b"concurrent"


def test_empty_member_list_and_bad_arguments_are_refused() -> None:
    s = StoreMap()
    with pytest.raises(ValueError, match="at least one member"):
        s.add_members("k", [], "eu")
    with pytest.raises(TypeError):
        s.add_members("k", [b"bytes"], "eu")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        s.write_register("k", "not bytes", Timestamp(1, 0), "eu")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.increment("k", 1.5, "eu")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.delete(b"k", "eu")  # type: ignore[arg-type]
