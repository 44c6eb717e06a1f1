"""The pointer swap as objects (``plot_objects``): two sets, ``kvm->memslots[as]``, each slot object once.

Drawn at the size it is shown (SVG, 1 unit = 1 CSS px) for the Stepper:
``kvm->memslots[as]`` is an arrow to the active set, and every slot object
appears once, with an edge to each set that holds it (reference §2.3: a
slot the update does not change is shared by both sets). All text is at
least ``MIN_FONT`` px.

>>> import kvmviz
>>> from kvmviz.viz.figure import to_svg
>>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0x7f0000000000)
>>> svg = to_svg(plot_objects(vm)); svg.startswith("<svg") and 'width="560px"' in svg
True
"""

from matplotlib.patches import FancyBboxPatch, Patch

from ..engine.constants import flag_names
from ..engine.step import Step
from .figure import C, DIFFERS, INVALID, MIN_FONT, PANE_PX, SAME, SET_COLOURS, gen_text, new_figure
from .sets import current_step

#: Rows of slot objects that fit the object picture; more and the Stepper shows the gfn bands.
MAX_ROWS = 9
_ROW_PX = 30


def objects_fit(vm, as_id=0):
    """True when ``plot_objects`` can draw ``as_id``: the tree kernels' two sets (5.15 has one array).

    >>> import kvmviz
    >>> objects_fit(kvmviz.VM()), objects_fit(kvmviz.VM(kernel="5.15"))
    (True, False)
    """
    return vm.implementation == "tree"


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
    """The two sets of ``as_id`` as columns, the pointer to the active one, each slot object once.

    Models what ``kvm_swap_active_memslots`` publishes (``rcu_assign_pointer``
    of ``kvm->memslots[as_id]``) and what ``kvm_replace_memslot`` links into
    the inactive set: an object held by both sets has an edge to each. What
    ``step`` (default: the current one) touched is drawn thick on yellow.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> _ = [s for s in upd]
    >>> fig = plot_objects(vm); [t.get_text() for t in fig.axes[0].texts][:3]
    ['set0 (inactive)\\ngeneration 0x0', 'set1 (ACTIVE)\\ngeneration 0x2', 'kvm->memslots[0]']
    """
    step = current_step(vm) if step is None else step
    rows, folded = _object_rows(vm, as_id, step)
    n = max(len(rows) + (1 if folded else 0), 1)
    height = 96 + _ROW_PX * n + 34          # header rows, object rows, legend
    fig = new_figure(PANE_PX / 72, height / 72)
    ax = fig.add_axes((0, 24 / height, 1, 1 - 24 / height))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    top = 96 / _ROW_PX
    ax.set_ylim(n + top + 0.2, -0.13)
    touched = {(idx, new) for a, idx, _old, new in step.touched if a == as_id} if step else set()
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
    swapped = _swapped(vm, step, as_id)
    _box(ax, 0.5, 0.45, 0.3, 0.7, f"kvm->memslots[{as_id}]", C["yellow"] if swapped else "white",
         "black", 2.5 if swapped else 1, bold=swapped)
    ax.annotate("", (spines[active] + (0.11 if active == 0 else -0.11), 1.5), (0.5 + (-0.15 if active == 0 else 0.15), 0.45),
                arrowprops={"arrowstyle": "-|>", "linewidth": 2.5 if swapped else 1.5, "color": "black",
                            "mutation_scale": 18})
    if not rows:
        ax.text(0.5, top + 0.5, "no slots in this address space", ha="center", va="center", color="0.3")
    for r, objects in enumerate(rows):
        y = top + r + 0.5
        for k, (slot, in0, in1) in enumerate(objects):
            x = 0.5 if (in0 and in1) else (0.37 if in0 else 0.63)
            if len(objects) == 1 and not (in0 and in1):
                x = 0.5
            hit = any(new == slot.label for _i, new in touched)
            face = INVALID if slot.invalid else (SAME if in0 and in1 else DIFFERS)
            _box(ax, x, y, 0.23, 0.82, f"slot {slot.id} {slot.label}\n"
                 f"gfn {slot.base_gfn:#x} +{slot.npages:#x} {flag_names(slot.flags & 0xFFFF) if slot.flags & 0xFFFF else ''}",
                 face, "black", 3 if hit else 0.8, bold=hit, face_hit=False, small=True)
            for node, inside in enumerate((in0, in1)):
                if inside:
                    edge = x - 0.115 if node == 0 else x + 0.115
                    ax.plot([spines[node], edge], [y, y], color=SET_COLOURS[node], linewidth=2.5 if hit else 1.2)
    if folded:
        y = top + len(rows) + 0.5
        _box(ax, 0.5, y, 0.46, 0.82, f"... {folded} more slots, each object held by both sets", SAME, "black", 0.8)
        for node, edge in enumerate((0.27, 0.73)):
            ax.plot([spines[node], edge], [y, y], color=SET_COLOURS[node], linewidth=1.2)
    fig.legend(handles=[Patch(facecolor=SAME, edgecolor="black", label="held by both sets"),
                        Patch(facecolor=DIFFERS, edgecolor="black", label="in one set only"),
                        Patch(facecolor=INVALID, edgecolor="black", label="INVALID copy"),
                        Patch(facecolor=C["yellow"], edgecolor="black", linewidth=2.5, label="touched")],
               loc="lower center", fontsize=MIN_FONT, frameon=False, ncol=4, handlelength=1.2,
               borderpad=0.2, columnspacing=1.2)
    return fig


def _box(ax, x, y, width, height, text, face, edge, linewidth, bold=False, face_hit=False, small=False):
    """A rounded box centred on (x, y) with ``text`` (data units: x in axes fraction, y in rows)."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.005",
                                facecolor=C["yellow"] if face_hit else face, edgecolor=edge,
                                linewidth=linewidth))
    ax.text(x, y, text, ha="center", va="center", fontsize=MIN_FONT, linespacing=1.0 if small else 1.15,
            fontweight="bold" if bold else "normal")


