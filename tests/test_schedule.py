"""The deterministic scheduler: scripted and seeded interleavings, timelines, errors."""

import errno

import pytest

import kvmviz
from kvmviz import Schedule
from conftest import HVA

SLOT1 = (1, 0, 0x100000, 0x4000, HVA)
WRITES = [(2, 0, 0x200000, 0x2000, HVA + 0x100000), (1, 0, 0x300000, 0x4000, HVA),
          (2, 0, 0x200000, 0, 0, True), (1, 0, 0x300000, 0, 0)]


def _vm():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*SLOT1)
    return vm


def _timeline(seed, vcpus=2):
    return Schedule(_vm(), writes=WRITES, seed=seed, vcpus=vcpus).run()


def test_same_seed_same_timeline():
    a, b = _timeline(7), _timeline(7)
    assert [str(t) for t in a] == [str(t) for t in b] and len(a) > 40
    assert a.text() == b.text()


def test_different_seeds_interleave_differently():
    texts = {_timeline(seed).text() for seed in range(5)}
    assert len(texts) == 5


def test_random_run_finishes_every_update_with_readers_in_between():
    tl = _timeline(3, vcpus=3)
    assert tl.finished and tl.blocked is None
    assert [u.result for u in tl.updates] == [0, 0, -errno.ENOMEM, 0]     # the third has fail_prepare
    actors = {t.actor for t in tl}
    assert {"writer", "vcpu0", "vcpu1", "vcpu2"} <= actors


def test_failed_prepare_in_a_schedule_returns_an_error():
    vm = _vm()
    tl = Schedule(vm, writes=[(1, 0, 0x100000, 0, 0, True)], seed=1, vcpus=1).run()
    assert tl.finished and tl.updates[0].result < 0 and vm.generation(0) == 6


def test_scripted_timeline_order_and_actors():
    vm = _vm()
    tl = Schedule(vm, writes=[(1, 0, 0x100000, 0, 0)], vcpus=2, script=[
        "vcpu0 lock", "writer run", "vcpu1 lock", ("vcpu1", "access", 0x101), "vcpu0 access 0x101",
        "vcpu0 unlock", "vcpu1 unlock"]).run()
    assert tl.finished
    readers = [(t.actor, t.event.function) for t in tl if t.actor != "writer"]
    assert readers == [("vcpu0", "kvm_vm_ioctl_create_vcpu"), ("vcpu1", "kvm_vm_ioctl_create_vcpu"),
                       ("vcpu0", "srcu_read_lock"), ("vcpu1", "srcu_read_lock"),
                       ("vcpu1", "kvm_mmu_page_fault"), ("vcpu0", "kvm_mmu_page_fault"),
                       ("vcpu0", "srcu_read_unlock"), ("vcpu1", "srcu_read_unlock")]
    outcomes = [t.event.result.reason for t in tl if t.event.function == "kvm_mmu_page_fault"]
    assert outcomes == ["retry", "ok"]            # vcpu1 entered after swap #1 (fault retried), vcpu0 before
    assert vm.mmio_sptes == () and vm.vcpus[1].mmio_gfn is None
    waiting = [t for t in tl if t.event.waiting]
    assert len(waiting) == 1 and waiting[0].n < [t.n for t in tl if t.event.function == "srcu_read_unlock"][0]
    assert [t.n for t in tl] == list(range(len(tl)))
    assert all(t.event is e for t, e in zip(tl, vm.history.events[-len(tl):]))


def test_script_that_leaves_a_reader_inside_stops_blocked():
    vm = _vm()
    tl = Schedule(vm, writes=[(1, 0, 0x100000, 0, 0)], vcpus=1, script=["vcpu0 lock", "writer run"]).run()
    assert not tl.finished and "vcpu0" in tl.blocked and vm.update is tl.updates[0]
    vm.vcpus[0].srcu_read_unlock()
    vm.update.run()
    assert tl.finished


def test_notifier_in_a_script_holds_off_publish():
    vm = _vm()
    tl = Schedule(vm, writes=[(1, 1, 0x100000, 0x4000, HVA)], script=[
        f"mmu start {HVA:#x} {HVA + 0x1000:#x}", "writer run", f"mmu end {HVA:#x} {HVA + 0x1000:#x}"]).run()
    assert tl.finished
    fns = [t.event.function for t in tl]
    assert fns.index("rcuwait_wait_event") < fns.index("kvm_mmu_notifier_invalidate_range_end") \
        < fns.index("rcu_assign_pointer")


def test_observer_sees_every_tick():
    seen = []
    tl = Schedule(_vm(), writes=WRITES[:1], seed=2, vcpus=1, observer=seen.append).run()
    assert seen == list(tl)


@pytest.mark.parametrize("script, message", [
    (["vcpu3 lock"], r"script line 2: 'vcpu3 lock': vcpu 3 does not exist \(this run has 1 vCPU\(s\); pass vcpus=N"),
    (["vcpu 3 lock"], "script line 2: 'vcpu 3 lock': vcpu 3 does not exist"),
    (["vcpu0 jump"], "unknown vcpu action 'jump'; use lock, unlock, lookup, access, smm"),
    (["vcpu0 access"], r"vcpu access takes gfn \[write\], got ''"),
    (["vcpu0 access 0x10 read"], "vcpu access takes a gfn and optionally 'write', not 'read'"),
    (["vcpu0 lookup zz"], "gfn: 'zz' is not a number"),
    (["mmu start 0x2000 0x1000"], r"END must be above HVA \(got 0x2000 0x1000\)"),
    (["mn start 0x2000 0x1000"], r"END must be above HVA \(got 0x2000 0x1000\)"),
    (["writer twice"], r"use 'writer' or 'writer run' \(today spelled step and run\)"),
    (["step twice"], "step count: 'twice' is not a number"),
    (["vcpu0 smm maybe"], "vcpu smm takes on or off, not 'maybe'"),
    (["kernel 5.17"], "unknown action 'kernel'"),
    ([""], "script line 2: '': empty"),
])
def test_bad_scripts_are_clear_errors_and_leave_the_vm_alone(script, message):
    vm = _vm()
    vm.add_vcpu()
    before = len(vm.history)
    with pytest.raises(ValueError, match=message):
        Schedule(vm, writes=WRITES, script=["vcpu0 lock"] + script, vcpus=1)
    assert len(vm.history) == before and not vm.vcpus[0].inside


def test_bad_writes_are_clear_errors():
    with pytest.raises(ValueError, match="write 0"):
        Schedule(_vm(), writes=[(1, 2, 3)])
    with pytest.raises(ValueError):
        Schedule(_vm(), writes=[(1, 0, -1, 0x1000, HVA)])


def test_schedule_needs_history():
    with pytest.raises(ValueError, match="history=True"):
        Schedule(kvmviz.VM(history=False))


def test_step_back_over_a_random_schedule_restores_readers():
    vm = _vm()
    start = len(vm.history)
    tl = Schedule(vm, writes=WRITES, seed=11, vcpus=2).run()
    final = [(v.pinned, v.last_used_slot, v.smm) for v in vm.vcpus], vm.generations()
    mid = start + len(tl) // 2
    vm.history.goto(mid)
    assert kvmviz.check_invariants(vm) == []
    vm.history.goto(len(vm.history))
    assert ([(v.pinned, v.last_used_slot, v.smm) for v in vm.vcpus], vm.generations()) == final
