"""Every figure, at the size notebooks and the Stepper show it: text >= 10 px, nothing clipped, legends off the data.

The gallery builds each public figure in the states the lessons show (few
slots, mid-update, readers, dense views, every shipped trace) and checks it
with ``kvmviz.viz.figure.legibility``. Figures the Stepper shows are drawn
at its pane width (560 px) and must not be wider. Run this file as a script
to write the gallery as PNGs (at 1x) into a folder for a look:
``python tests/test_legibility.py /tmp/gallery``.
"""

import sys
from pathlib import Path

import pytest

import kvmviz
from kvmviz import trace, viz
from kvmviz.viz.figure import MIN_FONT, PANE_PX, legibility, png_bytes
from kvmviz.viz.generations import plot_call
from kvmviz.viz.objects import plot_objects
from kvmviz.viz.replay import plot_replay
from kvmviz.viz.scaling import plot_scaling

HVA = 0x7f0000000000
#: Width of a JupyterLab output area at 1400x900 with the file browser open (measured: 968 px).
NOTEBOOK_PX = 968


def vm_with(n, kernel=None, gap=0x200000):
    vm = kvmviz.VM(kernel=kernel)
    for i in range(n):
        vm.set_user_memory_region(i, 0, i * gap, 0x100000, HVA + i * 0x10000000)
    return vm


def mid_move(n, kernel=None, stop="kvm_replace_memslot"):
    vm = vm_with(n, kernel)
    upd = vm.begin_set_user_memory_region(1, 0, 0x40000000, 0x100000, HVA + 0x10000000)
    for step in upd:
        if step.function == stop:
            break
    return vm


def with_readers():
    """Lesson 06: two vCPUs across a DELETE."""
    from kvmviz.engine.schedule import Schedule
    vm = vm_with(2)
    Schedule(vm, writes=[(1, 0, 0, 0, 0)], vcpus=2, script=[
        "vcpu0 lock", "writer run", "vcpu1 lock", "vcpu1 access 0x100", "vcpu0 access 0x100",
        "vcpu0 unlock", "writer run", "vcpu1 unlock", "writer run"]).run()
    return vm


def lesson_01():
    vm = kvmviz.VM()
    for slot, gpa, size in ((0, 0, 0xa0000), (1, 0x100000, (1 << 30) - 0x100000), (2, 4 << 30, 1 << 30)):
        vm.set_user_memory_region(slot, 0, gpa, size, HVA + gpa)
    vm.set_user_memory_region(3, 0, 0xc0000000, 0x10000, HVA)                  # an hva alias
    vm.set_user_memory_region((1 << 16) | 0, 0, 0, 0x10000, HVA)
    return vm


def prepare_fails():
    vm = vm_with(1)
    vm.begin_set_user_memory_region(0, 0, 0x400000, 0x100000, HVA, fail_prepare=True).run()
    return vm


def stepper_call(vm):
    """The Stepper's timeline of ``vm``'s last call."""
    return plot_call(vm, 0, len(vm.history) - 28, len(vm.history))


GALLERY = {
    "memslots-3": lambda: viz.plot_memslots(vm_with(3)),
    "memslots-lesson01": lambda: viz.plot_memslots(lesson_01()),
    "memslots-mid-move": lambda: viz.plot_memslots(mid_move(3)),
    "memslots-30": lambda: viz.plot_memslots(vm_with(30)),
    "memslots-30-mid-move": lambda: viz.plot_memslots(mid_move(30)),
    "memslots-100": lambda: viz.plot_memslots(vm_with(100)),
    "memslots-100-mid-move": lambda: viz.plot_memslots(mid_move(100)),
    "memslots-5.15-mid-move": lambda: viz.plot_memslots(mid_move(3, "5.15", "update_memslots")),
    "trees-lesson01": lambda: viz.plot_trees(lesson_01()),
    "trees-mid-move": lambda: viz.plot_trees(mid_move(4)),
    "trees-30": lambda: viz.plot_trees(vm_with(30)),
    "trees-200": lambda: viz.plot_trees(vm_with(200, gap=0x100000)),
    "generations-create": lambda: viz.plot_generations(vm_with(1), 0),
    "generations-move-delete": lambda: viz.plot_generations(mid_move(2, stop=None), 0),
    "generations-prepare-fails": lambda: viz.plot_generations(prepare_fails(), 0),
    "generations-readers": lambda: viz.plot_generations(with_readers(), 0),
    "generations-both-as": lambda: viz.plot_generations(lesson_01()),
    "step-mid-move": lambda: viz.plot_step(mid_move(3)),
    "step-30": lambda: viz.plot_step(mid_move(30, stop="rcu_assign_pointer")),
    "step-readers": lambda: viz.plot_step(with_readers()),
    "scaling": lambda: plot_scaling(),
    **{f"replay-{name[:-4]}": (lambda name=name: plot_replay(trace.replay(trace.load(name)), name=name))
       for name in trace.shipped()},
    "replay-qemu-boot-smm-as1": lambda: plot_replay(trace.replay(trace.load("qemu-boot-smm.log")), as_id=1,
                                                    name="QEMU boot with SMM"),
}
#: Figures the Stepper shows in its right pane.
STEPPER = {
    "stepper-objects-mid-move": lambda: plot_objects(mid_move(3, stop="kvm_set_memslot")),
    "stepper-objects-30": lambda: plot_objects(mid_move(30)),
    "stepper-objects-5.15": lambda: plot_objects(mid_move(3, "5.15", "update_memslots")),
    "stepper-gfn-ranges-32": lambda: viz.plot_memslots(mid_move(32), width=PANE_PX, title=False),
    "stepper-trees": lambda: viz.plot_trees(mid_move(4), width=PANE_PX, title=False),
    "stepper-trees-32": lambda: viz.plot_trees(mid_move(32), width=PANE_PX, title=False),
    "stepper-timeline": lambda: stepper_call(mid_move(3, stop=None)),
    "stepper-timeline-readers": lambda: plot_call(*_reader_call()),
}


def _reader_call():
    vm = with_readers()
    start = next(e.index for e in vm.history.events if getattr(e, "change", None) == "DELETE")
    return vm, 0, start, len(vm.history)


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_lesson_figure_is_legible_at_notebook_size(name):
    fig = GALLERY[name]()
    width = fig.bbox.width
    assert width <= NOTEBOOK_PX, f"{name}: {width:.0f} px wide, the output area is {NOTEBOOK_PX}"
    low, problems = legibility(fig)
    assert problems == [] and low >= MIN_FONT, (name, low, problems)


@pytest.mark.parametrize("name", sorted(STEPPER))
def test_stepper_figure_is_legible_in_its_pane(name):
    fig = STEPPER[name]()
    assert fig.bbox.width <= PANE_PX, f"{name}: {fig.bbox.width:.0f} px wide, the pane is {PANE_PX}"
    low, problems = legibility(fig)
    assert problems == [] and low >= MIN_FONT, (name, low, problems)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gallery")
    out.mkdir(parents=True, exist_ok=True)
    for name, make in {**GALLERY, **STEPPER}.items():
        if len(sys.argv) > 2 and sys.argv[2] not in name:
            continue
        fig = make()
        low, problems = legibility(fig)
        (out / f"{name}.png").write_bytes(png_bytes(fig))
        print(f"{name:40s} {fig.bbox.width:4.0f}x{fig.bbox.height:<4.0f} smallest {low:4.1f} px  "
              f"{len(problems)} problem(s) {problems[:3]}")
