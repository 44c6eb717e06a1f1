"""Cost vs number of memslots, array (Linux 5.15) vs tree (5.17, 6.12): a log-log plot (reference §6.5, §8).

The top row shows the engine's exact work counts per iteration of each
modelled ``memslot_perf_test`` workload, written by
``benchmarks/memslot_perf.py --write-costs`` into ``scaling_costs.json``
(deterministic: the same engine gives the same counts). "Work" is the number
of elementary operations: tree nodes visited, hash operations, array entries
scanned, shifted or probed, and slot structs copied. Given the file a
benchmark run wrote (``memslot_perf.py --results FILE``), a second row shows
the wall times measured in that run: the models (Python) and, for setup and
MOVE, the real kernel of the machine it ran on.

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
#: Measured columns of a results file (table 1 of memslot_perf), drawn in the second row.
MEASURED = {"tree on": dict(color=OKABE_ITO["green"], marker="^", label="tree model, history on"),
            "tree off": dict(color=OKABE_ITO["blue"], marker="o", label="tree model, history off"),
            "array": dict(color=OKABE_ITO["vermillion"], marker="s", label="array model"),
            "kernel": dict(color=OKABE_ITO["black"], marker="D", linestyle="--", label="real kernel")}
#: Second-row panels drawn from table 1 (with the kernel): workload -> (operation, title).
MEASURED_OPS = {"setup": ("setup", "setup: seconds"), "move inactive": ("MOVE", "MOVE: seconds per ioctl")}


def load_costs(path=None):
    """The rows of ``scaling_costs.json``: design, test, n, work, bytes_copied, sampled."""
    return json.loads(Path(path or COSTS_JSON).read_text())


def load_results(path):
    """A results file of ``benchmarks/memslot_perf.py --results FILE`` (JSON)."""
    return json.loads(Path(path).read_text())


def plot_scaling(rows=None, metric="work", results=None):
    """Log-log panels, one per workload: ``metric`` vs N for both designs.

    Hollow markers are points whose iteration was sampled and scaled up by
    the benchmark (only with its ``--budget``). With ``results`` (a path or
    the loaded results file) a second row draws the measured wall times.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    rows = load_costs() if rows is None else rows
    if isinstance(results, (str, Path)):
        results = load_results(results)
    fig = new_figure(13, 3.8 if results is None else 7.9)
    grid = fig.subplots(1 if results is None else 2, len(PANELS), squeeze=False)
    for ax, (test, title) in zip(grid[0], PANELS):
        for design, style in STYLE.items():
            _draw(ax, [(r["n"], max(r[metric], 1), r["sampled"]) for r in rows
                       if r["design"] == design and r["test"] == test], style)
        _axes(ax, title)
    grid[0][0].set_ylabel(METRICS[metric], fontsize=MIN_FONT)
    handles = [Line2D([], [], color=st["color"], marker=st["marker"], label=st["label"]) for st in STYLE.values()]
    handles.append(Line2D([], [], color=OKABE_ITO["black"], marker="o", linestyle="none",
                          markerfacecolor="white", label="sampled, scaled up"))
    title = (f"Linux 5.15 array vs 5.17+ tree models: {METRICS[metric]} grows O(n) or O(n^2) for the "
             "array, O(log n) per call for the tree")
    if results is not None:
        _draw_measured(fig, grid[1], results)
        kernel = results.get("kernel_release")
        title += (f"\nbottom row: wall time measured in one run, models in Python vs "
                  f"{'the real kernel, Linux ' + kernel if kernel else 'no real kernel (no /dev/kvm)'} "
                  f"({results['cpus']} CPUs, load average {results['load'][0]:.1f})")
    fig.suptitle(title, fontsize=MIN_FONT)
    below_title = 22 + 14 * title.count("\n")                # px
    # above the panels, never over a curve
    fig.legend(handles=handles, fontsize=MIN_FONT, loc="upper center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, 1 - below_title / fig.bbox.height))
    height = fig.bbox.height
    fig.subplots_adjust(left=0.07, right=0.99, bottom=(0.15 * height if results is None else 60) / height,
                        top=1 - (62 + below_title) / height, wspace=0.32, hspace=0.62)
    return fig


def _draw(ax, points, style):
    """One line through ``(n, y, sampled)`` points; hollow markers where sampled."""
    pts = sorted(points)
    if not pts:
        return
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=style["color"], label=style["label"],
            linestyle=style.get("linestyle", "-"))
    for n, y, sampled in pts:
        ax.plot([n], [y], linestyle="none", marker=style["marker"], color=style["color"],
                markerfacecolor="white" if sampled else style["color"])


def _axes(ax, title):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(textwrap.fill(title, 26), fontsize=MIN_FONT)
    ax.set_xlabel("memslots (N)", fontsize=MIN_FONT)
    ax.tick_params(labelsize=MIN_FONT)
    ax.grid(True, which="major", alpha=0.3)


def _draw_measured(fig, axes, results):
    """Second row, one y range: setup and MOVE with the kernel (table 1), the rest per iteration (table 2)."""
    for ax in axes[1:]:
        ax.sharey(axes[0])
    for ax, (test, _) in zip(axes, PANELS):
        op, title = MEASURED_OPS.get(test, (None, f"{test}: seconds per iteration"))
        if op is not None:
            for column, style in MEASURED.items():
                _draw(ax, [(r["n"], r["seconds"], False) for r in results["table1"]
                           if r["op"] == op and r["column"] == column], style)
        else:
            for design, column in (("array", "array"), ("tree", "tree off")):
                _draw(ax, [(r["n"], r["seconds"], r["sampled"]) for r in results["table2"]
                           if r["design"] == design and r["test"] == test], MEASURED[column])
        _axes(ax, title)
    axes[0].set_ylabel("wall time (s), measured", fontsize=MIN_FONT)
    handles = [Line2D([], [], color=st["color"], marker=st["marker"], linestyle=st.get("linestyle", "-"),
                      label=st["label"]) for st in MEASURED.values()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=MIN_FONT, frameon=False,
               bbox_to_anchor=(0.5, 0))
