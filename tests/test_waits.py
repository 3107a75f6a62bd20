"""Waiting for version vectors to cover a token: after-reads and replicated:N writes (crdtstore.node.waits)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.crdt import VersionVector
from crdtstore.node.waits import VectorWaits
from crdtstore.testing.strategies import examples

ORIGINS = ("a", "b", "c")


class Sources:
    """Growing vectors by name, counting how often VectorWaits reads them."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.vectors = {name: VersionVector() for name in names}
        self.reads = 0

    def getter(self, name: str) -> Callable[[], VersionVector]:
        def read() -> VersionVector:
            self.reads += 1
            return self.vectors[name]

        return read

    def waits(self) -> VectorWaits:
        return VectorWaits({name: self.getter(name) for name in self.vectors})

    def grow(self, name: str, origin: str, count: int) -> None:
        vector = self.vectors[name]
        self.vectors[name] = vector.join(VersionVector({origin: count}))


vectors = st.dictionaries(st.sampled_from(ORIGINS), st.integers(1, 6), max_size=3).map(VersionVector)


@settings(max_examples=examples(150), deadline=None)
@given(
    waits_for=st.lists(
        st.tuples(vectors, st.integers(1, 3), st.none() | st.sampled_from([("x",), ("y", "z"), ("x", "z")])),
        max_size=12,
    ),
    growth=st.lists(st.tuples(st.sampled_from(("x", "y", "z")), st.sampled_from(ORIGINS), st.integers(1, 6))),
)
def test_a_waiter_is_released_exactly_when_enough_of_its_sources_cover_its_target(
    waits_for: list[tuple[VersionVector, int, tuple[str, ...] | None]],
    growth: list[tuple[str, str, int]],
) -> None:
    async def scenario() -> None:
        sources = Sources(("x", "y", "z"))
        waits = sources.waits()
        tasks = []
        for target, needed, among in waits_for:
            possible = min(needed, len(among) if among is not None else 3)
            tasks.append(asyncio.create_task(waits.wait(target, possible, 60.0, among)))
        await asyncio.sleep(0)

        def due(target: VersionVector, needed: int, among: tuple[str, ...] | None) -> bool:
            names = among if among is not None else ("x", "y", "z")
            return sum(1 for name in names if sources.vectors[name].dominates(target)) >= min(needed, len(names))

        for step in [None, *growth]:
            if step is not None:
                sources.grow(*step)
                waits.changed()
            for _ in range(3):
                await asyncio.sleep(0)
            for task, (target, needed, among) in zip(tasks, waits_for, strict=True):
                assert task.done() == due(target, needed, among), (target, needed, among, sources.vectors)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())


def test_a_change_reads_the_sources_a_bounded_number_of_times_however_many_wait() -> None:
    """The regression: every change used to check every waiter, so a backlog of after-reads starved the loop."""

    async def scenario() -> None:
        sources = Sources(("x", "y"))
        waits = sources.waits()
        tasks = [asyncio.create_task(waits.wait(VersionVector({"a": 1_000 + i}), 1, 60.0)) for i in range(5_000)]
        await asyncio.sleep(0)
        for count in range(1, 200):
            sources.reads = 0
            sources.grow("x", "b", count)  # an origin nobody waits for
            waits.changed()
            assert sources.reads <= 4  # (sources x origins waited on) tops of heaps, not 5,000 checks
        sources.grow("x", "a", 1_100)
        waits.changed()
        for _ in range(5):
            await asyncio.sleep(0)
        assert sum(task.done() for task in tasks) == 101
        assert all(task.result() for task in tasks if task.done())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())


def test_waiters_that_time_out_do_not_accumulate() -> None:
    async def scenario() -> None:
        sources = Sources(("x", "y"))
        waits = sources.waits()
        for round_ in range(5):
            results = await asyncio.gather(
                *(waits.wait(VersionVector({"a": 10_000 + round_}), 1, 0.001) for _ in range(1_000))
            )
            assert not any(results)
        # Each timed-out waiter left an entry per source; they are compacted away in bulk.
        assert len(waits) <= 2 * 2 * 1_000

    asyncio.run(scenario())


def test_a_timed_out_wait_still_reports_a_cover_that_arrived_without_a_change_call() -> None:
    async def scenario() -> None:
        sources = Sources(("x",))
        waits = sources.waits()
        wait = asyncio.create_task(waits.wait(VersionVector({"a": 2}), 1, 0.01))
        await asyncio.sleep(0)
        sources.grow("x", "a", 2)  # nobody called changed()
        assert await wait

    asyncio.run(scenario())


def test_an_already_covered_target_returns_at_once_and_files_nothing() -> None:
    async def scenario() -> None:
        sources = Sources(("x", "y"))
        sources.grow("x", "a", 3)
        waits = sources.waits()
        assert await waits.wait(VersionVector({"a": 3}), 1, 0.0)
        assert await waits.wait(VersionVector(), 2, 0.0)
        assert len(waits) == 0

    asyncio.run(scenario())


def test_closing_fails_every_waiter() -> None:
    async def scenario() -> None:
        waits = Sources(("x",)).waits()
        wait = asyncio.create_task(waits.wait(VersionVector({"a": 1}), 1, 60.0))
        await asyncio.sleep(0)
        waits.cancel_all()
        with pytest.raises(asyncio.CancelledError):
            await wait

    asyncio.run(scenario())


def test_impossible_waits_are_refused() -> None:
    async def scenario() -> None:
        waits = Sources(("x", "y")).waits()
        with pytest.raises(ValueError, match="cannot cover"):
            await waits.wait(VersionVector({"a": 1}), 3, 1.0)
        with pytest.raises(ValueError, match="no source named 'q'"):
            await waits.wait(VersionVector({"a": 1}), 1, 1.0, among=("q",))

    asyncio.run(scenario())
