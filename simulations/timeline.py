"""The picture of a chaos run: faults, throughput, replication lag and convergence on one time axis.

``render_timeline`` draws three panels that share the x axis (seconds since the
run started):

* faults: one row per region (crash, pause, clock offset) and one per link
  (cut both ways, cut one way, clogged), a bar for as long as the fault held;
  under a region's faults, a thin bar while the region said its own clock
  was out of bounds and refused writes (``clock_fenced`` in its status);
* throughput: operations completed per second, acknowledged and not;
* replication lag: the most events any region held that a peer had not
  acknowledged (``behind`` in the status), with the final heal and the moment
  every region read the same marked.

The fault intervals are read back from the history's nemesis events
(``fault_spans``), so a history alone is enough to redraw the fault band.
It uses matplotlib's object API on an Agg canvas: no pyplot, no global state,
no display needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from simulations.faults import EVENTS, FINAL_HEAL
from simulations.history import Nemesis, Record

__all__ = [
    "FAULT_COLOURS",
    "FINAL_HEAL",
    "Sample",
    "Span",
    "fault_spans",
    "fenced_spans",
    "link_name",
    "render_timeline",
]

# The event that ends each kind of fault (FINAL_HEAL: the detail of the heal that ends every fault still open).
_ENDS = EVENTS
_LINKS = re.compile(r"links (.*)$")

FAULT_COLOURS = {
    "cut": "#d62728",
    "one-way": "#ff9896",
    "clog": "#9467bd",
    "crash": "#000000",
    "pause": "#ff7f0e",
    "clock": "#1f77b4",
    "fenced": "#bcbd22",  # not a fault: the region's own verdict on its clock, from its status
}


@dataclass(frozen=True)
class Sample:
    """What the sampler saw at ``t_ms``: throughput since the previous sample and replication lag now."""

    t_ms: int
    ok_per_s: float
    not_ok_per_s: float  # failed or unknown
    lag_events: int | None  # None when no region answered
    lag_by_region: dict[str, int | None] = field(default_factory=dict)
    fenced: list[str] = field(default_factory=list)  # regions refusing writes because of their clock


@dataclass(frozen=True)
class Span:
    """One fault as it held: on a region (``row`` is the region) or on a link (``row`` is ``link_name``)."""

    row: str
    kind: str  # a key of FAULT_COLOURS
    start_ms: int
    end_ms: int


def link_name(a: str, b: str) -> str:
    return f"{min(a, b)}-{max(a, b)}"


def _links(detail: str) -> list[tuple[str, str, bool]]:
    """The links a partition event names, as (a, b, one_way): ``links r1-r2 r3>r1``."""
    match = _LINKS.search(detail)
    if match is None:
        return []
    out = []
    for token in match.group(1).split():
        one_way = ">" in token
        a, _, b = token.partition(">" if one_way else "-")
        if a and b:
            out.append((a, b, one_way))
    return out


def fault_spans(records: Sequence[Record], end_ms: int) -> list[Span]:
    """Pair each fault's start event with the event that ended it; a fault never ended lasts until ``end_ms``."""
    open_faults: dict[tuple[str, str], Nemesis] = {}
    spans: list[Span] = []

    def close(start: Nemesis, at_ms: int) -> None:
        if start.event == "partition":
            for a, b, one_way in _links(start.detail):
                spans.append(Span(link_name(a, b), "one-way" if one_way else "cut", start.at_ms, at_ms))
        elif start.event == "clog":
            spans.append(Span(link_name(*start.regions[:2]), "clog", start.at_ms, at_ms))
        else:
            spans.append(Span(start.regions[0], start.event, start.at_ms, at_ms))

    for record in records:
        if not isinstance(record, Nemesis):
            continue
        if record.event in _ENDS:
            open_faults[(record.event, ",".join(record.regions))] = record
            continue
        if record.event == "heal" and record.detail.startswith(FINAL_HEAL):
            ended = list(open_faults)  # the final heal ends everything still open
        elif record.event == "heal":
            ended = [k for k in open_faults if k[0] == "partition"]
        else:
            ended = [k for k in open_faults if _ENDS[k[0]] == record.event and k[1] == ",".join(record.regions)]
        for k in ended:
            close(open_faults.pop(k), record.at_ms)
    for start in open_faults.values():
        close(start, end_ms)
    return spans


