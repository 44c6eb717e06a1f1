"""Generations over time: each set's generation, the swaps, the locks and the readers as lanes.

The generation of a set (reference §1.4) is bumped twice per update, with
bit 63 (``KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS``) set in between; a swap of
``kvm->memslots[as]`` changes which set is active. ``plot_generations``
draws a window of the history; ``plot_call`` lays out one call for all its
steps (x = the call's step number) for the Stepper, and ``with_cursor``
marks the current step on that drawing without redrawing it.

>>> import kvmviz
>>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
>>> plot_generations(vm, 0).axes[1].get_xlabel()
'history event (step number in vm.history)'
"""

import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from ..engine.snapshot import state_at
from ..engine.step import Step
from ..engine.fmt import gen_text
from .figure import (C, LOCK_COLOURS, MIN_FONT, PANE_PX, SET_COLOURS, axes_px, clear_artists, new_figure, spaced,
                     titled, width_px)


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
        elif event.gens:
            gens = event.gens
        rows.append((i, gens or vm.generations(), locks, event))
    return rows or [(last - 1, vm.generations(), vm.locks, None)]


def readers_by_event(vm, rows):
    """Readers inside after each event of ``rows`` (``VmState.readers``), or None if none was inside.

    Read from the history (``kvmviz.engine.snapshot.state_at``): the VM and
    its cursor do not move. Readers change only through reader events, so
    the state is read again only after one.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); v = vm.add_vcpu(); v.srcu_read_lock(); v.srcu_read_unlock()
    >>> readers_by_event(vm, timeline(vm)), vm.history.cursor
    ([(), (('vcpu0', (0, 0)),), ()], 3)
    """
    out, readers = [], None
    for row in rows:
        if readers is None or not isinstance(row[3], Step):
            readers = state_at(vm, row[0] + 1).readers
        out.append(readers)
    return out if any(out) else None


def reader_spans(snaps, as_id):
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

    Returns the number of swaps and the legend handles (the caller puts the
    legend outside the axes, where it covers no data).

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> fig = new_figure(6, 4); a, b = fig.subplots(2, 1, sharex=True)
    >>> swaps, handles = draw_generations(a, b, timeline(vm), (0,)); swaps, len(handles)
    (1, 5)
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
                ax.annotate(f"swap: set{cur} active", (x, 0.03), xycoords=("data", "axes fraction"),
                            fontsize=MIN_FONT, rotation=90, va="bottom", ha="right")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color=C["purple"], alpha=0.25, label="in progress (bit 63 set)"),
                ax.plot([], [], color="black", linestyle=":", label="swap of the active pointer")[0]]
    values = sorted({r[1][a][node] & ~IP for r in rows for a in as_ids for node in (0, 1)})
    ax.set_ylim(values[0] - 0.5, values[-1] + 0.5)
    keep = spaced(values, ax.get_position().height * ax.figure.bbox.height / (len(values) and values[-1] - values[0] + 1),
                  1.5 * MIN_FONT)
    ax.set_yticks([values[i] for i in keep], [gen_text(values[i]) for i in keep], fontsize=MIN_FONT)
    ax.set_ylabel("generation", fontsize=MIN_FONT)
    ax.tick_params(labelsize=MIN_FONT)
    _draw_lanes(lanes_ax, rows, xs, readers, as_ids[0])
    return swaps, handles


