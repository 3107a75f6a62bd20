"""Hypothesis strategies that build reachable CRDT states.

Join laws only hold for states that one execution can reach (dots are unique
to one event), so the strategies here do not invent states: they run a random
execution of three replicas (local mutations, deltas delivered in any order,
duplicated or never, full-state merges) and hand out snapshots of it.

Shared by the tests, the simulator and the benchmarks; needs the ``test``
extra (hypothesis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hypothesis import settings
from hypothesis import strategies as st

from crdtstore.crdt import (
    INT64_MAX,
    INT64_MIN,
    AWSet,
    Causal,
    CausalContext,
    Counter,
    Register,
    StoreMap,
    Timestamp,
    TypeMismatch,
)
from crdtstore.crdt.dotstore import DotStore

__all__ = [
    "REGIONS",
    "TYPES",
    "Execution",
    "MapExecution",
    "TypeUnderTest",
    "amounts",
    "examples",
    "map_executions",
    "type_executions",
]

REGIONS = ("eu", "us", "ap")

S = TypeVar("S", bound=DotStore)

# A mutation: given a replica's state and its region, the delta it produces.
Mutation = Callable[[Causal[S], str], Causal[S]]

amounts = st.one_of(
    st.integers(-5, 5),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, -1, 0, 1]),
)
members = st.sampled_from(["a", "b", "c", "d", "é", ""])
values = st.sampled_from([b"", b"x", b"y", b"\x00\xff", b"long" * 16])
walls = st.integers(0, 6)  # few distinct wall clocks, so ties and skew are common


@dataclass(frozen=True)
class TypeUnderTest(Generic[S]):
    name: str
    bottom: Callable[[], S]
    mutations: st.SearchStrategy[Mutation[S]]

    def empty(self) -> Causal[S]:
        return Causal(self.bottom(), CausalContext())


def _register_mutations() -> st.SearchStrategy[Mutation[Register]]:
    def build(value: bytes, wall: int) -> Mutation[Register]:
        def run(state: Causal[Register], region: str) -> Causal[Register]:
            return state.store.write(value, Timestamp(wall, 0), state.next_dot(region))

        return run

    return st.builds(build, values, walls)


def _counter_mutations() -> st.SearchStrategy[Mutation[Counter]]:
    def build(amount: int) -> Mutation[Counter]:
        def run(state: Causal[Counter], region: str) -> Causal[Counter]:
            return state.store.increment(amount, state.next_dot(region))

        return run

    return st.builds(build, amounts)


def _set_mutations() -> st.SearchStrategy[Mutation[AWSet]]:
    def build(add: bool, member: str) -> Mutation[AWSet]:
        def run(state: Causal[AWSet], region: str) -> Causal[AWSet]:
            dot = state.next_dot(region)
            return state.store.add(member, dot) if add else state.store.remove(member, dot)

        return run

    return st.builds(build, st.booleans(), members)


TYPES: dict[str, TypeUnderTest[Any]] = {
    "register": TypeUnderTest("register", Register.bottom, _register_mutations()),
    "counter": TypeUnderTest("counter", Counter.bottom, _counter_mutations()),
    "set": TypeUnderTest("set", AWSet.bottom, _set_mutations()),
}


@dataclass
class Execution(Generic[S]):
    """What one random execution produced."""

    snapshots: list[Causal[S]] = field(default_factory=list)
    deltas: list[Causal[S]] = field(default_factory=list)
    # Per replica: its state before and after each of its own mutations.
    steps: list[tuple[Causal[S], Causal[S], Causal[S]]] = field(default_factory=list)


Step = tuple[str, int, Any]


def _steps(mutations: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Step]]:
    replica = st.integers(0, len(REGIONS) - 1)
    mutate = st.tuples(st.just("mutate"), replica, mutations)
    deliver = st.tuples(st.just("deliver"), replica, st.integers(0, 10_000))
    merge = st.tuples(st.just("merge"), replica, replica)
    return st.lists(st.one_of(mutate, mutate, deliver, merge), min_size=1, max_size=24)


@st.composite
def type_executions(draw: st.DrawFn, kind: TypeUnderTest[S]) -> Execution[S]:
    """Run three replicas of one type through a random execution."""
    replicas = [kind.empty() for _ in REGIONS]
    out: Execution[S] = Execution(snapshots=[kind.empty()])
    for op, i, arg in draw(_steps(kind.mutations)):
        if op == "mutate":
            before = replicas[i]
            delta = arg(before, REGIONS[i])
            replicas[i] = before.join_delta(delta)
            out.deltas.append(delta)
            out.steps.append((before, delta, replicas[i]))
        elif op == "deliver":
            if not out.deltas:
                continue
            replicas[i] = replicas[i].join_delta(out.deltas[arg % len(out.deltas)])
        else:
            replicas[i] = replicas[i].join(replicas[arg])
        out.snapshots.append(replicas[i])
    return out


@dataclass
class MapExecution:
    snapshots: list[StoreMap] = field(default_factory=list)
    deltas: list[StoreMap] = field(default_factory=list)
    steps: list[tuple[StoreMap, StoreMap, StoreMap]] = field(default_factory=list)


keys = st.sampled_from(["k1", "k2", "k3"])

MapMutation = Callable[[StoreMap, str], StoreMap]


def _map_mutation() -> st.SearchStrategy[MapMutation]:
    def write(key: str, value: bytes, wall: int) -> MapMutation:
        return lambda s, region: s.write_register(key, value, Timestamp(wall, 0), region)

    def incr(key: str, amount: int) -> MapMutation:
        return lambda s, region: s.increment(key, amount, region)

    def add(key: str, ms: list[str]) -> MapMutation:
        return lambda s, region: s.add_members(key, ms, region)

    def remove(key: str, ms: list[str]) -> MapMutation:
        return lambda s, region: s.remove_members(key, ms, region)

    def delete(key: str) -> MapMutation:
        return lambda s, region: s.delete(key, region)

    some_members = st.lists(members, min_size=1, max_size=3)
    return st.one_of(
        st.builds(write, keys, values, walls),
        st.builds(incr, keys, amounts),
        st.builds(add, keys, some_members),
        st.builds(remove, keys, some_members),
        st.builds(delete, keys),
    )


map_mutations = _map_mutation()


@st.composite
def map_executions(draw: st.DrawFn) -> MapExecution:
    """Run three whole-store replicas through a random execution.

    Mutations refused for a type mismatch are skipped, as a client would see
    them refused.
    """
    replicas = [StoreMap() for _ in REGIONS]
    out = MapExecution(snapshots=[StoreMap()])
    for op, i, arg in draw(_steps(map_mutations)):
        if op == "mutate":
            before = replicas[i]
            try:
                delta = arg(before, REGIONS[i])
            except TypeMismatch:
                continue
            replicas[i] = before.join_delta(delta)
            out.deltas.append(delta)
            out.steps.append((before, delta, replicas[i]))
        elif op == "deliver":
            if not out.deltas:
                continue
            replicas[i] = replicas[i].join_delta(out.deltas[arg % len(out.deltas)])
        else:
            replicas[i] = replicas[i].join(replicas[arg])
        out.snapshots.append(replicas[i])
    return out


def examples(at_ci: int) -> int:
    """A property's own example count, given as it is under the ``ci`` profile (500 per property).

    Scaled to the profile that is loaded, so ``thorough`` runs such a
    property 20 times as long as ``ci`` and the default run a fifth as long.
    """
    return max(5, at_ci * settings().max_examples // 500)