def fenced_spans(samples: Sequence[Sample], interval_ms: int) -> list[Span]:
    """Each run of samples in which a region said its clock is fenced, as a span on that region's row."""
    spans: list[Span] = []
    open_since: dict[str, int] = {}
    last_ms = 0
    for sample in samples:
        for region in sample.fenced:
            open_since.setdefault(region, sample.t_ms - interval_ms)
        for region in [r for r in open_since if r not in sample.fenced]:
            spans.append(Span(region, "fenced", open_since.pop(region), sample.t_ms))
        last_ms = sample.t_ms
    spans += [Span(region, "fenced", start, last_ms) for region, start in open_since.items()]
    return spans


def render_timeline(
    path: Path,
    *,
    regions: Sequence[str],
    records: Sequence[Record],
    samples: Sequence[Sample],
    end_ms: int,
    final_heal_ms: int | None,
    converged_ms: int | None,
    title: str,
) -> None:
    """Write the PNG at ``path``."""
    links = [link_name(a, b) for i, a in enumerate(sorted(regions)) for b in sorted(regions)[i + 1 :]]
    rows = [*sorted(regions), *links]
    figure = Figure(figsize=(13, 3.0 + 0.22 * len(rows) + 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    faults_ax, throughput_ax, lag_ax = figure.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [max(2.0, 0.22 * len(rows)), 1.6, 1.6]}
    )
    end_s = end_ms / 1000.0

    # Faults: one bar per span, on its region's or link's row.
    index = {row: i for i, row in enumerate(rows)}
    interval_ms = samples[1].t_ms - samples[0].t_ms if len(samples) > 1 else 500
    for span in [*fault_spans(records, end_ms), *fenced_spans(samples, interval_ms)]:
        if span.row not in index:
            continue
        # A fenced clock is drawn as a thin bar under the region's faults, so both show.
        low, height = (0.15, 0.3) if span.kind == "fenced" else (-0.4, 0.55)
        faults_ax.broken_barh(
            [(span.start_ms / 1000.0, max(0.05, (span.end_ms - span.start_ms) / 1000.0))],
            (index[span.row] + low, height),
            facecolors=FAULT_COLOURS.get(span.kind, "grey"),
        )
    faults_ax.set_yticks(range(len(rows)), rows, fontsize=8)
    faults_ax.set_ylim(len(rows) - 0.5, -0.5)
    faults_ax.axhline(len(regions) - 0.5, color="grey", linewidth=0.5)
    faults_ax.set_ylabel("regions / links")
    faults_ax.legend(
        handles=[Patch(color=colour, label=kind) for kind, colour in FAULT_COLOURS.items()],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
    )
    faults_ax.set_title(title, fontsize=10)

    times = [s.t_ms / 1000.0 for s in samples]
    throughput_ax.plot(times, [s.ok_per_s for s in samples], color="#2ca02c", label="acknowledged")
    throughput_ax.plot(times, [s.not_ok_per_s for s in samples], color="#d62728", label="failed or unknown")
    throughput_ax.set_ylabel("ops/s")
    throughput_ax.set_ylim(bottom=0)
    throughput_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)

    lag_times = [s.t_ms / 1000.0 for s in samples if s.lag_events is not None]
    lag_ax.plot(lag_times, [s.lag_events for s in samples if s.lag_events is not None], color="#1f77b4")
    lag_ax.set_ylabel("lag (events)")
    lag_ax.set_ylim(bottom=0)
    lag_ax.set_xlabel("seconds since the start")
    for ax in (faults_ax, throughput_ax, lag_ax):
        if final_heal_ms is not None:
            ax.axvline(final_heal_ms / 1000.0, color="grey", linestyle="--", linewidth=1)
        if converged_ms is not None:
            ax.axvline(converged_ms / 1000.0, color="#2ca02c", linestyle="-", linewidth=1.5)
        ax.grid(axis="x", alpha=0.3)
    if final_heal_ms is not None:
        lag_ax.annotate("final heal", (final_heal_ms / 1000.0, 1.0), xycoords=("data", "axes fraction"), fontsize=8)
    if converged_ms is not None:
        lag_ax.annotate(
            "converged", (converged_ms / 1000.0, 0.85), xycoords=("data", "axes fraction"), fontsize=8, color="#2ca02c"
        )
    lag_ax.set_xlim(0, max(end_s, times[-1] if times else 0.0))
    figure.savefig(path, dpi=100)
