"""Matplotlib figures of the memslot state: sets, trees, generations, one step.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot
(no global state, no figure leaks) and reads the VM without touching it: no
lookups that move ``last_used_slot`` or the cost counters. Colours are the
Okabe-Ito palette (colour-blind safe); the same state always gives the same
pixels. Every figure title starts with the version the VM models
(``export.model_label``: "Linux 6.12 model"); the 5.15 array design has
no trees, so ``plot_trees`` refuses it and the set views show its one
structure (and, mid-update, the scratch copy).

>>> import kvmviz
>>> vm = kvmviz.VM()
>>> _ = vm.set_user_memory_region(1, 0, 0x100000, 0x10000, 0x7f0000000000)
>>> fig = plot_memslots(vm)
>>> fig.axes[0].get_title().splitlines()[0]
'as0/set0 (inactive, generation 0x0)'
>>> len(png_bytes(fig)) > 1000
True
"""

import io
import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from matplotlib.figure import Figure
from matplotlib.collections import PatchCollection
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from ..engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP, flag_names
from ..export import model_label
from ..engine.step import STAGES, Step

#: The Okabe-Ito colour-blind-safe palette.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
C = OKABE_ITO
SAME, DIFFERS, INVALID, EMPTY = C["sky"], C["orange"], C["vermillion"], "white"
SET_COLOURS = (C["blue"], C["orange"])
LOCK_COLOURS = {"slots_lock": C["blue"], "slots_arch_lock": C["green"], "mn_invalidate_lock": C["vermillion"]}
#: Above this many slots in a set, slots are aggregated into gfn bins.
MAX_DRAWN = 64
BINS = 256
DPI = 72
_LABEL_BOX = {"facecolor": "white", "alpha": 0.85, "pad": 1, "linewidth": 0}   # text on hatching


class KvmFigure(Figure):
    """A ``Figure`` that shows itself as a PNG in Jupyter, with or without pyplot.

    >>> KvmFigure(figsize=(1, 1))._repr_png_()[:4]
    b'\\x89PNG'
    """

    def _repr_png_(self):
        return png_bytes(self)


