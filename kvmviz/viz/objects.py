"""The pointer swap as objects (``plot_objects``): ``kvm->memslots[as]``, the sets, what they hold.

Drawn at the size it is shown (SVG, 1 unit = 1 CSS px) for the Stepper.
Tree kernels (5.17+): ``kvm->memslots[as]`` is an arrow to the active set,
and every slot object appears once, with an edge to each set that holds it
(reference §2.3: a slot the update does not change is shared by both sets);
a slot struct the writer allocated and no set links yet (``new``, the
INVALID copy) sits in its own row, "in no set". The 5.15 array (reference
§6): one structure at rest; mid-update the scratch copy of
``kvm_dup_memslots`` beside it, each a column of slot *values* (copied, never
shared). All text is at least ``MIN_FONT`` px.

>>> import kvmviz
>>> from kvmviz.viz.figure import to_svg
>>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0x7f0000000000)
>>> svg = to_svg(plot_objects(vm)); svg.startswith("<svg") and 'width="560px"' in svg
True
"""

from matplotlib.patches import FancyBboxPatch, Patch

from ..engine.constants import flag_names
from ..engine.step import Step
from ..engine.fmt import gen_text
from .figure import C, DIFFERS, INVALID, MIN_FONT, PANE_PX, SAME, SET_COLOURS, new_figure
from .sets import current_step

#: Rows of slot objects that fit the object picture; more and the Stepper shows the gfn bands.
MAX_ROWS = 9
_ROW_PX = 30
_TOP_PX = 96         # the pointer and the set headers
_LEGEND_PX = 24
#: Face of a slot struct no set links yet.
UNLINKED = "#EEEEEE"


def _object_rows(vm, as_id, step=None):
    """Rows of ``[(slot, in set0, in set1)]``, one per slot id, each object once; and how many were folded.

    Above ``MAX_ROWS`` rows, rows where the sets agree and the step touched
    nothing are folded into one summary row (their count returned), as
    many as it takes to keep ``MAX_ROWS``.
    """
    held = {}
    for node, st in enumerate(vm.sets[as_id]):
        for slot in st.slots():
            entry = held.setdefault(slot.uid, [slot, False, False])
            entry[1 + node] = True
    rows = {}
    for slot, in0, in1 in held.values():
        rows.setdefault(slot.id, []).append((slot, in0, in1))
    ordered = [sorted(rows[k], key=lambda o: (not o[1], o[0].uid)) for k in sorted(rows)]
    if len(ordered) <= MAX_ROWS:
        return ordered, 0
    labels = {new for *_x, new in step.touched} if step is not None else set()
    keep = [r for r in ordered if len(r) > 1 or not (r[0][1] and r[0][2]) or r[0][0].label in labels]
    # fill up with agreeing rows, so the picture keeps its height from step to step
    shown = (keep + [r for r in ordered if r not in keep])[:MAX_ROWS - 1]
    return sorted(shown, key=lambda r: r[0][0].id), len(ordered) - len(shown)


def _swapped(vm, step, as_id):
    """True when ``step`` moved ``kvm->memslots[as_id]`` (the ``rcu_assign_pointer``)."""
    if step is None or not step.gens:
        return False
    for event in reversed(vm.history.events[:step.index]):
        if isinstance(event, Step) and event.gens:
            return event.gens[as_id][2] != step.gens[as_id][2]
    return False


