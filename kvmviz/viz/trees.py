"""The three indexes of each set: gfn tree, hva interval tree, id hash (``plot_trees``).

A set of the 5.17+ tree design keeps its slots in a gfn-ordered tree
(``kvm_insert_gfn_node``), an hva interval tree and a 128-bucket id hash
(reference §2.1); this figure draws all three for both sets of an address
space. The 5.15 array has none of them, so ``plot_trees`` refuses it.
"""

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle

from ..export import model_label
from .figure import DIFFERS, EMPTY, LABEL_BOX, SAME, Bands, frame_axes, new_figure, titled, width_px
from .sets import MAX_DRAWN, current_step, legend_handles, slot_colour, state_summary, touched_by


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
        colour, hatch = slot_colour(slot, other_uids)
        ax.add_patch(Rectangle((i + 0.1, 0.2), 0.8, 0.6, facecolor=colour, hatch=hatch, edgecolor="black",
                               linewidth=3 if hit else 0.8))
        ax.text(i + 0.5, 0.5, f"{slot.base_gfn:#x}\n{slot.label}", ha="center", va="center", fontsize=7,
                bbox=LABEL_BOX if slot.invalid else None)
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
    bands = Bands([v for start, last, _ in nodes for v in (start, last + 1)])
    rows = _rows(nodes)
    for (start, last, slot), row in zip(nodes, rows):
        x0, x1 = bands(start), bands(last + 1)
        hit = slot.label == new
        colour, hatch = slot_colour(slot, other_uids)
        ax.add_patch(Rectangle((x0, row + 0.1), x1 - x0, 0.8, facecolor=colour, hatch=hatch, edgecolor="black",
                               linewidth=3 if hit else 0.8))
        ax.text((x0 + x1) / 2, row + 0.5, slot.label, ha="center", va="center", fontsize=7,
                bbox=LABEL_BOX if slot.invalid else None)
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
    ax.imshow(grid > 0, cmap=ListedColormap([EMPTY, SAME]), vmin=0, vmax=1, aspect="auto", interpolation="nearest")
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
    touched = touched_by(step, as_id)
    fig = new_figure(12, 5.5)
    grid = fig.subplots(2, 3, gridspec_kw={"width_ratios": (1.2, 1.2, 1), "left": 0.04, "right": 0.99,
                                           "top": 0.88, "bottom": 0.2, "hspace": 0.75, "wspace": 0.12})
    for row, st in zip(grid, vm.sets[as_id]):
        new = touched.get(st.node_idx, (None, None))[1]
        other = {s.uid for s in vm.sets[as_id][st.node_idx ^ 1].gfn_tree.values()}
        _draw_gfn_tree(row[0], st, new, other)
        _draw_hva(row[1], st, new, other)
        _draw_id_hash(row[2], st, new)
        for ax in row:
            frame_axes(ax, vm.active_idx[as_id] == st.node_idx)
    what = ""
    if touched:
        what = "; this step: " + ", ".join(f"set{i} {o} -> {n}" for i, (o, n) in sorted(touched.items()))
    fig.suptitle(titled(vm, f"{state_summary(vm, as_id)}{what}", width_px(fig)), fontsize=10)
    fig.legend(handles=legend_handles(True)[:4] + [legend_handles(True)[-1]],
               loc="lower center", ncol=5, fontsize=8)
    return fig