def _figure(width, height):
    # fixed margins instead of a layout engine: constrained layout doubled the drawing time
    fig = KvmFigure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig):
    """Render ``fig`` to PNG bytes, with no metadata (same figure, same bytes).

    Draws the Agg canvas and encodes its buffer directly: a third faster
    than ``savefig``, which matters for the Stepper's per-step redraw.

    >>> png_bytes(_figure(1, 1))[:4]
    b'\\x89PNG'
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    buf = io.BytesIO()
    image.save(buf, format="png", compress_level=1)
    return buf.getvalue()


def clear_artists(fig):
    """Remove the data artists and legends of ``fig``, keeping axes and ticks.

    Redrawing into a cleared figure skips building axes and tick objects,
    which is most of the cost of a small figure (the Stepper redraws per step).

    >>> fig = _figure(2, 2); ax = fig.subplots(); _ = ax.plot([1, 2]); clear_artists(fig); ax.lines
    <Axes.ArtistList of 0 lines>
    """
    for ax in fig.axes:
        for artist in (*ax.lines, *ax.patches, *ax.collections, *ax.texts, *ax.images):
            artist.remove()
        if ax.legend_ is not None:
            ax.legend_.remove()
    for legend in list(fig.legends):
        legend.remove()


def gen_text(gen):
    """A generation as the kernel's value reads: hex, ``|IP`` for bit 63.

    >>> gen_text(2), gen_text(2 | IP)
    ('0x2', '0x2|IP')
    """
    return f"{gen & ~IP:#x}|IP" if gen & IP else f"{gen:#x}"


#: Average width of a character of a 10-point title at ``DPI``, in pixels (DejaVu Sans, measured).
_TITLE_CHAR_PX = 5.3


def titled(vm, text, pixels=576):
    """A title ``pixels`` wide: the modelled version, then ``text``.

    The version comes first, with the variant and address spaces when they
    are not the usual ones (``export.model_label``); when that does not fit
    on one line they shrink to ``Linux 6.12 seed, 1 AS``, and only a title
    that still does not fit is wrapped (the layouts leave room for one line).

    >>> import kvmviz
    >>> titled(kvmviz.VM(kernel="6.12"), "as0 at rest")
    'Linux 6.12 model, as0 at rest'
    >>> titled(kvmviz.VM(kernel="6.12", variant="no-catch-up", address_spaces=1), "as0 at rest: " + "x" * 60)
    'Linux 6.12 no-catch-up, 1 AS: as0 at rest: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
    """
    width = int(pixels / _TITLE_CHAR_PX)
    full = f"{model_label(vm)}, {text}"
    if len(full) <= width:
        return full
    extra = (f" {vm.variant}" if vm.variant != "merged" else "") + (
        f", {vm.address_spaces} AS" if "address space" in model_label(vm) else "")
    return textwrap.fill(f"Linux {vm.kernel}{extra}: {text}", width, break_on_hyphens=False)


def _width_px(fig, ax=None):
    """Width of ``fig`` (or of its axes ``ax``) in pixels, for ``titled``."""
    return fig.get_figwidth() * fig.dpi * (ax.get_position().width if ax is not None else 1)


# -- what the state is ---------------------------------------------------------
def current_step(vm):
    """The last applied history event if it is a ``Step`` (else None).

    >>> import kvmviz
    >>> vm = kvmviz.VM(); current_step(vm) is None
    True
    """
    h = vm.history
    event = h.events[h.cursor - 1] if h.cursor else None
    return event if isinstance(event, Step) else None


def _touched(step, as_id):
    """Labels a step put into each set of ``as_id``: {node_idx: (old, new)}."""
    if step is None:
        return {}
    return {idx: (old, new) for a, idx, old, new in step.touched if a == as_id and old != "gen"}


def state_summary(vm, as_id=0):
    """One sentence on the state of an address space, for figure titles.

    >>> import kvmviz
    >>> state_summary(kvmviz.VM())
    'as0 at rest: both sets hold the same 0 slots; set0 active, generation 0x0'
    """
    sets = vm.sets[as_id]
    active = vm.active_idx[as_id]
    uids = [{s.uid for s in st.slots()} for st in sets]
    gen = gen_text(sets[active].generation)
    if sets[0] is sets[1]:
        return f"as{as_id} at rest: one array of {len(uids[0])} slots (5.15 copies it per update); generation {gen}"
    if uids[0] == uids[1] and vm.implementation == "array":       # kvm_dup_memslots' scratch copy
        return (f"as{as_id} mid-update: the copy holds the same {len(uids[0])} slots; "
                f"set{active} active, generation {gen}")
    if uids[0] == uids[1]:
        return (f"as{as_id} at rest: both sets hold the same {len(uids[0])} slots; "
                f"set{active} active, generation {gen}")
    diff = sorted(f"#{u}" for u in uids[0] ^ uids[1])
    return (f"as{as_id} mid-update: the sets differ in {', '.join(diff[:6])}; "
            f"set{active} active, generation {gen}")


# -- the two sets of an address space -------------------------------------------
class _Bands:
    """Piecewise-linear axis: each slot and each gap between boundaries gets a band.

    Tiny slots stay readable next to huge ones; ticks keep the real values.
    """

    def __init__(self, boundaries):
        self.edges = sorted(set(boundaries))
        self.pos = np.arange(len(self.edges), dtype=float)

    def __call__(self, value):
        return float(np.interp(value, self.edges, self.pos))


def _slot_colour(slot, other_uids):
    if slot.invalid:
        return INVALID, "xx"
    return (SAME, None) if slot.uid in other_uids else (DIFFERS, None)


def _slot_text(slot, short=False):
    if short:
        return f"{slot.id}:{slot.label}"
    return f"id {slot.id} {slot.label} {flag_names(slot.flags)}\n{slot.npages:#x} pages"


def _set_title(vm, st, alias=False):
    active = vm.active_idx[st.as_id] == st.node_idx
    role = "ACTIVE" if active else "inactive"
    # the 5.15 array at rest has one structure: both views are it (kvm_dup_memslots copies per update)
    what = "the same structure: no copy at rest" if alias else f"{len(st)} slots"
    return f"{st.name} ({role}, generation {gen_text(st.generation)})\n{what}"


def _frame(ax, active):
    for spine in ax.spines.values():
        spine.set_edgecolor(C["green"] if active else "0.6")
        spine.set_linewidth(3 if active else 1)


def _boxes(ax, rects, facecolors, linewidths=0.8, edgecolor="black", hatch=None):
    """Draw (x, y, w, h) boxes as one collection (far faster than one patch each)."""
    if rects:
        ax.add_collection(PatchCollection([Rectangle((x, y), w, h) for x, y, w, h in rects],
                                          facecolors=facecolors, edgecolors=edgecolor,
                                          linewidths=linewidths, hatch=hatch))


def _draw_set_bands(ax, vm, st, other_uids, bands, touched):
    """Draw each slot of ``st`` as a box over its gfn band; gaps hatched."""
    slots = st.slots()
    short = len(bands.edges) > 24
    groups = {None: ([], [], []), "xx": ([], [], [])}
    covered = []
    for slot in slots:
        y0, y1 = bands(slot.base_gfn), bands(slot.end_gfn)
        colour, hatch = _slot_colour(slot, other_uids)
        hit = slot.label == touched
        rects, colours, widths = groups[hatch]
        rects.append((0.05, y0, 0.9, y1 - y0))
        colours.append(colour)
        widths.append(3 if hit else 0.8)
        ax.text(0.5, (y0 + y1) / 2, _slot_text(slot, short) + ("  (touched)" if hit and not short else ""),
                ha="center", va="center", fontsize=7 if short else 10,
                fontweight="bold" if hit else "normal", bbox=_LABEL_BOX if slot.invalid else None)
        covered.append((y0, y1))
    edges = [0.0] + [y for pair in covered for y in pair] + [bands.pos[-1]]
    gaps = [(0.05, y0, 0.9, y1 - y0) for y0, y1 in zip(edges[::2], edges[1::2]) if y1 - y0 > 1e-9]
    _boxes(ax, gaps, EMPTY, 0.5, "0.6", "..")
    if not short:
        for _, y0, _, h in gaps:
            ax.text(0.5, y0 + h / 2, "empty", ha="center", va="center", fontsize=10, color="0.3",
                    bbox=_LABEL_BOX)
    for hatch, (rects, colours, widths) in groups.items():
        _boxes(ax, rects, colours, widths, hatch=hatch)
    ax.set_xlim(0, 1)
    ax.set_xticks([])


def _bands_for(vm, as_id):
    bounds = [0]
    for st in vm.sets[as_id]:
        for slot in st.slots():
            bounds += (slot.base_gfn, slot.end_gfn)
    if len(bounds) == 1:
        bounds.append(0x100)
    return _Bands(bounds)


def _coverage(slots, edges):
    """Fraction of each gfn bin covered by ``slots`` (sorted, non-overlapping)."""
    if not slots:
        return np.zeros(len(edges) - 1)
    base = np.fromiter((s.base_gfn for s in slots), dtype=float, count=len(slots))
    npages = np.fromiter((s.npages for s in slots), dtype=float, count=len(slots))
    ends = base + npages
    prefix = np.concatenate(([0.0], np.cumsum(npages)))
    k = np.searchsorted(ends, edges, side="right")
    partial = np.where(k < len(slots), np.clip(edges - base[np.minimum(k, len(slots) - 1)], 0, None), 0)
    cum = prefix[k] + partial
    return np.diff(cum) / np.diff(edges)


def _draw_set_binned(ax, vm, st, other_uids, top, touched):
    """Many slots: coverage of gfn bins, with the slots that differ marked."""
    slots = st.slots()
    edges = np.linspace(0, top, BINS + 1)
    cov = _coverage(slots, edges)
    ax.imshow(cov[:, None], extent=(0.05, 0.95, top, 0), aspect="auto", cmap="Blues",
              vmin=0, vmax=1, interpolation="nearest")
    odd = [s for s in slots if s.invalid or s.uid not in other_uids or s.label == touched]
    for slot in odd[:8]:
        colour, _ = _slot_colour(slot, other_uids)
        y = (slot.base_gfn + slot.end_gfn) / 2
        ax.plot([0.5], [y], marker="D", markersize=9, color=colour, markeredgecolor="black",
                markeredgewidth=2.5 if slot.label == touched else 1)
        ax.annotate(_slot_text(slot, short=True), (0.5, y), xytext=(8, 0), textcoords="offset points",
                    fontsize=8, va="center", fontweight="bold")
    ax.set_xlim(0, 1)
    ax.set_xticks([])


def _hex_ticks(ax, bands, limit=24):
    step = max(1, -(-len(bands.edges) // limit))
    ax.set_yticks(bands.pos[::step], [f"{e:#x}" for e in bands.edges[::step]], fontsize=10 if limit <= 24 and len(bands.edges) <= 16 else 7)


def draw_sets(axes, vm, as_id=0, step=None):
    """Draw set0 and set1 of ``as_id`` on two axes (shared gfn axis).

    Returns True when the slots were aggregated into bins.

    >>> import kvmviz
    >>> fig = _figure(6, 4); axes = fig.subplots(1, 2, sharey=True)
    >>> draw_sets(axes, kvmviz.VM())
    False
    """
    sets = vm.sets[as_id]
    touched = _touched(step, as_id)
    uids = [{s.uid for s in st.slots()} for st in sets]
    binned = max(len(st) for st in sets) > MAX_DRAWN
    bands = None if binned else _bands_for(vm, as_id)
    top = max((s.end_gfn for st in sets for s in st.slots()[-1:]), default=0x100)
    for j, (ax, st) in enumerate(zip(axes, sets)):
        new = touched.get(st.node_idx, (None, None))[1]
        other = uids[st.node_idx ^ 1]
        if binned:
            _draw_set_binned(ax, vm, st, other, top, new)
        else:
            _draw_set_bands(ax, vm, st, other, bands, new)
        ax.set_title(_set_title(vm, st, alias=j == 1 and sets[1] is sets[0]), fontsize=10,
                     color=C["green"] if vm.active_idx[as_id] == st.node_idx else "black")
        _frame(ax, vm.active_idx[as_id] == st.node_idx)
    if binned:
        axes[0].set_ylim(top, 0)
        ticks = np.linspace(0, top, 6)
        axes[0].set_yticks(ticks, [f"{int(t):#x}" for t in ticks], fontsize=7)
        axes[0].set_ylabel(f"gfn (linear; {BINS} bins, shade = fraction of the bin in a slot)", fontsize=8)
    else:
        axes[0].set_ylim(bands.pos[-1], 0)
        _hex_ticks(axes[0], bands)
        axes[0].set_ylabel("gfn (one band per slot or gap; not to scale)", fontsize=10)
    return binned


def _legend_handles(binned):
    handles = [Patch(facecolor=SAME, edgecolor="black", label="same object in both sets"),
               Patch(facecolor=DIFFERS, edgecolor="black", label="only in this set (differs)"),
               Patch(facecolor=INVALID, hatch="xx", edgecolor="black", label="INVALID copy"),
               Patch(facecolor="white", edgecolor="black", linewidth=3, label="touched by this step")]
    if not binned:
        handles.append(Patch(facecolor=EMPTY, hatch="..", edgecolor="0.6", label="empty gfn range"))
    handles.append(Patch(facecolor="white", edgecolor=C["green"], linewidth=3, label="active set"))
    return handles


def plot_memslots(vm, as_id=0, step=None, fig=None):
    """Both memslot sets of ``as_id`` side by side: slots at their gfn ranges.

    Each slot shows its id, object label and flags; objects in only one set
    (the slot being changed), the INVALID copy and empty ranges have their own
    colour or hatching; the active set is framed. Above ``MAX_DRAWN`` slots
    the sets are drawn as gfn bins. ``step`` (default: the current one)
    highlights what it touched. ``fig``, a figure this function returned
    before, is redrawn in place instead of building a new one.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); upd = vm.begin_set_user_memory_region(3, 1, 0, 0x4000, 0x10000)
    >>> for s in upd:
    ...     if s.stage == "replace": break
    >>> fig = plot_memslots(vm)
    >>> fig.get_suptitle().replace(vm.kernel, "K")
    'Linux K model, as0 mid-update: the sets differ in #1; set0 active, generation 0x0'
    """
    step = current_step(vm) if step is None else step
    if fig is None:
        fig = _figure(8, 5.5)
        axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"left": 0.13, "right": 0.98, "top": 0.86,
                                                            "bottom": 0.15, "wspace": 0.06})
    else:
        clear_artists(fig)
        axes = fig.axes
    binned = draw_sets(axes, vm, as_id, step)
    fig.suptitle(titled(vm, state_summary(vm, as_id), _width_px(fig)), fontsize=10)
    fig.legend(handles=_legend_handles(binned), loc="lower center", ncol=3, fontsize=10, frameon=False)
    return fig


# -- the three indexes of a set ---------------------------------------------------
def _treap_nodes(tree):
    """In-order (start, last, value) of the interval tree, read without counting cost."""
    out, stack, node = [], [], tree.root
    while stack or node is not None:
        while node is not None:
            stack.append(node)
            node = node.left
        node = stack.pop()
        out.append((node.key[0], node.last, node.value))
        node = node.right
    return out


def _rows(intervals):
    """Greedy lanes: overlapping intervals land on different rows."""
    ends, rows = [], []
    for start, last, _ in intervals:
        for i, end in enumerate(ends):
            if start > end:
                ends[i] = last
                rows.append(i)
                break
        else:
            ends.append(last)
            rows.append(len(ends) - 1)
    return rows


def _draw_gfn_tree(ax, st, new, other_uids):
    slots = st.slots()
    ax.set_title(f"{st.name} gfn tree: {len(slots)} nodes in base_gfn order", fontsize=9)
    ax.set_xlabel("in-order position (rbtree shape not modelled: a sorted map)", fontsize=8)
    ax.set_yticks([])
    ax.set_xticks([])
    shown = slots if len(slots) <= 16 else slots[:8] + slots[-8:]
    for i, slot in enumerate(shown):
        hit = slot.label == new
        colour, hatch = _slot_colour(slot, other_uids)
        ax.add_patch(Rectangle((i + 0.1, 0.2), 0.8, 0.6, facecolor=colour, hatch=hatch, edgecolor="black",
                               linewidth=3 if hit else 0.8))
        ax.text(i + 0.5, 0.5, f"{slot.base_gfn:#x}\n{slot.label}", ha="center", va="center", fontsize=7,
                bbox=_LABEL_BOX if slot.invalid else None)
        if i:
            ax.annotate("", (i + 0.1, 0.5), (i - 0.1, 0.5), arrowprops={"arrowstyle": "->"})
    if len(slots) > 16:
        ax.text(8, 0.05, f"... {len(slots) - 16} more ...", ha="center", fontsize=7)
    ax.set_xlim(0, max(len(shown), 4))
    ax.set_ylim(0, 1)


def _draw_hva(ax, st, new, other_uids):
    nodes = _treap_nodes(st.hva_tree)
    ax.set_title(f"{st.name} hva interval tree: {len(nodes)} ranges", fontsize=9)
    ax.set_ylabel("lane", fontsize=8)
    if not nodes:
        ax.set_xlabel("hva", fontsize=8)
        ax.set_yticks([])
        return
    if len(nodes) > MAX_DRAWN:
        starts = np.array([n[0] for n in nodes], dtype=float)
        ax.hist(starts, bins=64, color=SAME, edgecolor="black", linewidth=0.3)
        ax.set_xlabel("hva of range start (histogram)", fontsize=8)
        ax.set_ylabel("ranges", fontsize=8)
        return
    bands = _Bands([v for start, last, _ in nodes for v in (start, last + 1)])
    rows = _rows(nodes)
    for (start, last, slot), row in zip(nodes, rows):
        x0, x1 = bands(start), bands(last + 1)
        hit = slot.label == new
        colour, hatch = _slot_colour(slot, other_uids)
        ax.add_patch(Rectangle((x0, row + 0.1), x1 - x0, 0.8, facecolor=colour, hatch=hatch, edgecolor="black",
                               linewidth=3 if hit else 0.8))
        ax.text((x0 + x1) / 2, row + 0.5, slot.label, ha="center", va="center", fontsize=7,
                bbox=_LABEL_BOX if slot.invalid else None)
    ax.set_xlim(0, bands.pos[-1])
    ax.set_ylim(max(rows) + 1, 0)
    ax.set_yticks([r + 0.5 for r in range(max(rows) + 1)], [str(r) for r in range(max(rows) + 1)], fontsize=7)
    step = max(1, -(-len(bands.edges) // 6))
    ax.set_xticks(bands.pos[::step], [f"{e:#x}" for e in bands.edges[::step]], fontsize=6, rotation=15)
    ax.set_xlabel("hva (bands, not to scale); overlapping ranges stack on separate lanes", fontsize=8)


def _draw_id_hash(ax, st, new):
    """The 128 buckets as an 8 x 16 grid: entries per bucket, ids when few."""
    counts = np.array([len(bucket) for bucket in st.id_hash])
    cols = 16
    grid = counts.reshape(-1, cols)
    ax.imshow(grid > 0, cmap=_two_colour(EMPTY, SAME), vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    few = counts.sum() <= 24
    for b, bucket in enumerate(st.id_hash):
        if not bucket:
            continue
        r, c = divmod(b, cols)
        hit = any(s.label == new for s in bucket.values())
        if hit:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor=DIFFERS, edgecolor="black", linewidth=2.5))
        text = "\n".join(str(s.id) for s in bucket.values()) if few else str(len(bucket))
        ax.text(c, r, text, ha="center", va="center", fontsize=6)
    ax.set_title(f"{st.name} id hash: {counts.sum()} entries, 128 buckets", fontsize=9)
    ax.set_xticks(range(0, cols, 4), [str(c) for c in range(0, cols, 4)], fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [str(r * cols) for r in range(grid.shape[0])], fontsize=7)
    ax.set_xlabel("bucket = hash_32(id, 7) = row + column" + ("; cells list ids" if few else "; cells count ids"),
                  fontsize=8)


def _two_colour(low, high):
    from matplotlib.colors import ListedColormap
    return ListedColormap([low, high])


def plot_trees(vm, as_id=0, step=None):
    """The gfn tree, hva interval tree and id hash of both sets of ``as_id``.

    Nodes the step put into a set are drawn with a thick edge (and their
    hash bucket in orange); the step defaults to the current one.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> [ax.get_title() for ax in plot_trees(vm).axes][:2]
    ['as0/set0 gfn tree: 1 nodes in base_gfn order', 'as0/set0 hva interval tree: 1 ranges']
    >>> plot_trees(kvmviz.VM(kernel="5.15"))
    Traceback (most recent call last):
    ...
    ValueError: the Linux 5.15 model keeps one sorted array per address space (no gfn tree, hva tree or id hash): use plot_memslots
    """
    if vm.implementation != "tree":
        raise ValueError(f"the {model_label(vm)} keeps one sorted array per address space (no gfn tree, "
                         "hva tree or id hash): use plot_memslots")
    step = current_step(vm) if step is None else step
    touched = _touched(step, as_id)
    fig = _figure(12, 5.5)
    grid = fig.subplots(2, 3, gridspec_kw={"width_ratios": (1.2, 1.2, 1), "left": 0.04, "right": 0.99,
                                           "top": 0.88, "bottom": 0.2, "hspace": 0.75, "wspace": 0.12})
    for row, st in zip(grid, vm.sets[as_id]):
        new = touched.get(st.node_idx, (None, None))[1]
        other = {s.uid for s in vm.sets[as_id][st.node_idx ^ 1].gfn_tree.values()}
        _draw_gfn_tree(row[0], st, new, other)
        _draw_hva(row[1], st, new, other)
        _draw_id_hash(row[2], st, new)
        for ax in row:
            _frame(ax, vm.active_idx[as_id] == st.node_idx)
    what = ""
    if touched:
        what = "; this step: " + ", ".join(f"set{i} {o} -> {n}" for i, (o, n) in sorted(touched.items()))
    fig.suptitle(titled(vm, f"{state_summary(vm, as_id)}{what}", _width_px(fig)), fontsize=10)
    fig.legend(handles=_legend_handles(True)[:4] + [_legend_handles(True)[-1]],
               loc="lower center", ncol=5, fontsize=8)
    return fig


# -- generations over time ----------------------------------------------------------
def timeline(vm, first=None, last=None):
    """Per history event in ``[first, last)``: (index, gens, locks, event).

    Reader events (not ``Step``s) carry the previous step's generations and
    locks, since readers change neither. Defaults: the last 200 events up to
    the cursor.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> rows = timeline(vm); len(rows), rows[-1][1][0]
    (15, (0, 2, 1))
    """
    h = vm.history
    last = h.cursor if last is None else last
    first = max(0, last - 200) if first is None else first
    gens, locks = None, frozenset()
    for event in reversed(h.events[:first]):
        if isinstance(event, Step):
            gens, locks = event.gens, event.locks
            break
    rows = []
    for i in range(first, last):
        event = h.events[i]
        if isinstance(event, Step):
            gens, locks = event.gens, event.locks
        elif getattr(event, "gens", None):
            gens = event.gens
        rows.append((i, gens or vm.generations(), locks, event))
    return rows or [(last - 1, vm.generations(), vm.locks, None)]


def _reader_snapshot(vm):
    """``((name, pinned node_idx per address space or None), ...)`` of readers inside now."""
    out = []
    for reader, _seq in getattr(vm.srcu, "readers", ()):
        pinned = getattr(reader, "pinned", None)
        out.append((str(getattr(reader, "name", reader)), tuple(pinned) if pinned is not None else None))
    return tuple(out)


def _readers_by_event(vm, rows):
    """Readers inside after each event (``_reader_snapshot``), or None if none ever ran.

    Readers only change through reader events, so a window of writer steps
    with no reader inside now has none; otherwise the history is replayed over
    the window and put back where it was.
    """
    now = _reader_snapshot(vm)
    if not now and all(isinstance(r[3], Step) for r in rows):
        return None
    h = vm.history
    loose = len(h.entries) > (h.bounds[-1] if h.bounds else 0)
    if loose and h.at_frontier:
        # replaying would drop mutations logged after the last event
        return [now if r[0] == h.cursor - 1 else () for r in rows]
    cursor, out = h.cursor, []
    try:
        for row in rows:
            h.goto(row[0] + 1)
            out.append(_reader_snapshot(vm))
    finally:
        h.goto(cursor)
    return out


def _reader_spans(snaps, as_id):
    """{reader name: [[start, end, pinned node_idx]]} (positions in ``snaps``)."""
    spans, open_ = {}, {}
    for x, snap in enumerate(snaps):
        names = set()
        for name, pinned in snap:
            idx = pinned[as_id] if pinned is not None else None
            names.add(name)
            run = open_.get(name)
            if run is None or run[2] != idx:
                open_[name] = [x, x + 1, idx]
                spans.setdefault(name, []).append(open_[name])
            else:
                run[1] = x + 1
        for name in set(open_) - names:
            del open_[name]
    return spans


def draw_generations(ax, lanes_ax, rows, as_ids, readers=None):
    """Generations per set (lines), in-progress periods, swaps; lock and reader lanes.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> fig = _figure(6, 4); a, b = fig.subplots(2, 1, sharex=True)
    >>> draw_generations(a, b, timeline(vm), (0,))
    1
    """
    xs = np.array([r[0] + 1 for r in rows] or [0])
    swaps = 0
    styles = ("-", "--")
    for as_id in as_ids:
        for node in (0, 1):
            ys = [r[1][as_id][node] & ~IP for r in rows]
            # one more point so the last event's value spans its whole column
            ax.step(np.append(xs, xs[-1] + 1), ys + ys[-1:], where="post", color=SET_COLOURS[node],
                    linestyle=styles[as_id % 2],
                    linewidth=2, label=f"as{as_id}/set{node}")
            ip = [bool(r[1][as_id][node] & IP) for r in rows]
            for x, flag in zip(xs, ip):
                if flag:
                    ax.axvspan(x, x + 1, color=C["purple"], alpha=0.25, linewidth=0)
        active = [r[1][as_id][2] for r in rows]
        seen = [r[1][as_id][r[1][as_id][2]] & ~IP for r in rows]
        ax.step(np.append(xs, xs[-1] + 1), seen + seen[-1:], where="post", color="black",
                linestyle=styles[as_id % 2], linewidth=0.8, label=f"as{as_id} active set")
        for x, prev, cur in zip(xs[1:], active, active[1:]):
            if prev != cur:
                swaps += 1
                ax.axvline(x, color="black", linestyle=":", linewidth=1.5)
                ax.annotate(f"swap: set{cur} active", (x, 0.02), xycoords=("data", "axes fraction"),
                            fontsize=7, rotation=90, va="bottom", ha="right")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color=C["purple"], alpha=0.25, label="in progress (bit 63 set)"),
                ax.plot([], [], color="black", linestyle=":", label="swap of the active pointer")[0]]
    ax.legend(handles=handles, fontsize=7, loc="upper left", ncol=2)
    ax.set_ylabel("generation (bit 63 shaded)", fontsize=8)
    ax.yaxis.get_major_locator().set_params(integer=True)
    _draw_lanes(lanes_ax, rows, xs, readers, as_ids[0])
    return swaps


def _draw_lanes(ax, rows, xs, readers, as_id):
    names = list(LOCK_COLOURS)
    for lane, name in enumerate(names):
        held = [(x, 1) for x, r in zip(xs, rows) if name in r[2]]
        ax.broken_barh(held, (lane + 0.15, 0.7), facecolors=LOCK_COLOURS[name])
    labels = list(names)
    spans = _reader_spans(readers, as_id) if readers else {}
    for k, (name, runs) in enumerate(sorted(spans.items())):
        lane = len(names) + k
        for start, end, idx in runs:
            colour = SET_COLOURS[idx] if idx is not None else "0.5"
            ax.broken_barh([(xs[start], end - start)], (lane + 0.15, 0.7), facecolors=colour,
                           hatch="//", edgecolor="black")
            ax.text(xs[start] + 0.1, lane + 0.5, f"pins set{idx}" if idx is not None else "inside",
                    fontsize=7, va="center")
        labels.append(f"reader {name}")
    ax.set_yticks([i + 0.5 for i in range(len(labels))], labels, fontsize=7)
    ax.set_ylim(len(labels), 0)
    ax.set_xlabel("history event (step number in vm.history)", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(xs):
        ax.set_xlim(xs[0], xs[-1] + 1)


def plot_generations(vm, as_id=None, first=None, last=None, fig=None):
    """Generation of each set over the history, with locks (and readers) as lanes.

    ``as_id=None`` plots every address space (as1 dashed). In-progress
    periods are shaded, swaps of the active pointer marked; lanes show the
    locks held after each event and, when vCPUs exist, the SRCU readers with
    the set each one pinned (reference §3). ``fig``, a figure this function
    returned before, is redrawn in place.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> plot_generations(vm, 0).axes[0].get_title().replace(vm.kernel, "K")
    'Linux K model, generations over events 1..15: as0 generation 0x2 (set1 active), 1 swap(s)'
    """
    rows = timeline(vm, first, last)
    as_ids = tuple(range(vm.address_spaces)) if as_id is None else (as_id,)
    readers = _readers_by_event(vm, rows)
    if fig is None:
        n_lanes = len(LOCK_COLOURS) + (len(_reader_spans(readers, as_ids[0])) if readers else 0)
        fig = _figure(9, 4 + 0.3 * n_lanes)
        ax, lanes = fig.subplots(2, 1, sharex=True, gridspec_kw={
            "height_ratios": (3, max(1.2, 0.4 * n_lanes)), "left": 0.17, "right": 0.98, "top": 0.92,
            "bottom": 0.12, "hspace": 0.08})
    else:
        clear_artists(fig)
        ax, lanes = fig.axes
    swaps = draw_generations(ax, lanes, rows, as_ids, readers)
    ax.relim()
    ax.autoscale_view()
    ax.set_title(titled(vm, _gen_title(vm, rows, as_ids, swaps), _width_px(fig, ax)), fontsize=10)
    return fig


def _gen_title(vm, rows, as_ids, swaps):
    span = f"events {rows[0][0] + 1}..{rows[-1][0] + 1}" if rows else "no events yet"
    now = ", ".join(f"as{a} generation {gen_text(vm.generation(a))} (set{vm.active_idx[a]} active)"
                    for a in as_ids)
    return f"generations over {span}: {now}, {swaps} swap(s)"


# -- one step, one picture -------------------------------------------------------------
def _draw_stage_bar(ax, step):
    ax.set_axis_off()
    ax.set_xlim(0, len(STAGES))
    ax.set_ylim(0, 1)
    for i, stage in enumerate(STAGES):
        current = step is not None and step.stage == stage
        ax.add_patch(Rectangle((i + 0.04, 0.66), 0.92, 0.32, facecolor=C["yellow"] if current else "white",
                               edgecolor="black", linewidth=2.5 if current else 0.6))
        ax.text(i + 0.5, 0.82, stage, ha="center", va="center", fontsize=9,
                fontweight="bold" if current else "normal")
    if step is None:
        text = "before the call: nothing has happened yet"
    else:
        wait = " (waiting)" if step.waiting else ""
        text = f"{step.function}{wait}: {step.text}"
    # three lines of the monospace text fit under the bar; the Stepper's text box has it all
    ax.text(0, 0.58, textwrap.fill(text, 120, max_lines=3, placeholder=" [...]"), ha="left", va="top",
            fontsize=8, family="monospace")


def plot_step(vm, step=None, as_id=None, first=None):
    """One picture of a step: stage, kernel function and text, the sets, generations.

    ``step`` defaults to the current history event; ``as_id`` to the address
    space the running (or last) update works on; ``first`` is the first
    history event of the generation plot (default: the step's update).

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> fig = plot_step(vm); fig.get_suptitle().split(":")[0].replace(vm.kernel, "K")
    'Linux K model, event 15 [commit] kvm_set_memory_region'
    """
    step = current_step(vm) if step is None else step
    if as_id is None:
        as_id = _step_as(vm, step)
    fig = _figure(10, 7.5)
    head = "before the call" if step is None else f"event {step.index + 1} [{step.stage}] {step.function}"
    title = titled(vm, f"{head}: {state_summary(vm, as_id)}", _width_px(fig))
    grid = fig.add_gridspec(4, 2, height_ratios=(1.25, 3.2, 1.5, 0.8), left=0.15, right=0.98,
                            top=0.95 - 0.025 * title.count("\n"), bottom=0.1, hspace=0.4, wspace=0.05)
    _draw_stage_bar(fig.add_subplot(grid[0, :]), step)
    left = fig.add_subplot(grid[1, 0])
    right = fig.add_subplot(grid[1, 1], sharey=left)
    right.tick_params(labelleft=False)
    binned = draw_sets((left, right), vm, as_id, step)
    gen_ax = fig.add_subplot(grid[2, :])
    lanes = fig.add_subplot(grid[3, :], sharex=gen_ax)
    rows = timeline(vm, _update_start(vm, step) if first is None else first)
    draw_generations(gen_ax, lanes, rows, (as_id,), _readers_by_event(vm, rows))
    gen_ax.set_title(f"as{as_id} generation {gen_text(vm.generation(as_id))} (set{vm.active_idx[as_id]} "
                     f"active); locks held: {', '.join(sorted(vm.locks)) or 'none'}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.legend(handles=_legend_handles(binned), loc="lower center", ncol=6, fontsize=7)
    return fig


def _step_as(vm, step):
    update = getattr(vm, "update", None)
    if update is not None:
        return update.region.as_id
    if step is not None and step.touched:
        return step.touched[0][0]
    return 0


def _update_start(vm, step):
    """First history index of the update ``step`` belongs to."""
    events = vm.history.events
    i = vm.history.cursor if step is None else step.index
    call = getattr(step, "call", None)
    while i > 0 and (call is None or getattr(events[i - 1], "call", call) == call):
        if call is None and isinstance(events[i - 1], Step):
            break
        i -= 1
    return i
