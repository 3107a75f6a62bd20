"""``REPORT.md`` and the plots of a suite run (``benchmarks.suite``).

One table per section: figure, measured (median [min..max] over the repeats),
baseline (the same), ratio (measured median / baseline median) and the issue's
target where it states one. A figure with two baselines has a second row for
the second. The plots, drawn with matplotlib's Agg backend, are
``convergence.png`` (time and bytes to converge against the number of diverged
keys, one line per region count), ``latency.png`` (write latency percentiles,
node beside its baselines), ``throughput.png`` (requests per second against
the number in flight), ``sync_cost.png`` (bytes sent over the minimum per
workload and topology, beside state-based and the published figures) and
``peers.png`` (delta bytes of one add and state bytes per element against the
set size, crdtstore beside delta-crdts and pycrdt). A group's detail may carry
``report_notes`` (shown as a list under its placement) and a group may have a
side-by-side summary table (``peers`` has one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.figures import Baseline, Figure, Stats
from benchmarks.groups import GROUPS, SuiteResult

__all__ = ["baseline_cell", "cell", "fmt", "ratio_text", "spread", "table", "write_report"]


def fmt(value: float, unit: str) -> str:
    """A value in its unit, to a sensible precision: ``12.3k ops/s``, ``4.21 ms``, ``1.50 MiB``."""
    if math.isnan(value):
        return "n/a"
    if unit == "bytes":
        for limit, suffix in ((2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB")):
            if abs(value) >= limit:
                return f"{value / limit:.2f} {suffix}"
        return f"{value:,.0f} B"
    if unit.endswith("/s"):
        for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= limit * 0.9995:
                return f"{value / limit:.3g}{suffix} {unit}"
        return f"{value:.3g} {unit}"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.2f} {unit}"


def spread(s: Stats, repeats: int) -> str:
    """The median in its unit, with [min..max] beside it when there were repeats and they differ."""
    if repeats <= 1 or s.minimum == s.maximum or math.isnan(s.minimum):
        return fmt(s.median, s.unit)
    shown = fmt(s.median, s.unit)
    unit = shown.rpartition(" ")[2]

    def bound(value: float) -> str:
        # A bound in another scale than the median (KiB beside MiB) keeps its own unit.
        text = fmt(value, s.unit)
        number, _, its_unit = text.rpartition(" ")
        return number if number and its_unit == unit else text

    return f"{shown} [{bound(s.minimum)}..{bound(s.maximum)}]"


def ratio_text(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.3g}" if value < 10 else f"{value:,.1f}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def baseline_cell(baseline: Baseline, *, with_spread: bool = True) -> str:
    """A baseline's table cell: its median (with [min..max] unless ``with_spread`` is false) and its name."""
    shown = spread(baseline.stats, baseline.repeats) if with_spread else fmt(baseline.stats.median, baseline.stats.unit)
    return f"{shown}: {cell(baseline.name)}"


def table(figures: Sequence[Figure]) -> list[str]:
    lines = [
        "| figure | measured | baseline | ratio | target |",
        "|---|--:|---|--:|---|",
    ]
    for f in figures:
        measured = spread(f.stats, f.repeats)
        if not f.baselines:
            lines.append(f"| {cell(f.name)} | {measured} | | | {cell(f.target)} |")
            continue
        for i, b in enumerate(f.baselines):
            name = cell(f.name) if i == 0 else ""
            shown = measured if i == 0 else ""
            target = cell(f.target) if i == 0 else ""
            lines.append(f"| {name} | {shown} | {baseline_cell(b)} | {ratio_text(f.ratio(b))} | {target} |")
    return lines


