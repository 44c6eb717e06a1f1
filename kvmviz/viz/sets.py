"""The two memslot sets of an address space along the gfn axis (``plot_memslots``).

Reads the VM without touching it: no lookups that move ``last_used_slot``
or the cost counters. Each slot is a box over its gfn range with its id,
object label and flags; an object held by one set only, the INVALID copy
and empty ranges have their own colour or hatching, and the active set is
framed. The 5.15 array design shows its one structure (and, mid-update, the
scratch copy).

>>> import kvmviz
>>> vm = kvmviz.VM()
>>> _ = vm.set_user_memory_region(1, 0, 0x100000, 0x10000, 0x7f0000000000)
>>> fig = plot_memslots(vm)
>>> fig.axes[0].get_title().splitlines()[0]
'as0/set0 (inactive, generation 0x0)'
"""

import numpy as np
from matplotlib.patches import Patch

from ..engine.constants import flag_names
from ..engine.fmt import gen_text
from ..engine.step import Step
from .figure import (C, DIFFERS, EMPTY, INVALID, LABEL_BOX, MIN_FONT, SAME, Bands, boxes, clear_artists, frame_axes,
                     new_figure, spaced, titled, width_px)

#: Above this many slots in a set, slots are aggregated into gfn bins.
MAX_DRAWN = 64
BINS = 256


def current_step(vm):
    """The last applied history event if it is a ``Step`` (else None).

    >>> import kvmviz
    >>> vm = kvmviz.VM(); current_step(vm) is None
    True
    """
    h = vm.history
    event = h.events[h.cursor - 1] if h.cursor else None
    return event if isinstance(event, Step) else None


def touched_by(step, as_id):
    """Labels a step put into each set of ``as_id``: {node_idx: (old, new)}.

    >>> touched_by(None, 0)
    {}
    """
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


def slot_colour(slot, other_uids):
    """(face colour, hatch) of ``slot``: INVALID copy, held by both sets, or by this one only.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> slot_colour(vm.memslots(0)[0], set()) == (DIFFERS, None)
    True
    """
    if slot.invalid:
        return INVALID, "xx"
    return (SAME, None) if slot.uid in other_uids else (DIFFERS, None)


def _slot_text(slot, room_px):
    """The label of ``slot`` that fits ``room_px`` of height: two lines, one, or none ('')."""
    flags = flag_names(slot.flags & 0xFFFF)
    if room_px >= 2.6 * MIN_FONT:
        return f"id {slot.id} {slot.label} {flags}\n{slot.npages:#x} pages"
    if room_px >= 1.3 * MIN_FONT:
        return f"id {slot.id} {slot.label} {flags}"
    return ""


def _set_title(vm, st, alias=False):
    active = vm.active_idx[st.as_id] == st.node_idx
    role = "ACTIVE" if active else "inactive"
    # the 5.15 array at rest has one structure: both views are it (kvm_dup_memslots copies per update)
    what = "the same structure: no copy at rest" if alias else f"{len(st)} slots"
    return f"{st.name} ({role}, generation {gen_text(st.generation)})\n{what}"


def _draw_set_bands(ax, st, other_uids, bands, touched, band_px):
    """Draw each slot of ``st`` as a box over its gfn band; gaps hatched.

    A label is drawn where it fits (``band_px`` pixels per band); a slot too
    thin for one that the update changed is named beside the sets' middle.
    """
    groups = {None: ([], [], []), "xx": ([], [], [])}
    covered = []
    for slot in st.slots():
        y0, y1 = bands(slot.base_gfn), bands(slot.end_gfn)
        colour, hatch = slot_colour(slot, other_uids)
        hit = slot.label == touched
        rects, colours, widths = groups[hatch]
        rects.append((0.05, y0, 0.9, y1 - y0))
        colours.append(colour)
        widths.append(3 if hit else 0.8)
        text = _slot_text(slot, (y1 - y0) * band_px)
        if hit and "\n" in text:
            text += "  (touched)"
        if text or hit or colour != SAME:
            ax.text(0.5, (y0 + y1) / 2, text or f"id {slot.id} {slot.label}", ha="center", va="center",
                    fontsize=MIN_FONT, fontweight="bold" if hit else "normal",
                    bbox=LABEL_BOX if slot.invalid or not text else None)
        covered.append((y0, y1))
    edges = [0.0] + [y for pair in covered for y in pair] + [bands.pos[-1]]
    gaps = [(0.05, y0, 0.9, y1 - y0) for y0, y1 in zip(edges[::2], edges[1::2]) if y1 - y0 > 1e-9]
    boxes(ax, gaps, EMPTY, 0.6, "0.6")          # no hatch: it doubled the SVG drawing time
    for _, y0, _, h in gaps:
        if h * band_px >= 1.6 * MIN_FONT:
            ax.text(0.5, y0 + h / 2, "empty", ha="center", va="center", fontsize=MIN_FONT, color="0.3",
                    bbox=LABEL_BOX)
    for hatch, (rects, colours, widths) in groups.items():
        boxes(ax, rects, colours, widths, hatch=hatch)
    ax.set_xlim(0, 1)
    ax.set_xticks([])


def _bands_for(vm, as_id):
    bounds = [0]
    for st in vm.sets[as_id]:
        for slot in st.slots():
            bounds += (slot.base_gfn, slot.end_gfn)
    if len(bounds) == 1:
        bounds.append(0x100)
    return Bands(bounds)


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


