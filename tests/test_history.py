"""History: step back, jump to step N, and what happens when the past is rewritten."""

import pytest

import kvmviz
from conftest import HVA, snapshot


def test_back_restores_the_exact_previous_state_at_every_step():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 1, 0x100000, 0x10000, HVA)
    states, upd = [snapshot(vm)], vm.begin_set_user_memory_region(1, 1, 0x200000, 0x10000, HVA)
    for _ in upd:
        states.append(snapshot(vm))
    for expected in reversed(states[:-1]):
        vm.history.back()
        assert snapshot(vm) == expected
        assert kvmviz.check_invariants(vm) == []


def test_objects_keep_their_identity_across_back_and_forward():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0, 0x1000, HVA)
    old = vm.id_to_memslot(1)
    vm.set_user_memory_region(1, 0, 0, 0, 0)
    assert old.freed and vm.id_to_memslot(1) is None
    events = vm.history.events
    vm.history.goto(1 + min(i for i, e in enumerate(events) if e.call == 2 and e.function == "kvm_set_memslot"))
    assert vm.id_to_memslot(1) is old and not old.freed
    vm.history.goto(len(vm.history))
    assert old.freed


def test_goto_bounds_and_frontier():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0, 0x1000, HVA)
    n = len(vm.history)
    with pytest.raises(IndexError):
        vm.history.goto(n + 1)
    vm.history.goto(0)
    assert not vm.history.at_frontier and vm.memslots(0) == [] and vm.generation(0) == 0
    assert vm.history.back() is None
    vm.history.goto(n)
    assert vm.history.forward() is None and vm.generation(0) == 2


def test_new_call_after_going_back_discards_the_future():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0, 0x1000, HVA)
    first = len(vm.history)
    vm.set_user_memory_region(2, 0, 0x1000, 0x1000, HVA)
    vm.history.goto(first)
    vm.set_user_memory_region(3, 0, 0x2000, 0x1000, HVA)
    assert [s.id for s in vm.memslots(0)] == [1, 3] and vm.history.at_frontier
    assert kvmviz.check_invariants(vm) == []


def test_cannot_start_a_call_from_the_middle_of_an_update():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0, 0x1000, HVA)
    vm.history.goto(5)
    with pytest.raises(RuntimeError, match="middle of an update"):
        vm.set_user_memory_region(2, 0, 0x1000, 0x1000, HVA)


def test_a_live_update_cannot_run_ahead_of_a_rewound_vm():
    vm = kvmviz.VM()
    upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, HVA)
    next(upd), next(upd), next(upd)
    vm.history.back()
    with pytest.raises(RuntimeError, match="stepped back"):
        next(upd)
    vm.history.forward()
    assert upd.run()[-1].result == 0


def test_loose_mutations_after_the_last_step_are_undone_by_back():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0, 0x1000, HVA)
    before = snapshot(vm)
    vm.gfn_to_memslot(0)                              # fills the VM-wide last_used_slot
    vm.history.back()
    vm.history.forward()
    assert snapshot(vm) == before


def test_history_can_be_turned_off():
    vm = kvmviz.VM(history=False)
    vm.set_user_memory_region(1, 0, 0, 0x1000, HVA)
    assert len(vm.history) == 0 and vm.history.entries == [] and vm.generation(0) == 2


def test_recording_cost_per_step_is_constant():
    """Journal entries per CREATE do not grow with the number of slots."""
    vm = kvmviz.VM()
    sizes = []
    for i in range(200):
        before = len(vm.history.entries)
        vm.set_user_memory_region(i, 0, i << 12, 0x1000, HVA)
        sizes.append(len(vm.history.entries) - before)
    assert sizes[10] == sizes[-1]


def test_stepping_through_history_does_no_counted_work():
    """Cost counters measure the kernel's work, not the replay of the journal."""
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 1, 0, 0x4000, HVA)
    vm.set_user_memory_region(1, 1, 0x10000, 0x4000, HVA)
    cost = dict(vm.cost)
    vm.history.goto(0)
    vm.history.goto(len(vm.history))
    assert dict(vm.cost) == cost