def write_report(suite: SuiteResult, out: Path) -> None:
    plots = draw_plots(suite.figures, out)
    m = suite.machine
    sha = suite.commit.get("sha") or "unknown"
    load = ", ".join(f"{x:.2f}" for x in m.get("load_average_at_start", []))
    dirty = suite.commit.get("dirty")
    lines = [
        "# crdtstore benchmarks",
        "",
        f"Regenerate with `{suite.command}` from the repository root.",
        "",
        f"- mode: {suite.mode}" + (f", {suite.repeats} repeats" if suite.repeats else ", default repeats per group"),
        f"- commit: `{sha}`" + (" with uncommitted changes" if dirty else ""),
        f"- started {suite.started}, took {suite.seconds:.0f} s",
        f"- machine: {m.get('cpu_count')} CPUs ({m.get('cpu_model') or 'model unknown'}), Python {m.get('python')}, "
        f"{m.get('platform')}; load average at start {load}",
        "",
        "Every figure is the median over its repeats with [min..max] beside it; the baseline is measured in the same "
        "run (sizes: counted from the same data). **ratio = measured median / baseline median**, so for a rate "
        "below 1 and for a time or a size above 1 means the measured path costs more than its baseline. Targets are "
        "the issue's, shown for reference: nothing asserts them. `--quick` runs are smoke runs: fewer repeats and "
        "smaller sizes, for checking that the suite runs, not for judging speed.",
        "",
    ]
    for result in suite.groups:
        group = GROUPS[result.name]
        lines += [f"## {result.name}: {group.title}", "", f"Placement: {group.placement}.", ""]
        if result.error:
            lines += [
                f"**FAILED** after {result.seconds:.0f} s: `{cell(result.error)}` (see `logs/{result.name}.txt`)",
                "",
            ]
        notes = result.detail.get("report_notes")
        if isinstance(notes, list) and notes:
            lines += [*(f"- {cell(str(note))}" for note in notes), ""]
        summary = SUMMARIES.get(result.name)
        if summary is not None and result.figures:
            lines += summary(result.figures)
        sections: dict[str, list[Figure]] = {}
        for f in result.figures:
            sections.setdefault(f.section, []).append(f)
        for section, figures in sections.items():
            lines += [f"### {section}", "", *table(figures), ""]
            by_note: dict[str, list[str]] = {}
            for f in figures:
                if f.note:
                    by_note.setdefault(f.note, []).append(f.name)
            if by_note and len(by_note) <= 12:
                notes = [f"- {cell(', '.join(names))}: {cell(note)}" for note, names in by_note.items()]
                lines += ["Notes:", "", *notes, ""]
        lines += [f"Full text report: `logs/{result.name}.txt`; took {result.seconds:.0f} s.", ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({name})" + "\n" for name, title in plots]
    (out / "REPORT.md").write_text("\n".join(lines).rstrip() + "\n")


# ---------------------------------------------------------------------------
# side-by-side summaries
# ---------------------------------------------------------------------------


def _peers_summary(figures: Sequence[Figure]) -> list[str]:
    """The peers group's figures as one column per implementation: sizes by set size, rates by workload."""
    mine = [f for f in figures if f.group == "peers" and "implementation" in f.params]
    impls = list(dict.fromkeys(str(f.params["implementation"]) for f in mine))
    if not impls:
        return []
    lines = ["### Side by side", ""]
    for kind, title in (
        ("delta", "Delta bytes of one add (median over the adds counted at that size)"),
        ("state", "Encoded state, bytes per element"),
    ):
        chosen = {
            (str(f.params["implementation"]), int(f.params["set_size"])): f
            for f in mine
            if f.params.get("kind") == kind and not f.params.get("variant")
        }
        if not chosen:
            continue
        sizes = sorted({size for _, size in chosen})
        lines += [f"{title}:", "", "| set size | " + " | ".join(impls) + " |", "|--:|" + "--:|" * len(impls)]
        for size in sizes:
            cells = [
                fmt(chosen[i, size].stats.median, chosen[i, size].stats.unit) if (i, size) in chosen else ""
                for i in impls
            ]
            lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
        lines.append("")
    rates = [f for f in mine if str(f.params.get("kind", "")).endswith("_merge")]
    if rates:
        workloads = list(dict.fromkeys((str(f.params["kind"]), int(f.params["count"])) for f in rates))
        by = {(str(f.params["implementation"]), str(f.params["kind"]), int(f.params["count"])): f for f in rates}
        lines += [
            "Merge throughput (decode + merge), median; in brackets the ratio to the first baseline (the same "
            "runtime's raw decode):",
            "",
            "| workload | " + " | ".join(impls) + " |",
            "|---|" + "--:|" * len(impls),
        ]
        for kind, count in workloads:
            name = f"{count:,} single-add deltas" if kind == "delta_merge" else f"a state of {count:,} into {count:,}"
            cells = []
            for impl in impls:
                f = by.get((impl, kind, count))
                if f is None:
                    cells.append("")
                    continue
                ratio = f" ({ratio_text(f.ratio(f.baselines[0]))})" if f.baselines else ""
                cells.append(fmt(f.stats.median, f.stats.unit) + ratio)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


SUMMARIES: dict[str, Callable[[Sequence[Figure]], list[str]]] = {"peers": _peers_summary}


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def draw_plots(figures: Sequence[Figure], out: Path) -> list[tuple[str, str]]:
    """Draw what the figures allow; returns (file name, title) of each plot written."""
    import matplotlib

    matplotlib.use("Agg")
    drawn: list[tuple[str, str]] = []
    for name, title, draw in (
        ("convergence.png", "Convergence after a partition heals", _convergence),
        ("latency.png", "Write latency at half the peak rate", _latency),
        ("throughput.png", "Throughput against requests in flight", _throughput),
        ("sync_cost.png", "Synchronisation cost over the minimum, beside Enes et al.", _sync_cost),
        ("peers.png", "Delta and state bytes against the set size, beside delta-crdts and pycrdt", _peers),
        ("sets.png", "Set operations against the set's size, beside Redis", _sets),
    ):
        if draw(figures, out / name):
            drawn.append((name, title))
    return drawn


def _errors(stats: Sequence[Stats]) -> list[list[float]]:
    return [[s.median - s.minimum for s in stats], [s.maximum - s.median for s in stats]]


def _plain(value: float, _: object) -> str:
    return f"{value:g}"


def _convergence(figures: Sequence[Figure], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    series: dict[str, dict[int, list[tuple[int, Stats]]]] = {"time": {}, "bytes": {}, "minimum": {}}
    for f in figures:
        if f.group != "replication" or "regions" not in f.params:
            continue
        kind = "time" if f.name.startswith("time to converge") else "bytes" if f.name.startswith("bytes") else ""
        if kind:
            series[kind].setdefault(int(f.params["regions"]), []).append((int(f.params["keys"]), f.stats))
        if kind == "bytes" and f.baselines:
            series["minimum"].setdefault(int(f.params["regions"]), []).append(
                (int(f.params["keys"]), f.baselines[0].stats)
            )
    if not series["time"]:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind, label in ((axes[0], "time", "seconds, heal to converged"), (axes[1], "bytes", "MiB through proxies")):
        scale = 2**20 if kind == "bytes" else 1
        for i, (regions, points) in enumerate(sorted(series[kind].items())):
            points.sort()
            xs = [k for k, _ in points]
            st = [Stats(s.median / scale, s.minimum / scale, s.maximum / scale, s.unit) for _, s in points]
            color = f"C{i}"
            ax.errorbar(
                xs,
                [s.median for s in st],
                yerr=_errors(st),
                marker="o",
                capsize=3,
                color=color,
                label=f"{regions} regions",
            )
            if kind == "bytes" and regions in series["minimum"]:
                least = sorted(series["minimum"][regions])
                ax.plot(
                    [k for k, _ in least],
                    [s.median / scale for _, s in least],
                    linestyle=":",
                    marker="x",
                    color=color,
                    label=f"{regions} regions: minimum",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.yaxis.set_minor_formatter(FuncFormatter(_plain))
        ax.set_xlabel("diverged keys")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_title("time to converge (median, min..max; log-log)")
    axes[1].set_title("bytes to converge, beside the minimum (log-log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _latency(figures: Sequence[Figure], path: Path) -> bool:
    import matplotlib.pyplot as plt

    lat = [f for f in figures if f.group == "node" and "percentile" in f.params]
    if not lat:
        return False
    labels = ["p" + f"{float(f.params['percentile']):g}".replace(".", "") for f in lat]
    columns: list[tuple[str, list[Stats]]] = [("node", [f.stats for f in lat])]
    for i, short in enumerate(("echo server", "raw LMDB commit")):
        if all(len(f.baselines) > i for f in lat):
            columns.append((short, [f.baselines[i].stats for f in lat]))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / len(columns)
    for j, (name, st) in enumerate(columns):
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(lat))]
        ax.bar(xs, [s.median for s in st], width, yerr=_errors(st), capsize=3, label=name)
    ax.set_xticks(range(len(lat)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.set_title(lat[0].name.split(" at ", 1)[-1].join(("single-op write latency at ", "")))
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _throughput(figures: Sequence[Figure], path: Path) -> bool:
    import matplotlib.pyplot as plt

    kinds = {"mutate": "single-op writes", "get": "reads"}
    chosen = {
        kind: sorted(
            (
                f
                for f in figures
                if f.group == "node" and f.params.get("kind") == kind and f.params.get("ops_per_request") == 1
            ),
            key=lambda f: float(f.params["in_flight"]),
        )
        for kind in kinds
    }
    if not any(chosen.values()):
        return False
    fig, axes = plt.subplots(1, len(kinds), figsize=(11, 4.2), squeeze=False)
    for ax, (kind, title) in zip(axes[0], kinds.items(), strict=True):
        series = chosen[kind]
        if not series:
            ax.set_visible(False)
            continue
        xs = [float(f.params["in_flight"]) for f in series]
        ax.errorbar(
            xs,
            [f.stats.median for f in series],
            yerr=_errors([f.stats for f in series]),
            marker="o",
            capsize=3,
            label="node",
        )
        for i, short in enumerate(("echo server", "raw LMDB")):
            if all(len(f.baselines) > i for f in series):
                st = [f.baselines[i].stats for f in series]
                ax.errorbar(
                    xs, [s.median for s in st], yerr=_errors(st), marker="s", capsize=3, label=short, linestyle="--"
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        shown = [f.stats for f in series] + [b.stats for f in series for b in f.baselines]
        if max(s.maximum for s in shown) > 20 * min(s.minimum for s in shown):
            ax.set_yscale("log")
            ax.set_ylabel(series[0].stats.unit + " (log scale)")
        else:
            ax.set_ylim(bottom=0)
            ax.set_ylabel(series[0].stats.unit)
        ax.set_xlabel("requests in flight")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _sync_cost(figures: Sequence[Figure], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    cells = [f for f in figures if f.group == "sync_cost" and f.baselines]
    if not cells:
        return False
    topologies = list(dict.fromkeys(str(f.params["topology"]) for f in cells))
    series = (
        ("all", "crdtstore, every message"),
        ("entries", "crdtstore, deltas only"),
        ("state-based", "state-based"),
    )
    fig, axes = plt.subplots(1, len(topologies), figsize=(6 * len(topologies), 4.2), squeeze=False)
    for ax, topology in zip(axes[0], topologies, strict=True):
        mine = [f for f in cells if f.params.get("topology") == topology]
        workloads = list(dict.fromkeys(str(f.params["workload"]) for f in mine))
        width = 0.8 / len(series)
        for j, (counted, label) in enumerate(series):
            ratios = {
                str(f.params["workload"]): f.ratio(f.baselines[0]) for f in mine if f.params.get("counted") == counted
            }
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(workloads))]
            ax.bar(xs, [ratios.get(w, math.nan) for w in workloads], width, label=label)
        delta, state = float(mine[0].params["published_delta_bp_rr"]), float(mine[0].params["published_state_based"])
        ax.axhline(delta, linestyle="--", color="black", linewidth=1, label=f"Enes et al. delta BP+RR ({delta:g}x)")
        ax.axhline(state, linestyle=":", color="black", linewidth=1, label=f"Enes et al. state-based ({state:g}x)")
        ax.set_xticks(range(len(workloads)), workloads, rotation=20)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        rounds = mine[0].params.get("rounds", "?")
        ax.set_title(f"{topology}, 15 nodes, {rounds} rounds: bytes over the minimum")
        ax.set_ylabel("x the minimum (log scale)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _peers(figures: Sequence[Figure], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    sized = [f for f in figures if f.group == "peers" and f.params.get("kind") in ("delta", "state")]
    if not sized:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    impls = list(dict.fromkeys(str(f.params["implementation"]) for f in sized))
    for ax, kind in ((axes[0], "delta"), (axes[1], "state")):
        series: dict[tuple[str, str], list[Figure]] = {}
        for f in sized:
            if f.params["kind"] == kind:
                series.setdefault((str(f.params["implementation"]), str(f.params.get("variant", ""))), []).append(f)
        for (impl, variant), points in series.items():
            points.sort(key=lambda f: float(f.params["set_size"]))
            st = [f.stats for f in points]
            ax.errorbar(
                [float(f.params["set_size"]) for f in points],
                [s.median for s in st],
                yerr=_errors(st),
                marker="x" if variant else "o",
                linestyle=":" if variant else "-",
                capsize=3,
                color=f"C{impls.index(impl)}",
                label=f"{impl}: {variant.split(',')[0]}" if variant else impl,
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.set_xlabel("members in the set (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(FuncFormatter(_plain))
    axes[0].set_ylabel("bytes (log scale)")
    axes[0].set_title("delta of one add as the set grows")
    axes[0].legend(fontsize=7, loc="center right")
    axes[1].set_ylim(bottom=0)
    axes[1].set_ylabel("bytes per element")
    axes[1].set_title("encoded state per element")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _sets(figures: Sequence[Figure], path: Path) -> bool:
    """Adds, removes and membership reads per second against the set's size, crdtstore and Redis (same run)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    kinds = (("add", "add one member"), ("remove", "remove one member"), ("member", "membership of one member"))
    mine = [f for f in figures if f.group == "redis_anchor" and f.params.get("kind") in dict(kinds) and f.baselines]
    if not mine:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for kind, label in kinds:
        points = sorted((max(1, int(f.params["set_size"])), f) for f in mine if f.params.get("kind") == kind)
        if not points:
            continue
        sizes = [n for n, _ in points]
        line = ax.errorbar(
            sizes,
            [f.stats.median for _, f in points],
            yerr=_errors([f.stats for _, f in points]),
            marker="o",
            capsize=3,
            label=f"crdtstore: {label}",
        )
        ax.plot(
            sizes,
            [f.baselines[0].stats.median for _, f in points],
            linestyle="--",
            marker="x",
            color=line[0].get_color(),
            label=f"Redis: {label}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.set_xlabel("members in the set (0 drawn at 1)")
    ax.set_ylabel("operations per second, 1 in flight (log)")
    ax.set_title("One durable set operation against the set's size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