def plot_objects(vm, as_id=0, step=None):
    """``kvm->memslots[as_id]``, the structures it can point to, and the slots they hold.

    Models what ``kvm_swap_active_memslots`` (5.15: ``install_new_memslots``)
    publishes with ``rcu_assign_pointer`` and what ``kvm_replace_memslot``
    (5.15: ``update_memslots``) edits. What ``step`` (default: the current
    one) touched is drawn thick on yellow.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> _ = [s for s in upd]
    >>> fig = plot_objects(vm); [t.get_text() for t in fig.axes[0].texts][:3]
    ['set0 (inactive)\\ngeneration 0x0', 'set1 (ACTIVE)\\ngeneration 0x2', 'kvm->memslots[0]']
    """
    step = current_step(vm) if step is None else step
    touched = {(idx, new) for a, idx, _old, new in step.touched if a == as_id} if step else set()
    if vm.implementation == "array":
        return _plot_array(vm, as_id, step, touched)
    rows, folded = _object_rows(vm, as_id, step)
    n = max(len(rows) + (1 if folded else 0), 1)
    ax = _canvas(n + 1)                     # + the row of slots in no set
    top = _TOP_PX / _ROW_PX
    gen_hit = {idx for idx, new in touched if new == "gen"}
    spines = (0.13, 0.87)
    active = vm.active_idx[as_id]
    for node, x in enumerate(spines):
        st = vm.sets[as_id][node]
        role = "ACTIVE" if node == active else "inactive"
        hit = node in gen_hit or any(i == node for i, _ in touched)
        _box(ax, x, 1.7, 0.22, 0.95, f"{st.name.split('/')[-1]} ({role})\ngeneration {gen_text(st.generation)}",
             "white", C["green"] if node == active else "0.5", 3 if node == active else 1,
             bold=hit, face_hit=hit)
        ax.plot([x, x], [2.2, n + top], color=SET_COLOURS[node], linewidth=2)
    _pointer(ax, as_id, spines[active], _swapped(vm, step, as_id))
    if not rows:
        ax.text(0.5, top + 0.5, "no slots in this address space", ha="center", va="center", color="0.3")
    for r, objects in enumerate(rows):
        y = top + r + 0.5
        for slot, in0, in1 in objects:
            x = 0.5 if (in0 and in1) or len(objects) == 1 else (0.37 if in0 else 0.63)
            hit = any(new == slot.label for _i, new in touched)
            _slot_box(ax, x, y, slot, INVALID if slot.invalid else (SAME if in0 and in1 else DIFFERS), hit)
            for node, inside in enumerate((in0, in1)):
                if inside:
                    edge = x - 0.115 if node == 0 else x + 0.115
                    ax.plot([spines[node], edge], [y, y], color=SET_COLOURS[node], linewidth=2.5 if hit else 1.2)
    if folded:
        y = top + len(rows) + 0.5
        _box(ax, 0.5, y, 0.46, 0.82, f"... {folded} more slots, each object held by both sets", SAME, "black", 0.8)
        for node, edge in enumerate((0.27, 0.73)):
            ax.plot([spines[node], edge], [y, y], color=SET_COLOURS[node], linewidth=1.2)
    _unlinked_row(ax, vm.unlinked_slots(as_id), top + n + 0.5, touched)
    _legend(ax.figure, [(SAME, "held by both sets"), (DIFFERS, "in one set only"), (INVALID, "INVALID copy"),
                        (UNLINKED, "in no set")])
    return ax.figure


def _canvas(rows):
    """A ``PANE_PX``-wide figure with one axes: x in [0, 1], y in rows (header first, downwards)."""
    height = _TOP_PX + _ROW_PX * rows + _LEGEND_PX
    fig = new_figure(PANE_PX / 72, height / 72)
    ax = fig.add_axes((0, _LEGEND_PX / height, 1, 1 - _LEGEND_PX / height))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(rows + _TOP_PX / _ROW_PX, -0.13)
    return ax


def _pointer(ax, as_id, target_x, swapped, side_entry=True):
    """The ``kvm->memslots[as_id]`` box and its arrow to the header of the structure at ``target_x``.

    The arrow enters the header from the side (the tree's narrow set boxes)
    or from above (the array's wide structure boxes).
    """
    _box(ax, 0.5, 0.45, 0.3, 0.7, f"kvm->memslots[{as_id}]", C["yellow"] if swapped else "white",
         "black", 2.5 if swapped else 1, bold=swapped)
    side = (target_x > 0.5) - (target_x < 0.5)
    if side_entry and side:
        start, end = (0.5 + side * 0.15, 0.45), (target_x - side * 0.11, 1.5)
    else:
        start, end = (0.5 + side * 0.1, 0.8), (target_x, 1.22)
    ax.annotate("", end, start, arrowprops={"arrowstyle": "-|>", "linewidth": 2.5 if swapped else 1.5,
                                            "color": "black", "mutation_scale": 18})


def _slot_box(ax, x, y, slot, face, hit, width=0.23, edge="black", style="solid"):
    """One slot struct (or value): its id, label, gfn range and flags."""
    if slot.npages:
        flags = flag_names(slot.flags & 0xFFFF) if slot.flags & 0xFFFF else ""
        text = f"slot {slot.id} {slot.label}\ngfn {slot.base_gfn:#x} +{slot.npages:#x} {flags}".rstrip()
    else:
        text = f"{slot.label}\nkzalloc: all zero"       # the INVALID copy before kvm_copy_memslot
    _box(ax, x, y, width, 0.82, text, face, edge, 3 if hit else 0.8, bold=hit, small=True, style=style)


def _unlinked_row(ax, slots, y, touched):
    """Slot structs the writer holds and no set links: ``vm.unlinked_slots``, off to the side."""
    ax.plot([0.02, 0.98], [y - 0.5, y - 0.5], color="0.7", linewidth=0.8, linestyle=":")
    ax.text(0.02, y, "allocated,\nin no set:", ha="left", va="center", fontsize=MIN_FONT, color="0.3",
            linespacing=1.0)
    if not slots:
        ax.text(0.37, y, "none", ha="center", va="center", fontsize=MIN_FONT, color="0.5")
    for slot, x in zip(slots, (0.37, 0.63, 0.87)):
        hit = any(new == slot.label for _i, new in touched)
        _slot_box(ax, x, y, slot, INVALID if slot.invalid else UNLINKED, hit, edge="0.3", style="dashed")