def _draw_lanes(ax, rows, xs, readers, as_id):
    names = list(LOCK_COLOURS)
    for lane, name in enumerate(names):
        held = [(x, 1) for x, r in zip(xs, rows) if name in r[2]]
        ax.broken_barh(held, (lane + 0.1, 0.8), facecolors=LOCK_COLOURS[name])
    labels = list(names)
    spans = reader_spans(readers, as_id) if readers else {}
    for k, (name, runs) in enumerate(sorted(spans.items())):
        lane = len(names) + k
        for start, end, idx in runs:
            colour = SET_COLOURS[idx] if idx is not None else "0.5"
            ax.broken_barh([(xs[start], end - start)], (lane + 0.1, 0.8), facecolors=colour, edgecolor="black")
            ax.text(xs[start] + 0.2, lane + 0.5, f"pins set{idx}" if idx is not None else "inside",
                    fontsize=MIN_FONT, va="center", color="white" if idx is not None else "black")
        labels.append(f"reader {name}")
    ax.set_yticks([i + 0.5 for i in range(len(labels))], labels, fontsize=MIN_FONT)
    ax.set_ylim(len(labels), 0)
    ax.set_xlabel("history event (step number in vm.history)", fontsize=MIN_FONT, labelpad=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=MIN_FONT)
    if len(xs):
        ax.set_xlim(xs[0], xs[-1] + 1)


#: Height of a lock or reader lane, in px.
LANE_PX = 18


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
    readers = readers_by_event(vm, rows)
    if fig is None:
        n_lanes = len(LOCK_COLOURS) + (len(reader_spans(readers, as_ids[0])) if readers else 0)
        legend_px = 20 * (2 if len(as_ids) == 1 else 3)
        height = 24 + legend_px + 160 + 8 + LANE_PX * n_lanes + 40
        fig = new_figure(9, height / 72)
        ax = axes_px(fig, 130, 24 + legend_px, 506, 160)
        lanes = axes_px(fig, 130, 24 + legend_px + 168, 506, LANE_PX * n_lanes)
        lanes.sharex(ax)
        ax.tick_params(labelbottom=False)
    else:
        clear_artists(fig)
        ax, lanes = fig.axes
    swaps, handles = draw_generations(ax, lanes, rows, as_ids, readers)
    ax.set_title(titled(vm, _gen_title(vm, rows, as_ids, swaps), width_px(fig)), fontsize=MIN_FONT,
                 x=-124 / 506, ha="left", pad=8 + 20 * (2 if len(as_ids) == 1 else 3))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(130 / fig.bbox.width, 1 - 22 / fig.bbox.height),
               ncol=3, fontsize=MIN_FONT, frameon=False, borderaxespad=0,
               columnspacing=1.2, handletextpad=0.5, borderpad=0)
    return fig


def _gen_title(vm, rows, as_ids, swaps):
    span = f"events {rows[0][0] + 1}..{rows[-1][0] + 1}" if rows else "no events yet"
    now = ", ".join(f"as{a} generation {gen_text(vm.generation(a))} (set{vm.active_idx[a]} active)"
                    for a in as_ids)
    return f"generations over {span}: {now}, {swaps} swap(s)"


