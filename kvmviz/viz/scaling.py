"""Cost vs number of memslots, array (Linux 5.15) vs tree (5.17, 6.12): a log-log plot (reference §6.5, §8).

The figures are the engine's exact work counts per iteration of each
modelled ``memslot_perf_test`` workload, written by
``benchmarks/memslot_perf.py --write-costs`` into ``scaling_costs.json``
(deterministic: the same engine gives the same counts). "Work" is the number
of elementary operations: tree nodes visited, hash operations, array entries
scanned, shifted or probed, and slot structs copied.

>>> rows = load_costs()
>>> sorted({r["design"] for r in rows}), "setup" in {r["test"] for r in rows}
(['array', 'tree'], True)
>>> fig = plot_scaling(rows)
>>> [ax.get_xscale() for ax in fig.axes][:2], fig.axes[0].get_xlabel()
(['log', 'log'], 'memslots (N)')
"""

import json
import textwrap
from pathlib import Path

from matplotlib.lines import Line2D

from .figure import MIN_FONT, OKABE_ITO, new_figure

COSTS_JSON = Path(__file__).with_name("scaling_costs.json")
#: Workloads in plotting order, with the titles the panels get.
PANELS = (("setup", "slot setup (create N slots)"), ("move inactive", "move: MOVE the last slot and back"),
          ("unmap", "unmap: 4 KiB notifier calls"), ("unmap 2M", "unmap 2M: 2 MiB notifier calls"),
          ("map", "map: guest faults + host unmap"))
STYLE = {"array": dict(color=OKABE_ITO["vermillion"], marker="s", label="array (5.10-5.15)"),
         "tree": dict(color=OKABE_ITO["blue"], marker="o", label="tree (5.17+)")}
METRICS = {"work": "elementary operations per iteration", "bytes_copied": "bytes copied per iteration"}


def load_costs(path=None):
    """The rows of ``scaling_costs.json``: design, test, n, work, bytes_copied, sampled."""
    return json.loads(Path(path or COSTS_JSON).read_text())


def plot_scaling(rows=None, metric="work"):
    """Log-log panels, one per workload: ``metric`` vs N for both designs.

    Hollow markers are points whose iteration was sampled and scaled up by
    the benchmark (only where one iteration would take minutes).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    rows = load_costs() if rows is None else rows
    fig = new_figure(13, 3.8)
    axes = fig.subplots(1, len(PANELS))
    for ax, (test, title) in zip(axes, PANELS):
        for design, style in STYLE.items():
            pts = sorted((r["n"], max(r[metric], 1), r["sampled"]) for r in rows
                         if r["design"] == design and r["test"] == test)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=style["color"], label=style["label"])
            for n, y, sampled in pts:
                ax.plot([n], [y], linestyle="none", marker=style["marker"], color=style["color"],
                        markerfacecolor="white" if sampled else style["color"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(textwrap.fill(title, 26), fontsize=MIN_FONT)
        ax.set_xlabel("memslots (N)", fontsize=MIN_FONT)
        ax.tick_params(labelsize=MIN_FONT)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(METRICS[metric], fontsize=MIN_FONT)
    handles = [Line2D([], [], color=st["color"], marker=st["marker"], label=st["label"]) for st in STYLE.values()]
    handles.append(Line2D([], [], color=OKABE_ITO["black"], marker="o", linestyle="none",
                          markerfacecolor="white", label="sampled, scaled up"))
    # above the panels, never over a curve
    fig.legend(handles=handles, fontsize=MIN_FONT, loc="upper center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, 1 - 22 / fig.bbox.height))
    fig.suptitle(f"Linux 5.15 array vs 5.17+ tree models: {METRICS[metric]} grows O(n) or O(n^2) for the "
                 "array, O(log n) per call for the tree", fontsize=MIN_FONT)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.15, top=1 - 84 / fig.bbox.height, wspace=0.32)
    return fig
