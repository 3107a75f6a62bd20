"""Batch application: the fast key-by-key path equals applying the operations one by one."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import HybridLogicalClock, StoreMap, TypeMismatch
from crdtstore.operations import (
    AddMembers,
    DeleteKey,
    Increment,
    InvalidRequest,
    Limits,
    Operation,
    RemoveMembers,
    SetRegister,
    apply_operations,
    validate,
)
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.strategies import amounts, map_executions, members, values

keys = st.sampled_from(["a", "b", "c"])
some_members = st.lists(members, min_size=1, max_size=3).map(tuple)
operations = st.one_of(
    st.builds(SetRegister, keys, values),
    st.builds(Increment, keys, amounts),
    st.builds(AddMembers, keys, some_members),
    st.builds(RemoveMembers, keys, some_members),
    st.builds(DeleteKey, keys),
)


def _one_by_one(window: StoreMap, ops: list[Operation], clock: HybridLogicalClock) -> tuple[StoreMap, StoreMap]:
    steps: list[StoreMap] = []
    for op in ops:
        if isinstance(op, SetRegister):
            step = window.write_register(op.key, op.value, clock.now(), "zz")
        elif isinstance(op, Increment):
            step = window.increment(op.key, op.amount, "zz")
        elif isinstance(op, AddMembers):
            step = window.add_members(op.key, op.members, "zz")
        elif isinstance(op, RemoveMembers):
            step = window.remove_members(op.key, op.members, "zz")
        else:
            step = window.delete(op.key, "zz")
        window = window.join_delta(step)
        steps.append(step)
    return window, functools.reduce(lambda a, b: a.combine(b), steps)


@given(data=st.data(), ops=st.lists(operations, min_size=1, max_size=12))
def test_batch_application_equals_one_by_one(data: st.DataObject, ops: list[Operation]) -> None:
    ex = data.draw(map_executions())
    start = data.draw(st.sampled_from(ex.snapshots))
    try:
        expected_after, expected_delta = _one_by_one(start, ops, HybridLogicalClock(FakeClock(5)))
    except TypeMismatch:
        with pytest.raises(TypeMismatch):
            apply_operations(start, ops, "zz", HybridLogicalClock(FakeClock(5)))
        return
    after, delta = apply_operations(start, ops, "zz", HybridLogicalClock(FakeClock(5)))
    assert after == expected_after
    assert delta == expected_delta
    # The delta is what replicas receive: applied anywhere it does what the batch did.
    assert start.join_delta(delta) == after
    for other in data.draw(st.lists(st.sampled_from(ex.snapshots), max_size=2)):
        assert other.join_delta(delta) == other.join(expected_delta)


def test_a_batch_at_the_operation_limit_applies() -> None:
    """Regression: batches of 10,000 operations were quadratic (helper's bad-input matrix)."""
    window = StoreMap().join_delta(StoreMap().increment("warm", 1, "zz"))
    ops: list[Operation] = [Increment(f"k{i}", 1) for i in range(5_000)]
    ops += [Increment("one", 1) for _ in range(5_000)]
    validate(ops, b"", Limits())
    after, delta = apply_operations(window, ops, "zz", HybridLogicalClock(FakeClock(5)))
    assert after.get("one").value == 5_000  # type: ignore[union-attr]
    assert len(delta.entries) == 5_001
    assert window.join_delta(delta) == after


def test_validate_names_the_first_problem() -> None:
    with pytest.raises(InvalidRequest, match="operation 1: the key is empty"):
        validate([SetRegister("k", b""), SetRegister("", b"")], b"", Limits())
    with pytest.raises(InvalidRequest, match="10001 operations"):
        validate([DeleteKey("k")] * 10_001, b"", Limits())