def _legend(fig, entries):
    fig.legend(handles=[Patch(facecolor=face, edgecolor="black", label=label) for face, label in entries]
               + [Patch(facecolor=C["yellow"], edgecolor="black", linewidth=2.5, label="touched")],
               loc="lower center", fontsize=MIN_FONT, frameon=False, ncol=len(entries) + 1, handlelength=1.2,
               borderpad=0.2, columnspacing=1.0, handletextpad=0.5)


# -- the 5.15 array: structures of values --------------------------------------------------
def _structures(vm, as_id):
    """The distinct structures of ``as_id``, oldest first (the scratch copy is the newer one)."""
    a, b = vm.sets[as_id]
    return [a] if a is b else sorted((a, b), key=lambda s: s.seq)


def _array_rows(structures, touched_labels):
    """Entry indexes to show (all, or ``MAX_ROWS - 1`` around what changed) and how many were folded."""
    n = max(len(s.entries()) for s in structures)
    if n <= MAX_ROWS:
        return list(range(n)), 0
    values = [[e.values() + (e.label,) for e in s.entries()] for s in structures]
    odd = [i for i in range(n) if len({tuple(v[i]) if i < len(v) else None for v in values}) > 1
           or any(i < len(s.entries()) and s.entries()[i].label in touched_labels for s in structures)]
    first = max(0, min(odd or [0]) - 1)
    shown = list(range(first, min(n, first + MAX_ROWS - 1)))
    return shown, n - len(shown)


def _plot_array(vm, as_id, step, touched):
    """The 5.15 picture: the pointer, one or two ``struct kvm_memslots``, their arrays of slot values."""
    structures = _structures(vm, as_id)
    active = vm.active_set(as_id)
    labels = {new for _idx, new in touched}
    shown, folded = _array_rows(structures, labels)
    n = max(len(shown) + (1 if folded else 0), 1)
    ax = _canvas(n)
    top = _TOP_PX / _ROW_PX
    xs = (0.5,) if len(structures) == 1 else (0.27, 0.73)
    width = 0.5 if len(structures) == 1 else 0.44
    for st, x in zip(structures, xs):
        other = [s for s in structures if s is not st]
        others = {e.values() for s in other for e in s.entries()}
        is_active = st is active
        role = "ACTIVE" if is_active else "not published"
        what = ", one structure: no copy at rest" if len(structures) == 1 else ""
        hit = any(i == st.node_idx for i, _ in touched)
        _box(ax, x, 1.7, width, 0.95, f"{st.name.split('/')[-1]} ({role}){what}\ngeneration "
             f"{gen_text(st.generation)}, used_slots {st.used_slots}", "white", C["green"] if is_active else "0.5",
             3 if is_active else 1, bold=hit, face_hit=hit)
        entries = st.entries()
        for r, i in enumerate(shown):
            y = top + r + 0.5
            if i >= len(entries):
                ax.text(x, y, f"[{i}] (not used)", ha="center", va="center", fontsize=MIN_FONT, color="0.5")
                continue
            e = entries[i]
            face = INVALID if e.invalid else "white" if not other else SAME if e.values() in others else DIFFERS
            box = _slot_box if width < 0.5 else _wide_slot_box
            box(ax, x + 0.03, y, e, face, e.label in labels, width=width - 0.06)
            ax.text(x - width / 2, y, f"[{i}]", ha="left", va="center", fontsize=MIN_FONT, color="0.3")
        if folded:
            ax.text(x, top + len(shown) + 0.5, f"... {folded} more entries", ha="center", va="center",
                    fontsize=MIN_FONT, color="0.3")
    _pointer(ax, as_id, xs[structures.index(active)], _swapped(vm, step, as_id), side_entry=False)
    _legend(ax.figure, [("white", "one structure"), (SAME, "same value in both"), (DIFFERS, "value differs"),
                        (INVALID, "INVALID flag")])
    return ax.figure


def _wide_slot_box(ax, x, y, entry, face, hit, width):
    """One slot value on one line (the lone structure at rest has the width for it)."""
    flags = flag_names(entry.flags & 0xFFFF) if entry.flags & 0xFFFF else ""
    _box(ax, x, y, width, 0.82, f"slot {entry.id} {entry.label}  gfn {entry.base_gfn:#x} +{entry.npages:#x} {flags}"
         .rstrip(), face, "black", 3 if hit else 0.8, bold=hit)


def _box(ax, x, y, width, height, text, face, edge, linewidth, bold=False, face_hit=False, small=False,
         style="solid"):
    """A rounded box centred on (x, y) with ``text`` (data units: x in axes fraction, y in rows)."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.005",
                                facecolor=C["yellow"] if face_hit else face, edgecolor=edge,
                                linewidth=linewidth, linestyle=style))
    ax.text(x, y, text, ha="center", va="center", fontsize=MIN_FONT, linespacing=1.0 if small else 1.15,
            fontweight="bold" if bold else "normal")
