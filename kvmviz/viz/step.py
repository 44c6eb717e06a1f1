"""One step, one picture (``plot_step``): the stage bar, the step's text, the sets, the generations.

A step is one observable point of ``kvm_set_memslot`` (see
``kvmviz.engine.step``); the picture puts its stage and kernel function
above the two sets and the generation timeline of its update.
"""

import textwrap

from matplotlib.patches import Rectangle

from ..engine.step import STAGES, Step
from ..engine.fmt import gen_text
from .figure import C, new_figure, titled, width_px
from .generations import draw_generations, readers_by_event, timeline
from .sets import current_step, draw_sets, legend_handles, state_summary


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
    fig = new_figure(10, 7.5)
    head = "before the call" if step is None else f"event {step.index + 1} [{step.stage}] {step.function}"
    title = titled(vm, f"{head}: {state_summary(vm, as_id)}", width_px(fig))
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
    draw_generations(gen_ax, lanes, rows, (as_id,), readers_by_event(vm, rows))
    gen_ax.set_title(f"as{as_id} generation {gen_text(vm.generation(as_id))} (set{vm.active_idx[as_id]} "
                     f"active); locks held: {', '.join(sorted(vm.locks)) or 'none'}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.legend(handles=legend_handles(binned), loc="lower center", ncol=6, fontsize=7)
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