def _draw_set_binned(ax, st, other_uids, top, touched):
    """Many slots: coverage of gfn bins, with the slots that differ marked."""
    slots = st.slots()
    edges = np.linspace(0, top, BINS + 1)
    cov = _coverage(slots, edges)
    ax.imshow(cov[:, None], extent=(0.05, 0.95, top, 0), aspect="auto", cmap="Blues",
              vmin=0, vmax=1, interpolation="nearest")
    odd = [s for s in slots if s.invalid or s.uid not in other_uids or s.label == touched]
    for slot in odd[:8]:
        colour, _ = slot_colour(slot, other_uids)
        y = (slot.base_gfn + slot.end_gfn) / 2
        ax.plot([0.3], [y], marker="D", markersize=9, color=colour, markeredgecolor="black", clip_on=False,
                markeredgewidth=2.5 if slot.label == touched else 1)
        ax.annotate(f"id {slot.id} {slot.label}", (0.3, y), xytext=(8, 0), textcoords="offset points",
                    fontsize=MIN_FONT, va="center", fontweight="bold", bbox=LABEL_BOX)
    ax.set_xlim(0, 1)
    ax.set_xticks([])


def _hex_ticks(ax, values, positions, px_per_unit):
    """gfn ticks in hex, as many as fit ``MIN_FONT`` text one above the other."""
    keep = spaced(positions, px_per_unit, 2 * MIN_FONT)
    ax.set_yticks([positions[i] for i in keep], [f"{int(values[i]):#x}" for i in keep], fontsize=MIN_FONT)


def draw_sets(axes, vm, as_id=0, step=None):
    """Draw set0 and set1 of ``as_id`` on two axes (shared gfn axis).

    Returns True when the slots were aggregated into bins.

    >>> import kvmviz
    >>> fig = new_figure(6, 4); axes = fig.subplots(1, 2, sharey=True)
    >>> draw_sets(axes, kvmviz.VM())
    False
    """
    sets = vm.sets[as_id]
    touched = touched_by(step, as_id)
    uids = [{s.uid for s in st.slots()} for st in sets]
    binned = max(len(st) for st in sets) > MAX_DRAWN
    bands = None if binned else _bands_for(vm, as_id)
    top = max((s.end_gfn for st in sets for s in st.slots()[-1:]), default=0x100)
    axis_px = axes[0].get_position().height * axes[0].figure.bbox.height
    for j, (ax, st) in enumerate(zip(axes, sets)):
        new = touched.get(st.node_idx, (None, None))[1]
        other = uids[st.node_idx ^ 1]
        if binned:
            _draw_set_binned(ax, st, other, top, new)
        else:
            _draw_set_bands(ax, st, other, bands, new, axis_px / bands.pos[-1])
        ax.set_title(_set_title(vm, st, alias=j == 1 and sets[1] is sets[0]), fontsize=MIN_FONT,
                     color=C["green"] if vm.active_idx[as_id] == st.node_idx else "black")
        frame_axes(ax, vm.active_idx[as_id] == st.node_idx)
    axes[1].tick_params(left=False, labelleft=False)        # the shared gfn axis is labelled once
    if binned:
        axes[0].set_ylim(top, 0)
        ticks = np.linspace(0, top, 6)
        _hex_ticks(axes[0], ticks, ticks, axis_px / top)
        axes[0].set_ylabel("gfn (linear, in bins; shade: part in a slot)", fontsize=MIN_FONT)
    else:
        axes[0].set_ylim(bands.pos[-1], 0)
        _hex_ticks(axes[0], bands.edges, bands.pos, axis_px / bands.pos[-1])
        axes[0].set_ylabel("gfn (one band per slot or gap; not to scale)", fontsize=MIN_FONT)
    return binned


def legend_handles(binned):
    """Legend entries of the set views (no "empty" entry when slots are binned).

    >>> [h.get_label() for h in legend_handles(True)][-1]
    'active set'
    """
    handles = [Patch(facecolor=SAME, edgecolor="black", label="same object in both sets"),
               Patch(facecolor=DIFFERS, edgecolor="black", label="only in this set (differs)"),
               Patch(facecolor=INVALID, hatch="xx", edgecolor="black", label="INVALID copy"),
               Patch(facecolor="white", edgecolor="black", linewidth=3, label="touched by this step")]
    if not binned:
        handles.append(Patch(facecolor=EMPTY, edgecolor="0.6", label="empty gfn range"))
    handles.append(Patch(facecolor="white", edgecolor=C["green"], linewidth=3, label="active set"))
    return handles


def plot_memslots(vm, as_id=0, step=None, fig=None, width=576, title=True):
    """Both memslot sets of ``as_id`` side by side: slots at their gfn ranges.

    Each slot shows its id, object label and flags; objects in only one set
    (the slot being changed), the INVALID copy and empty ranges have their own
    colour or hatching; the active set is framed. Above ``MAX_DRAWN`` slots
    the sets are drawn as gfn bins. ``step`` (default: the current one)
    highlights what it touched. ``fig``, a figure this function returned
    before, is redrawn in place instead of building a new one; ``width`` is
    its width in px (the Stepper's pane: ``PANE_PX``); ``title=False``
    leaves out the one-line summary of the state (the Stepper says it beside).

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
        fig = new_figure(width / 72, 5.5)
        top = (56 if title else 34) / (5.5 * 72)          # the title, then two lines of set title
        axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"left": 78 / width, "right": 1 - 8 / width,
                                                            "top": 1 - top, "bottom": 0.15, "wspace": 0.06})
    else:
        clear_artists(fig)
        axes = fig.axes
    binned = draw_sets(axes, vm, as_id, step)
    if title:
        fig.suptitle(titled(vm, state_summary(vm, as_id), width_px(fig)), fontsize=MIN_FONT)
    fig.legend(handles=legend_handles(binned), loc="lower center", ncol=3, fontsize=MIN_FONT, frameon=False,
               columnspacing=1.0, handletextpad=0.5)
    return fig


