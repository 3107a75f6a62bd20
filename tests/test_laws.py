"""Join laws for every type and for the whole store, on reachable states.

A state-based CRDT converges because its join is a least upper bound: it is
commutative, associative and idempotent, bottom is its identity, and every
mutation moves a state up. Delta-state CRDTs add one more law: joining the
deltas gives the same state as joining the states, whatever was lost on the
way, as long as a state join repairs it later.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import AWSet, StoreMap
from crdtstore.testing.strategies import TYPES, map_executions, type_executions

KINDS = [*TYPES, "map"]


def _executions(kind: str) -> st.SearchStrategy[Any]:
    if kind == "map":
        return map_executions()
    return type_executions(TYPES[kind])


def _bottom(kind: str) -> Any:
    if kind == "map":
        return StoreMap()
    return TYPES[kind].empty()


def _join_all(states: list[Any], start: Any) -> Any:
    return functools.reduce(lambda acc, s: acc.join(s), states, start)


@st.composite
def _three(draw: st.DrawFn, kind: str) -> tuple[Any, Any, Any]:
    ex = draw(_executions(kind))
    pick = st.sampled_from(ex.snapshots)
    return draw(pick), draw(pick), draw(pick)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_is_commutative(kind: str, data: st.DataObject) -> None:
    a, b, _ = data.draw(_three(kind))
    assert a.join(b) == b.join(a)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_is_associative(kind: str, data: st.DataObject) -> None:
    a, b, c = data.draw(_three(kind))
    assert a.join(b).join(c) == a.join(b.join(c))


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_is_idempotent(kind: str, data: st.DataObject) -> None:
    a, _, _ = data.draw(_three(kind))
    assert a.join(a) == a


def _leq(a: Any, b: Any) -> bool:
    """The lattice order: a is below b when joining a adds nothing to b."""
    return bool(a.join(b) == b)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_is_an_upper_bound(kind: str, data: st.DataObject) -> None:
    a, b, _ = data.draw(_three(kind))
    joined = a.join(b)
    assert _leq(a, joined)
    assert _leq(b, joined)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_is_the_least_upper_bound(kind: str, data: st.DataObject) -> None:
    """Any state above both a and b is above a ⊔ b (here: above = a later snapshot's join)."""
    ex = data.draw(_executions(kind))
    pick = st.sampled_from(ex.snapshots)
    a, b = data.draw(pick), data.draw(pick)
    extra = data.draw(st.lists(pick, max_size=3))
    upper = _join_all([b, *extra], a)
    assert _leq(a, upper)
    assert _leq(b, upper)
    assert _leq(a.join(b), upper)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_bottom_is_the_identity(kind: str, data: st.DataObject) -> None:
    a, _, _ = data.draw(_three(kind))
    bottom = _bottom(kind)
    assert a.join(bottom) == a
    assert bottom.join(a) == a


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_a_mutation_inflates_the_state(kind: str, data: st.DataObject) -> None:
    ex = data.draw(_executions(kind))
    for before, delta, after in ex.steps:
        assert before.join(delta) == after
        assert before.join(after) == after, "the state before is below the state after"
        assert after != before, "every mutation is an event, so the state strictly grows"
        assert after.context.dominates(before.context)
        assert not before.context.dominates(after.context)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_joining_deltas_equals_joining_states(kind: str, data: st.DataObject) -> None:
    ex = data.draw(_executions(kind))
    everything = _join_all(ex.snapshots, _bottom(kind))
    # Any order, with duplicates: a replica that was sent every delta.
    order = data.draw(st.permutations(ex.deltas + ex.deltas[: len(ex.deltas) // 2]))
    assert _join_all(order, _bottom(kind)) == everything


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_lost_deltas_are_repaired_by_a_state_join(kind: str, data: st.DataObject) -> None:
    ex = data.draw(_executions(kind))
    everything = _join_all(ex.snapshots, _bottom(kind))
    received = data.draw(st.lists(st.sampled_from(ex.deltas), max_size=len(ex.deltas))) if ex.deltas else []
    partial = _join_all(received, _bottom(kind))
    assert partial.join(everything) == everything
    assert everything.join(partial) == everything


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_delta_visits_only_what_the_delta_names_and_equals_join(kind: str, data: st.DataObject) -> None:
    ex = data.draw(_executions(kind))
    for delta in ex.deltas:
        state = data.draw(st.sampled_from(ex.snapshots))
        assert state.join_delta(delta) == state.join(delta)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_states_never_hold_empty_entries(kind: str, data: st.DataObject) -> None:
    """Deltas name what they touch with empty entries; joins never leave them in a state."""
    ex = data.draw(_executions(kind))
    for state in ex.snapshots:
        if kind != "map":
            slots = [state.store]
        else:
            slots = []
            for key_state in state.entries.values():
                assert key_state.slots, "an empty key is dropped"
                assert all(not slot.is_bottom() for slot in key_state.slots.values()), "an empty slot is dropped"
                slots.extend(key_state.slots.values())
        for slot in slots:
            if isinstance(slot, AWSet):
                assert all(slot.entries.values()), "a member without dots is dropped"


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_a_delta_is_not_changed_by_being_joined(kind: str, data: st.DataObject) -> None:
    """A delta handed to the log must not change when the state absorbs it."""
    from crdtstore.crdt import encode

    ex = data.draw(_executions(kind))
    for before, delta, _ in ex.steps:
        snapshot = encode(delta)
        before.join(delta)
        delta.join(before)
        assert encode(delta) == snapshot


@given(data=st.data())
def test_a_combined_batch_of_deltas_applies_like_its_parts(data: st.DataObject) -> None:
    """What the node logs for a batch: the combine of its operations' deltas."""
    ex = data.draw(map_executions())
    if not ex.deltas:
        return
    start = data.draw(st.integers(0, len(ex.deltas) - 1))
    batch = ex.deltas[start : start + data.draw(st.integers(1, 4))]
    combined = functools.reduce(lambda a, d: a.combine(d), batch)
    for state in data.draw(st.lists(st.sampled_from(ex.snapshots), min_size=1, max_size=3)):
        assert state.join_delta(combined) == _join_all(batch, state)
        assert state.join(combined) == _join_all(batch, state)
