"""One step, one picture (``plot_step``): the stage bar, the step's text, the sets, the generations.

A step is one observable point of ``kvm_set_memslot`` (see
``kvmviz.engine.step``); the picture puts its stage and kernel function
above the two sets and the generation timeline of its update.
"""

import textwrap

from matplotlib.patches import Rectangle

from ..engine.step import STAGES, Step
from ..engine.fmt import gen_text
from .figure import C, LOCK_COLOURS, MIN_FONT, axes_px, new_figure, titled
from .generations import LANE_PX, draw_generations, reader_spans, readers_by_event, timeline
from .sets import current_step, draw_sets, legend_handles, state_summary


#: Characters of ``MIN_FONT`` monospace text per line under the stage bar (6.02 px each).
_TEXT_CHARS = 112


def _draw_stage_bar(ax, step):
    ax.set_axis_off()
    ax.set_xlim(0, len(STAGES))
    ax.set_ylim(0, 1)
    for i, stage in enumerate(STAGES):
        current = step is not None and step.stage == stage
        ax.add_patch(Rectangle((i + 0.04, 0.7), 0.92, 0.28, facecolor=C["yellow"] if current else "white",
                               edgecolor="black", linewidth=2.5 if current else 0.6))
        ax.text(i + 0.5, 0.84, stage, ha="center", va="center", fontsize=MIN_FONT,
                fontweight="bold" if current else "normal")
    if step is None:
        text = "before the call: nothing has happened yet"
    else:
        wait = " (waiting)" if step.waiting else ""
        text = f"{step.function}{wait}: {step.text}"
    # three lines of the monospace text fit under the bar; the Stepper's text box has it all
    ax.text(0, 0.6, textwrap.fill(text, _TEXT_CHARS, max_lines=3, placeholder=" [...]"), ha="left", va="top",
            fontsize=MIN_FONT, family="monospace")


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
    rows = timeline(vm, _update_start(vm, step) if first is None else first)
    readers = readers_by_event(vm, rows)
    n_lanes = len(LOCK_COLOURS) + (len(reader_spans(readers, as_id)) if readers else 0)
    width = 720
    head = "before the call" if step is None else f"event {step.index + 1} [{step.stage}] {step.function}"
    title = titled(vm, f"{head}: {state_summary(vm, as_id)}", width)
    y = 16 + 14 * title.count("\n")
    heights = (72, 36, 220, 30, 120, 6, LANE_PX * n_lanes, 40, 44)     # bar, set titles, sets, ..., legend
    fig = new_figure(width / 72, (y + sum(heights)) / 72)
    _draw_stage_bar(axes_px(fig, 12, y, width - 24, heights[0]), step)
    y += heights[0] + heights[1]
    left, right = axes_px(fig, 110, y, 296, heights[2]), axes_px(fig, 416, y, 296, heights[2])
    right.sharey(left)
    binned = draw_sets((left, right), vm, as_id, step)
    y += heights[2] + heights[3]
    gen_ax = axes_px(fig, 130, y, 582, heights[4])
    lanes = axes_px(fig, 130, y + heights[4] + heights[5], 582, heights[6])
    lanes.sharex(gen_ax)
    gen_ax.tick_params(labelbottom=False)
    _swaps, handles = draw_generations(gen_ax, lanes, rows, (as_id,), readers)
    gen_ax.set_title(f"as{as_id} generation {gen_text(vm.generation(as_id))} (set{vm.active_idx[as_id]} "
                     f"active); locks held: {', '.join(sorted(vm.locks)) or 'none'}", fontsize=MIN_FONT, pad=3)
    fig.suptitle(title, fontsize=MIN_FONT, y=1 - 4 / fig.bbox.height, va="top")
    fig.legend(handles=legend_handles(binned) + handles[:2] + handles[-2:], loc="lower center", ncol=5,
               fontsize=MIN_FONT, frameon=False, columnspacing=1.0, handletextpad=0.5, borderaxespad=0.3)
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
    call = None if step is None else step.call
    while i > 0 and (call is None or events[i - 1].call in (0, call)):     # 0: a reader's action
        if call is None and isinstance(events[i - 1], Step):
            break
        i -= 1
    return i
