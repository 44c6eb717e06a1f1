"""state_at(vm, k) (kvmviz.engine.snapshot) equals the VM after goto(k), and touches nothing."""

import pytest

import kvmviz
from kvmviz.engine.schedule import Schedule
from kvmviz.engine.snapshot import state_at

HVA = 0x7f0000000000


def seen(vm_or_state):
    """What pictures read, as plain values."""
    v = vm_or_state
    sets = tuple(tuple(tuple((s.uid, s.label, s.base_gfn, s.npages, s.flags, s.invalid) for s in st.slots())
                       for st in pair) for pair in v.sets)
    names = tuple(tuple(st.name for st in pair) for pair in v.sets)
    if isinstance(v, kvmviz.VM):
        readers = tuple((str(r.name), tuple(r.pinned) if r.pinned is not None else None)
                        for r, _seq in v.srcu.readers)
    else:
        readers = v.readers
    return (v.generations(), v.active_idx, v.locks, sets, names, readers,
            tuple(tuple(s.label for s in v.unlinked_slots(a)) for a in range(v.address_spaces)))


def calls(vm):
    vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    vm.set_user_memory_region(2, 0, 0x200000, 0x10000, HVA + 0x10000)
    vm.set_user_memory_region(1, 1, 0x100000, 0x10000, HVA)                 # FLAGS_ONLY
    vm.set_user_memory_region(2, 0, 0x800000, 0x10000, HVA + 0x10000)       # MOVE
    vm.begin_set_user_memory_region(1, 0, 0, 0, 0, fail_prepare=True).run()  # DELETE, prepare fails
    vm.set_user_memory_region((1 << 16) | 3, 0, 0, 0x1000, HVA) if vm.address_spaces > 1 else None
    vm.set_user_memory_region(1, 0, 0, 0, 0)


def with_readers(vm):
    vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    Schedule(vm, writes=[(1, 0, 0, 0, 0)], vcpus=2, script=[
        "vcpu0 lock", "writer run", "vcpu1 lock", "vcpu1 access 0x100", "vcpu0 access 0x100",
        "vcpu0 unlock", "writer run", "vcpu1 unlock", "writer run"]).run()


@pytest.mark.parametrize("kernel,variant,build", [
    ("6.12", "merged", calls), ("5.17", "merged", calls), ("5.15", "merged", calls),
    ("6.12", "merged", with_readers), ("6.12", "invalid-in-place", calls), ("6.12", "seed", calls)])
def test_state_at_every_event_is_the_state_after_goto(kernel, variant, build):
    vm = kvmviz.VM(kernel=kernel, variant=variant)
    try:
        build(vm)
    except kvmviz.KvmError:
        pass
    n = len(vm.history)
    for start in (n, n // 2):                      # peek back from the end, and both ways from the middle
        vm.history.goto(start)
        now = seen(vm)
        peeked = [seen(state_at(vm, k)) for k in range(n + 1)]
        assert vm.history.cursor == start and seen(vm) == now       # nothing moved
        for k in range(n + 1):
            vm.history.goto(k)
            assert peeked[k] == seen(vm), (k, vm.history.events[k - 1] if k else None)
        vm.history.goto(start)


def test_a_slot_changed_in_place_is_shown_with_its_old_fields():
    vm = kvmviz.VM(variant="invalid-in-place")
    vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    before = len(vm.history)
    vm.set_user_memory_region(1, 0, 0, 0, 0)
    slot = state_at(vm, before).sets[0][0].slots()[0]
    assert slot.label == "#1" and not slot.invalid and slot.flags == 0


def test_peek_outside_the_history_is_refused():
    vm = kvmviz.VM()
    with pytest.raises(IndexError, match="outside 0..0"):
        state_at(vm, 1)


def test_pictures_and_the_player_never_move_the_history_cursor(monkeypatch):
    from kvmviz import viz
    from kvmviz.engine.history import History
    from kvmviz.viz.widgets import Stepper
    vm = kvmviz.VM()
    with_readers(vm)
    st = Stepper(vm)
    st.begin(1, 0, 0x100000, 0x10000, HVA)
    st.view.value = "sets"

    def moved(*_args):
        raise AssertionError("a picture moved the history cursor")
    for name in ("goto", "back", "forward"):
        monkeypatch.setattr(History, name, moved)
    frames = st.frames()
    assert len(frames) == 16 and "step 15 of 15: the ioctl returned 0" in frames[-1]["position"]
    svg, _cursor = st.timeline_parts()
    assert "reader vcpu0" not in svg                 # the CREATE ran with no reader inside
    fig = viz.plot_generations(vm, 0, first=0)
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()][-2:] == ["reader vcpu0", "reader vcpu1"]
    viz.plot_step(vm)
