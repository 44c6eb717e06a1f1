"""Plot of a replayed QEMU trace: slots over time, with the changes marked.

Calls run along x (in logged order), guest frame numbers up y (symlog, so the
small legacy slots below 1 MiB stay visible next to hundreds of GiB of RAM).
Each slot of one address space is a bar from the call that created it to the
call that deleted it, coloured by its flags; markers show creates, deletes,
flag changes, moves, mismatches and calls outside the model.

>>> from kvmviz import trace
>>> fig = plot_replay(trace.replay(trace.load("qemu-vga-dirty-log.log")))
>>> fig.axes[0].get_xlabel()
'call number (logged order)'
"""

from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from ..engine.constants import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
from ..export import model_label
from .figure import MIN_FONT, OKABE_ITO as C, new_figure

BAR_COLOURS = {"RAM": C["sky"], "READONLY": C["yellow"], "LOG_DIRTY_PAGES": C["blue"]}
MARKERS = {  # change type: (marker, colour, legend label)
    "CREATE": ("^", C["green"], "CREATE"),
    "DELETE": ("v", C["vermillion"], "DELETE"),
    "FLAGS_ONLY": ("D", C["purple"], "FLAGS_ONLY (dirty log on/off)"),
    "MOVE": (">", C["orange"], "MOVE"),
}
MISMATCH = ("x", C["black"], "mismatch: the model's ret differs")
OUTSIDE = ("+", C["black"], "guest_memfd, outside the model")


def _bar_colour(flags):
    if flags & KVM_MEM_READONLY:
        return BAR_COLOURS["READONLY"]
    if flags & KVM_MEM_LOG_DIRTY_PAGES:
        return BAR_COLOURS["LOG_DIRTY_PAGES"]
    return BAR_COLOURS["RAM"]


def _lifetimes(report, as_id):
    """Bars ``(x0, x1, base_gfn, npages, flags)``: one per slot value and time span."""
    bars, open_ = [], {}
    for rc in report.calls:
        c = rc.call
        if c.as_id != as_id or rc.before == rc.after:
            continue
        if c.id in open_:
            x0, span = open_.pop(c.id)
            bars.append((x0, rc.number, *span))
        if rc.after is not None:
            open_[c.id] = (rc.number, rc.after)
    end = len(report.calls) + 1
    bars += [(x0, end, *span) for x0, span in open_.values()]
    return bars


def _marks(report, as_id):
    """Marker positions ``{kind: ([x], [gfn])}`` for the calls of ``as_id``."""
    marks = {}
    for rc in report.calls:
        c = rc.call
        if c.as_id != as_id:
            continue
        span = rc.after or rc.before
        gfn = span[0] if span else c.base_gfn
        kinds = []
        if rc.outside:
            kinds.append("OUTSIDE")
        elif rc.modelled == 0 and rc.change in MARKERS:
            kinds.append(rc.change)
        if rc.mismatch is not None:
            kinds.append("MISMATCH")
        for kind in kinds:
            xs, ys = marks.setdefault(kind, ([], []))
            xs.append(rc.number)
            ys.append(gfn)
    return marks


def plot_replay(report, as_id=0, name="trace", yscale="symlog"):
    """Slots of address space ``as_id`` over the calls of a ``ReplayReport``.

    Returns a ``matplotlib.figure.Figure``; ``name`` goes into the title,
    whose second line ends with the version the trace was replayed on.

    >>> from kvmviz import trace
    >>> fig = plot_replay(trace.replay(trace.load("qemu-boot-smm.log")), as_id=1, name="SMM boot")
    >>> fig.axes[0].get_title().splitlines()[0]
    'SMM boot, address space 1: 54 calls, 32 CREATE, 22 DELETE, 0 FLAGS_ONLY'
    >>> from kvmviz.engine.kernels import DEFAULT_KERNEL
    >>> fig.axes[0].get_title().endswith(f"; replayed on the Linux {DEFAULT_KERNEL} model")
    True
    """
    fig = new_figure(10, 5.5)
    ax = fig.add_axes((0.13, 0.12, 0.52, 0.76))
    bars = _lifetimes(report, as_id)
    if yscale == "symlog":
        ax.set_yscale("symlog", base=16, linthresh=0x100, linscale=0.5)
    else:
        ax.set_yscale(yscale)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):#x}"))
    ax.set_xlim(0.5, len(report.calls) + 1)
    top = max([base + npages for *_x, base, npages, _f in bars] + [0x100])
    ax.set_ylim(0, top * 2)
    for x0, x1, base, npages, flags in bars:
        y0, y1 = _visible(ax, base, base + npages)
        ax.broken_barh([(x0, x1 - x0)], (y0, y1 - y0), facecolors=_bar_colour(flags),
                       edgecolors=C["black"], linewidth=0.5)
    handles = [Patch(facecolor=c, edgecolor=C["black"], label=f"slot: {k}") for k, c in BAR_COLOURS.items()]
    marks = _marks(report, as_id)
    styles = {**MARKERS, "MISMATCH": MISMATCH, "OUTSIDE": OUTSIDE}
    for kind, (marker, colour, label) in styles.items():
        if kind in marks:
            xs, ys = marks[kind]
            ax.scatter(xs, ys, marker=marker, color=colour, s=36, zorder=3, linewidths=1.2)
        handles.append(Line2D([], [], marker=marker, color=colour, linestyle="none", label=label))
    ax.set_xlabel("call number (logged order)", fontsize=MIN_FONT)
    ax.set_ylabel(f"guest frame number (gfn, {yscale} scale)", fontsize=MIN_FONT)
    ax.tick_params(labelsize=MIN_FONT)
    ax.set_title(_title(report, as_id, name), fontsize=MIN_FONT)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=MIN_FONT, frameon=False)
    return fig


#: The thinnest a slot's bar is drawn, in px: a few pages next to GiBs must still show (and its colour).
MIN_BAR_PX = 5


def _visible(ax, start, end):
    """``(start, end)`` in gfns, widened around its middle to at least ``MIN_BAR_PX`` on screen."""
    to_px, to_gfn = ax.transData.transform, ax.transData.inverted().transform
    y0, y1 = (to_px((0, v))[1] for v in (start, end))
    if y1 - y0 >= MIN_BAR_PX:
        return start, end
    mid = (y0 + y1) / 2
    return tuple(max(0.0, to_gfn((0, mid + d))[1]) for d in (-MIN_BAR_PX / 2, MIN_BAR_PX / 2))


def _title(report, as_id, name):
    mine = [rc for rc in report.calls if rc.call.as_id == as_id]
    counts = {k: sum(rc.modelled == 0 and rc.change == k and not rc.outside for rc in mine)
              for k in ("CREATE", "DELETE", "FLAGS_ONLY")}
    head = f"{name}, address space {as_id}: {len(mine)} calls, " + ", ".join(f"{v} {k}" for k, v in counts.items())
    slots = len(report.vm.memslots(as_id))
    tail = (f"{slots} slots at the end, generation {report.vm.generation(as_id):#x}; "
            f"{sum(rc.mismatch is not None for rc in mine)} mismatches; replayed on the {model_label(report.vm)}")
    return f"{head}\n{tail}"