def plot_call(vm, as_id, base, end):
    """Generations (hex), locks and readers for history events ``[base, end)`` of one call.

    The x axis is the call's step number (0 = before the call, ``end - base``
    = its last step); the figure keeps the pixel extent of the axes in
    ``fig.kv_cursor`` for ``with_cursor``.

    >>> import kvmviz
    >>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> fig = plot_call(vm, 0, 0, len(vm.history)); [float(x) for x in fig.axes[0].get_xlim()]
    [-0.5, 15.5]
    """
    n = end - base
    rows = timeline(vm, base, end) if n else []
    before = timeline(vm, base - 1, base)[0] if base else (None, vm.generations(), frozenset(), None)
    states = [before[1]] + [r[1] for r in rows]
    locks = [frozenset()] + [r[2] for r in rows]
    readers = readers_by_event(vm, rows) if rows else None
    spans = reader_spans([()] + readers, as_id) if readers else {}
    lane_names = list(LOCK_COLOURS) + [f"reader {name}" for name in sorted(spans)]
    fig = new_figure(PANE_PX / 72, (150 + 16 * len(lane_names)) / 72)
    gen_ax, lane_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={
        "height_ratios": (90, 16 * len(lane_names)), "left": 0.25, "right": 0.98,
        "top": 1 - 22 / (150 + 16 * len(lane_names)), "bottom": 38 / (150 + 16 * len(lane_names)),
        "hspace": 0.1})
    xs = np.arange(n + 1)
    for node in (0, 1):
        ys = [s[as_id][node] & ~IP for s in states]
        gen_ax.step(xs, ys, where="post", color=SET_COLOURS[node], linewidth=2, label=f"set{node}")
        for x, s in zip(xs, states):
            if s[as_id][node] & IP:
                gen_ax.axvspan(x - 0.5, x + 0.5, color=C["purple"], alpha=0.25, linewidth=0)
    values = sorted({s[as_id][node] & ~IP for s in states for node in (0, 1)})
    gen_ax.set_yticks(values, [gen_text(v) for v in values])
    gen_ax.set_ylim(values[0] - 0.6, values[-1] + 0.6)
    for x in xs[1:]:
        prev, cur = states[x - 1][as_id][2], states[x][as_id][2]
        if prev != cur:
            gen_ax.axvline(x, color="black", linestyle=":", linewidth=1.5)
            gen_ax.text(x + 0.15, values[-1] + 0.5, f"swap: set{cur} active", va="top", fontsize=MIN_FONT)
    handles = [*gen_ax.get_lines()[:2], Patch(color=C["purple"], alpha=0.25, label="update in progress")]
    fig.legend(handles=handles, loc="upper left", ncol=3, fontsize=MIN_FONT, frameon=False,
               bbox_to_anchor=(0.25, 1.0), borderpad=0.1, handlelength=1.5)
    gen_ax.set_ylabel("generation", fontsize=MIN_FONT)
    for lane, name in enumerate(LOCK_COLOURS):
        held = [(x - 0.5, 1) for x, ls in zip(xs, locks) if name in ls]
        lane_ax.broken_barh(held, (lane + 0.15, 0.7), facecolors=LOCK_COLOURS[name])
    for k, name in enumerate(sorted(spans)):
        for start, stop, idx in spans[name]:
            colour = SET_COLOURS[idx] if idx is not None else "0.5"
            lane_ax.broken_barh([(start - 0.5, stop - start)], (len(LOCK_COLOURS) + k + 0.15, 0.7),
                                facecolors=colour, edgecolor="black")
            lane_ax.text(start - 0.4, len(LOCK_COLOURS) + k + 0.5, f"set{idx}" if idx is not None else "in",
                         va="center", fontsize=MIN_FONT, color="white" if idx is not None else "black")
    lane_ax.set_yticks([i + 0.5 for i in range(len(lane_names))], lane_names, fontsize=MIN_FONT)
    lane_ax.set_ylim(len(lane_names), 0)
    lane_ax.set_xlim(-0.5, n + 0.5)
    lane_ax.set_xlabel("step of this call (0 = before it)", fontsize=MIN_FONT, labelpad=1)
    lane_ax.xaxis.get_major_locator().set_params(integer=True)
    for a in (gen_ax, lane_ax):
        a.tick_params(labelsize=MIN_FONT)
    fig.canvas.draw()
    height = fig.bbox.height
    x0, x1 = (lane_ax.transData.transform((v, 0))[0] for v in (0, max(n, 1)))
    fig.kv_cursor = (x0, (x1 - x0) / max(n, 1), height - gen_ax.bbox.y1, height - lane_ax.bbox.y0)
    return fig


def with_cursor(svg, cursor, k):
    """``svg`` (of ``plot_call``) with a vertical cursor at step ``k``.

    >>> with_cursor('<svg></svg>', (10.0, 5.0, 2.0, 40.0), 3).count('class="kv-cursor"')
    1
    """
    x0, dx, top, bottom = cursor
    x = x0 + dx * k
    mark = (f'<g class="kv-cursor"><rect x="{x - dx / 2:.1f}" y="{top:.1f}" width="{dx:.1f}" '
            f'height="{bottom - top:.1f}" fill="{C["yellow"]}" fill-opacity="0.45" stroke="black" '
            f'stroke-width="1.5"/></g>')
    return svg.replace("</svg>", mark + "</svg>")
