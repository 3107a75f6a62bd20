"""The faults both runners speak of, the shapes of their partitions, and the names of their regions.

The simulator (``simulations.sim``) and the real-process chaos runner
(``simulations.chaos``) inject faults of the kinds in ``FAULT_KINDS``, each
runner those it can (``RUNNER_KINDS``): only the simulator loses messages on
the wire or a region's disk, only the chaos runner pauses a process. Both
take a fault spec (``--faults`` of ``run``/``replay``, ``--nemesis`` of
``chaos``) through ``parse_faults``, cut links in the shapes of
``PARTITION_SHAPES``, and record the nemesis events of ``EVENTS`` in their
histories, so one reader (``simulations.timeline.fault_spans``) pairs the
start of a fault with its end in a history from either.

Regions are named by ``region_names``: ``ra``, ``rb``, ... They sort as
strings in the order they are made, which the dialling rule needs (of two
regions, the one whose name sorts first opens their connection, in the node
as in the simulator).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

__all__ = [
    "EVENTS",
    "FAULT_KINDS",
    "FINAL_HEAL",
    "PARTITION_SHAPES",
    "REGIONS_MAX",
    "RUNNER_KINDS",
    "SHAPE_ALIASES",
    "Runner",
    "bridge_sides",
    "halves",
    "links_text",
    "parse_faults",
    "region_names",
    "ring_neighbours",
]

Runner = Literal["simulator", "chaos"]

# Every kind of fault, and what it stands for.
FAULT_KINDS: dict[str, str] = {
    "partition": "links cut in one of the partition shapes, then healed",
    "crash": "a region killed (kill -9) and restarted from its data directory",
    "pause": "a region's process stopped (SIGSTOP) and resumed (SIGCONT)",
    "clock": "a region's clock shifted (a jump, or a restart with an offset) and later set right",
    "network": "messages dropped, duplicated and reordered on the wire",
    "disk": "a region loses its data directory and comes back empty, while another region is cut off",
}

# The kinds each runner injects, in the order ``all`` stands for. The simulator's order is part of its
# seeds: it draws each fault's kind from this tuple, so reordering it changes every run.
RUNNER_KINDS: dict[Runner, tuple[str, ...]] = {
    "simulator": ("partition", "crash", "clock", "network", "disk"),
    "chaos": ("partition", "crash", "pause", "clock"),
}

_TITLES: dict[Runner, str] = {"simulator": "the simulator", "chaos": "chaos runs"}

# The shapes of a partition, one name each, and what each cuts. The simulator draws a shape from this
# order, so, as with RUNNER_KINDS, reordering it changes every seed's run.
PARTITION_SHAPES: dict[str, str] = {
    "isolate": "one region from all the others",
    "halves": "the regions into two sides, the smaller of half of them (rounded down), with no link between the sides",
    "bridge": "two sides that do not see each other, and one region that sees both",
    "ring": "every link but those between neighbours of a ring",
    "one-way": "links in one direction only: the sender is not heard, but still hears",
    "clog": "links one by one, then restores them one by one in another order",
}
# Other names a shape has had, still accepted where a shape is named.
SHAPE_ALIASES: dict[str, str] = {"majority": "halves"}

# The nemesis events of a history: each fault's start and the event that ends it. The final heal
# (a ``heal`` for every region) ends whatever is still in place; ``stall`` (a commit that waits, in
# the simulator) and ``disk`` (the region then restarts) end by themselves.
EVENTS: dict[str, str] = {
    "partition": "heal",
    "clog": "unclog",
    "crash": "restart",
    "pause": "resume",
    "clock": "clock-restore",
    "network": "network-restore",
}

# The detail of the ``heal`` event that ends every fault still in place, at the end of a run.
FINAL_HEAL = "final heal"

REGIONS_MAX = 26


def region_names(count: int, *, least: int = 1, most: int = REGIONS_MAX, what: str = "a run") -> list[str]:
    """``ra``, ``rb``, ...: as many as ``count``, which must be within ``least`` and ``most`` (at most 26).

    One letter after ``r``, so that the names sort as strings in the order they are made: of two regions
    the one whose name sorts first dials.
    """
    if not 1 <= least <= most <= REGIONS_MAX:
        raise ValueError(f"region bounds must lie within 1 and {REGIONS_MAX}, not {least} and {most}")
    if not least <= count <= most:
        raise ValueError(f"{what} takes between {least} and {most} regions, not {count}")
    return [f"r{chr(ord('a') + i)}" for i in range(count)]


def parse_faults(spec: str, runner: Runner) -> tuple[str, ...]:
    """A fault spec -> the kinds of fault ``runner`` is to inject.

    The spec is ``all`` (every kind the runner injects, in ``RUNNER_KINDS`` order), ``none`` (or empty),
    or a comma-separated list of kinds, which keeps its order, once each (``all`` in a list adds every
    kind). A kind only the other runner injects, and a word that is no kind, are refused by name.
    """
    supported = RUNNER_KINDS[runner]
    kinds: list[str] = []
    for raw in spec.split(","):
        word = raw.strip()
        if word in ("", "none"):
            continue
        if word == "all":
            named = supported
        elif word not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {word!r}; choose all, none, or a comma-separated choice of {', '.join(supported)}"
            )
        elif word not in supported:
            others = " and ".join(_TITLES[r] for r, injected in RUNNER_KINDS.items() if word in injected)
            raise ValueError(
                f"{_TITLES[runner]} cannot inject {word!r} faults ({others} can); "
                f"choose all, none, or a comma-separated choice of {', '.join(supported)}"
            )
        else:
            named = (word,)
        kinds += [kind for kind in named if kind not in kinds]
    return tuple(kinds)


# -- the geometry of the shapes both runners cut alike (given the regions in a shuffled order) ----


def halves(order: Sequence[str]) -> tuple[list[str], list[str]]:
    """The smaller side (the first half of ``order``, rounded down) and the larger."""
    size = len(order) // 2
    return list(order[:size]), list(order[size:])


def bridge_sides(order: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """The bridging region (the first of ``order``), and the two sides it joins."""
    bridge, rest = order[0], list(order[1:])
    half = len(rest) // 2
    return bridge, rest[:half], rest[half:]


def ring_neighbours(order: Sequence[str]) -> set[frozenset[str]]:
    """The links of a ring through ``order`` (the last region next to the first)."""
    return {frozenset((order[i], order[(i + 1) % len(order)])) for i in range(len(order))}


def links_text(pairs: Sequence[tuple[str, str]] | set[tuple[str, str]]) -> str:
    """``links ra-rb rc>rd``: pairs cut both ways as ``a-b``, pairs cut one way (sender first) as ``a>b``.

    The form a ``partition`` or ``heal`` event's detail ends with; ``simulations.timeline`` reads it back.
    """
    directed = set(pairs)
    both = sorted({(min(a, b), max(a, b)) for a, b in directed if (b, a) in directed})
    one = sorted((a, b) for a, b in directed if (b, a) not in directed)
    return "links " + " ".join([f"{a}-{b}" for a, b in both] + [f"{a}>{b}" for a, b in one])
