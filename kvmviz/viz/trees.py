"""The three indexes of each set: gfn tree, hva interval tree, id hash (``plot_trees``).

A set of the 5.17+ tree design keeps its slots in a gfn-ordered tree
(``kvm_insert_gfn_node``), an hva interval tree and a 128-bucket id hash
(reference §2.1); this figure draws all three for both sets of an address
space, in two layouts: a row per set (notebooks, ``WIDE_PX``) or a column
per set (the Stepper's pane). The 5.15 array has none of them, so
``plot_trees`` refuses it.
"""

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle

from ..export import model_label
from .figure import (DIFFERS, EMPTY, LABEL_BOX, MIN_FONT, SAME, Bands, axes_px, frame_axes, new_figure,
                     titled, width_px)
from .sets import MAX_DRAWN, current_step, legend_handles, slot_colour, state_summary, touched_by

#: Width of the notebook layout (a row of three panels per set), in px.
WIDE_PX = 936
#: Width of a hex digit of ``MIN_FONT`` DejaVu Sans, in px (measured), for fitting labels.
_CHAR_PX = 6.4


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


def _draw_gfn_tree(ax, st, new, other_uids, width_px):
    """The gfn tree in order (the kernel's rbtree shape is not modelled: a sorted map)."""
    slots = st.slots()
    ax.set_title(f"{st.name} gfn tree: {len(slots)} nodes", fontsize=MIN_FONT, pad=3)
    ax.set_xlabel("in base_gfn order", fontsize=MIN_FONT, labelpad=2)
    ax.set_yticks([])
    ax.set_xticks([])
    fit = max(3, int(width_px // 58))
    shown = slots if len(slots) <= fit else slots[:fit - 2] + [None] + slots[-1:]
    for i, slot in enumerate(shown):
        if i:
            ax.annotate("", (i + 0.08, 0.5), (i - 0.08, 0.5), arrowprops={"arrowstyle": "->"})
        if slot is None:
            ax.text(i + 0.5, 0.5, f"{len(slots) - fit + 1}\nmore", ha="center", va="center", fontsize=MIN_FONT)
            continue
        hit = slot.label == new
        colour, hatch = slot_colour(slot, other_uids)
        ax.add_patch(Rectangle((i + 0.08, 0.12), 0.84, 0.76, facecolor=colour, hatch=hatch, edgecolor="black",
                               linewidth=3 if hit else 0.8))
        ax.text(i + 0.5, 0.5, f"{slot.base_gfn:#x}\n{slot.label}", ha="center", va="center", fontsize=MIN_FONT,
                bbox=LABEL_BOX if slot.invalid else None)
    ax.set_xlim(0, max(len(shown), fit))
    ax.set_ylim(0, 1)


def _offset_ticks(ax, values, positions, base, width_px):
    """hva ticks as hex offsets from ``base``, as many as fit side by side at ``MIN_FONT``."""
    span = positions[-1] - positions[0] or 1
    keep, right = [], -1e9
    for value, pos in zip(values, positions):
        label = f"+{int(value - base):#x}"
        x = (pos - positions[0]) / span * width_px
        half = len(label) * _CHAR_PX / 2
        if x - half >= max(right + 8, -12) and x + half <= width_px + 12:
            keep.append((pos, label))
            right = x + half
    ax.set_xticks([p for p, _ in keep], [label for _, label in keep], fontsize=MIN_FONT)


def _draw_hva(ax, st, new, other_uids, width_px):
    """The hva interval tree: each range on a band axis; overlapping ranges on separate lanes."""
    nodes = _treap_nodes(st.hva_tree)
    ax.set_title(f"{st.name} hva tree: {len(nodes)} ranges", fontsize=MIN_FONT, pad=3)
    ax.set_yticks([])
    if not nodes:
        ax.set_xticks([])
        ax.set_xlabel("hva", fontsize=MIN_FONT, labelpad=2)
        return
    base = min(n[0] for n in nodes)
    if len(nodes) > MAX_DRAWN:
        starts = np.array([n[0] for n in nodes], dtype=float)
        ax.hist(starts, bins=64, color=SAME, edgecolor="black", linewidth=0.3)
        ticks = np.linspace(starts.min(), starts.max(), 4)
        _offset_ticks(ax, ticks, ticks, base, width_px)
        ax.set_xlabel(f"range starts - {base:#x} (histogram)", fontsize=MIN_FONT, labelpad=2)
        return
    bands = Bands([v for start, last, _ in nodes for v in (start, last + 1)])
    rows = _rows(nodes)
    px_per_band = width_px / bands.pos[-1]
    for (start, last, slot), row in zip(nodes, rows):
        x0, x1 = bands(start), bands(last + 1)
        hit = slot.label == new
        colour, hatch = slot_colour(slot, other_uids)
        ax.add_patch(Rectangle((x0, row + 0.1), x1 - x0, 0.8, facecolor=colour, hatch=hatch, edgecolor="black",
                               linewidth=3 if hit else 0.8))
        if (x1 - x0) * px_per_band >= len(slot.label) * _CHAR_PX + 4:
            ax.text((x0 + x1) / 2, row + 0.5, slot.label, ha="center", va="center", fontsize=MIN_FONT,
                    bbox=LABEL_BOX if slot.invalid else None)
    lanes = max(rows) + 1
    ax.set_xlim(0, bands.pos[-1])
    ax.set_ylim(lanes, 0)
    if lanes > 1:
        ax.set_yticks([r + 0.5 for r in range(lanes)], [str(r) for r in range(lanes)], fontsize=MIN_FONT)
    _offset_ticks(ax, bands.edges, bands.pos, base, width_px)
    ax.set_xlabel(f"hva - {base:#x} (bands, not to scale)", fontsize=MIN_FONT, labelpad=2)


def _draw_id_hash(ax, st, new, width_px):
    """The 128 buckets as an 8 x 16 grid: the ids in each bucket where they fit, else how many."""
    counts = np.array([len(bucket) for bucket in st.id_hash])
    cols = 16
    grid = counts.reshape(-1, cols)
    ax.imshow(grid > 0, cmap=ListedColormap([EMPTY, SAME]), vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    cell = width_px / cols
    ids = all(len(b) <= 1 for b in st.id_hash) and all(len(str(k)) * _CHAR_PX <= cell for b in st.id_hash for k in b)
    for b, bucket in enumerate(st.id_hash):
        if not bucket:
            continue
        r, c = divmod(b, cols)
        if any(s.label == new for s in bucket.values()):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor=DIFFERS, edgecolor="black", linewidth=2.5))
        text = str(next(iter(bucket))) if ids else str(len(bucket))
        if len(text) * _CHAR_PX <= cell:
            ax.text(c, r, text, ha="center", va="center", fontsize=MIN_FONT)
    ax.set_title(f"{st.name} id hash: {counts.sum()} ids", fontsize=MIN_FONT, pad=3)
    ax.set_xticks(range(0, cols, 4), [str(c) for c in range(0, cols, 4)], fontsize=MIN_FONT)
    ax.set_yticks(range(0, grid.shape[0], 2), [str(r * cols) for r in range(0, grid.shape[0], 2)], fontsize=MIN_FONT)
    ax.tick_params(length=2, pad=1)
    ax.set_xlabel("bucket = row + column" + ("; cells: the id" if ids else "; cells: ids in it"),
                  fontsize=MIN_FONT, labelpad=2)


#: Panel heights (axes only) in px, and the room around each for its title, ticks and label.
_GFN_PX, _HVA_PX, _HASH_PX, _AROUND_PX = 44, 40, 104, 52


def plot_trees(vm, as_id=0, step=None, width=WIDE_PX, title=True):
    """The gfn tree, hva interval tree and id hash of both sets of ``as_id``.

    Nodes the step put into a set are drawn with a thick edge (and their
    hash bucket in orange); the step defaults to the current one. ``width``
    below ``WIDE_PX`` stacks each set's three panels in a column (the
    Stepper's pane); ``title=False`` leaves out the state summary.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> [ax.get_title() for ax in plot_trees(vm).axes][:2]
    ['as0/set0 gfn tree: 1 nodes', 'as0/set0 hva tree: 1 ranges']
    >>> plot_trees(kvmviz.VM(kernel="5.15"))
    Traceback (most recent call last):
    ...
    ValueError: the Linux 5.15 model keeps one sorted array per address space (no gfn tree, hva tree or id hash): use plot_memslots
    """
    if vm.implementation != "tree":
        raise ValueError(f"the {model_label(vm)} keeps one sorted array per address space (no gfn tree, "
                         "hva tree or id hash): use plot_memslots")
    step = current_step(vm) if step is None else step
    touched = touched_by(step, as_id)
    wide = width >= WIDE_PX
    top = 34 if title else 6
    gap = _AROUND_PX - 6                       # below a panel: its ticks and label, then the next title
    if wide:           # a row per set: the gfn tree over the hva tree | the id hash
        tall = _GFN_PX + gap + _HVA_PX
        row = tall + _AROUND_PX + 6
        height = top + 2 * row + 36
        place = [[(24, y, 570, _GFN_PX), (24, y + _GFN_PX + gap, 570, _HVA_PX), (640, y, width - 650, tall)]
                 for y in (top + 18 + k * row for k in range(2))]
    else:              # a column per set: gfn tree over hva tree over id hash
        col = (width - 70) / 2
        ys, y = [], top + 18
        for h in (_GFN_PX, _HVA_PX, _HASH_PX):
            ys.append((y, h))
            y += h + _AROUND_PX
        height = y - _AROUND_PX + 30 + 44
        place = [[(28 + k * (col + 40), y0, col, h) for y0, h in ys] for k in range(2)]
    fig = new_figure(width / 72, height / 72)
    for st, rects in zip(vm.sets[as_id], place):
        new = touched.get(st.node_idx, (None, None))[1]
        other = {s.uid for s in vm.sets[as_id][st.node_idx ^ 1].gfn_tree.values()}
        axes = [axes_px(fig, *r) for r in rects]
        x_px = [r[2] for r in rects]
        _draw_gfn_tree(axes[0], st, new, other, x_px[0])
        _draw_hva(axes[1], st, new, other, x_px[1])
        _draw_id_hash(axes[2], st, new, x_px[2])
        for ax in axes:
            frame_axes(ax, vm.active_idx[as_id] == st.node_idx)
    if title:
        what = ""
        if touched:
            what = "; this step: " + ", ".join(f"set{i} {o} -> {n}" for i, (o, n) in sorted(touched.items()))
        fig.suptitle(titled(vm, f"{state_summary(vm, as_id)}{what}", width_px(fig)), fontsize=MIN_FONT)
    handles = legend_handles(True)
    fig.legend(handles=handles[:4] + handles[-1:], loc="lower center", ncol=5 if wide else 3, fontsize=MIN_FONT,
               frameon=False, columnspacing=1.0, handletextpad=0.5, borderaxespad=0.2)
    return fig
