"""Version vectors and causal contexts against a plain set-of-dots model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import CausalContext, Dot, VersionVector

dots = st.builds(Dot, st.sampled_from(["eu", "us", "ap"]), st.integers(1, 12))
dot_sets = st.frozensets(dots, max_size=20)


def _as_set(ctx: CausalContext) -> frozenset[Dot]:
    return frozenset(ctx.dots())


@given(dot_sets)
def test_a_context_holds_exactly_its_dots_and_is_compact(ds: frozenset[Dot]) -> None:
    ctx = CausalContext.from_dots(ds)
    ctx._check()
    assert _as_set(ctx) == ds
    for region in ("eu", "us", "ap"):
        for counter in range(1, 14):
            assert ctx.contains(Dot(region, counter)) == (Dot(region, counter) in ds)


@given(dot_sets, dot_sets)
def test_join_is_union_and_dominates_is_superset(a: frozenset[Dot], b: frozenset[Dot]) -> None:
    ca, cb = CausalContext.from_dots(a), CausalContext.from_dots(b)
    joined = ca.join(cb)
    joined._check()
    assert _as_set(joined) == a | b
    assert joined == cb.join(ca)
    assert ca.dominates(cb) == (a >= b)
    assert ca.concurrent(cb) == (not a >= b and not b >= a)
    assert ca.add_all(b) == joined
    assert (ca == cb) == (a == b)


@given(dot_sets, dot_sets, dot_sets)
def test_join_is_associative_and_idempotent(a: frozenset[Dot], b: frozenset[Dot], c: frozenset[Dot]) -> None:
    ca, cb, cc = (CausalContext.from_dots(x) for x in (a, b, c))
    assert ca.join(cb).join(cc) == ca.join(cb.join(cc))
    assert ca.join(ca) == ca


@given(dot_sets)
def test_next_dot_is_above_everything_the_region_has(ds: frozenset[Dot]) -> None:
    ctx = CausalContext.from_dots(ds)
    nxt = ctx.next_dot("eu")
    assert not ctx.contains(nxt)
    assert all(d.counter < nxt.counter for d in ds if d.region == "eu")


@given(
    st.dictionaries(st.sampled_from(["eu", "us", "ap"]), st.integers(0, 9)),
    st.dictionaries(st.sampled_from(["eu", "us", "ap"]), st.integers(0, 9)),
)
def test_version_vector_order(a: dict[str, int], b: dict[str, int]) -> None:
    va, vb = VersionVector(a), VersionVector(b)
    regions = set(a) | set(b)
    assert va.dominates(vb) == all(a.get(r, 0) >= b.get(r, 0) for r in regions)
    joined = va.join(vb)
    assert all(joined.get(r) == max(a.get(r, 0), b.get(r, 0)) for r in regions)
    assert joined.dominates(va)
    assert joined.dominates(vb)
    assert va.concurrent(vb) == (not va.dominates(vb) and not vb.dominates(va))
    assert (va == vb) == (va.dominates(vb) and vb.dominates(va))
    assert (hash(va) == hash(vb)) or va != vb


def test_zero_entries_are_not_stored() -> None:
    assert VersionVector({"eu": 0}) == VersionVector()
    assert len(VersionVector({"eu": 0, "us": 2})) == 1


@given(dot_sets, st.sampled_from(["eu", "us", "ap"]), st.integers(1, 14), st.integers(0, 6))
def test_add_run_is_add_all_of_the_run(ds: frozenset[Dot], region: str, first: int, length: int) -> None:
    ctx = CausalContext.from_dots(ds)
    run = [Dot(region, c) for c in range(first, first + length)]
    after = ctx.add_run(region, first, first + length - 1)
    assert after == ctx.add_all(run)
    assert set(after.dots()) == set(ds) | set(run)
    after._check()
