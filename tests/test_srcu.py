"""SRCU grace periods, MMU-notifier waits, lock lanes and step-back with readers
(reference §1.5, §3.4, §5.3)."""

import pytest

import kvmviz
from kvmviz.engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from kvmviz.engine.events import ReaderAction
from kvmviz.engine.srcu import Srcu
from conftest import HVA

CREATE1 = (1, 0, 0x100000, 0x4000, HVA)
CREATE2 = (2, 0, 0x200000, 0x1000, HVA + 0x100000)
DELETE1 = (1, 0, 0x100000, 0, 0)
SL, SAL, MNL = "slots_lock", "slots_arch_lock", "mn_invalidate_lock"


def _create_held_by_one_reader():
    """CREATE until it waits for vcpu0, which entered before the publish."""
    vm = kvmviz.VM()
    v = vm.add_vcpu()
    v.srcu_read_lock()
    upd = vm.begin_set_user_memory_region(*CREATE1)
    assert upd.run_until()[-1].waiting and upd.blocked
    return vm, v, upd


def _create_past_one_reader():
    """CREATE while vcpu0 holds the grace period open, then let it finish."""
    vm, v, upd = _create_held_by_one_reader()
    v.srcu_read_unlock()
    upd.run()
    return vm, v, upd


def test_srcu_holders_are_only_readers_that_entered_before_the_grace_period():
    s = Srcu()
    assert s.read_lock("a") == 0
    gp = s.start_grace_period()
    s.read_lock("b")
    assert s.holders(gp) == ("a",) and not s.grace_period_done(gp)
    s.read_unlock("a")
    assert s.grace_period_done(gp) and s.inside("b") and not s.inside("a")
    with pytest.raises(RuntimeError, match="already inside"):
        s.read_lock("b")
    with pytest.raises(RuntimeError, match="not inside"):
        s.read_unlock("a")


def test_grace_period_waits_only_for_readers_that_entered_before_publish():
    vm = kvmviz.VM()
    early, late = vm.add_vcpu(), vm.add_vcpu()
    early.srcu_read_lock()
    upd = vm.begin_set_user_memory_region(*CREATE1)
    assert upd.run_until()[-1].waiting and upd.blocked
    waiting = upd.steps[-1]
    assert waiting.waiting and waiting.function == "synchronize_srcu_expedited"
    assert upd.blocked == "SRCU readers still inside: vcpu0"
    late.srcu_read_lock()                       # sees the new set, does not hold the writer up
    assert late.memslots().name == "as0/set1" and late.generation() == 0 | IP
    assert upd.blocked == "SRCU readers still inside: vcpu0"
    early.srcu_read_unlock()
    assert upd.blocked is None
    rest = list(upd)
    assert not any(s.waiting for s in rest) and upd.result == 0
    assert late.inside and late.generation() == 2     # same set, now with the final generation


def test_waiting_steps_change_nothing():
    vm, _, upd = _create_held_by_one_reader()
    before = (vm.generations(), vm.active_idx, vm.locks, [s.slots() for a in vm.sets for s in a],
              dict(vm.cost))
    steps = [next(upd) for _ in range(5)]
    assert all(s.waiting and s.function == "synchronize_srcu_expedited" for s in steps)
    after = (vm.generations(), vm.active_idx, vm.locks, [s.slots() for a in vm.sets for s in a],
             dict(vm.cost))
    assert before == after and all(s.cost == {} for s in steps)


def test_locks_in_the_step_record():
    _, _, upd = _create_past_one_reader()
    by_fn = {}
    for s in upd.steps:
        by_fn.setdefault(s.function, []).append(s.locks)
    assert by_fn["rcu_assign_pointer"] == [frozenset({SL, SAL, MNL})]
    # slots_arch_lock is dropped before the grace period (reference §1.5)
    assert set(by_fn["synchronize_srcu_expedited"]) == {frozenset({SL})}
    assert by_fn["kvm_arch_prepare_memory_region"] == [frozenset({SL, SAL})]
    assert by_fn["kvm_arch_commit_memory_region"] == [frozenset({SL})]
    assert upd.steps[-1].locks == frozenset()


def test_mmu_notifier_holds_off_publish_then_releases_it():
    vm = kvmviz.VM()
    vm.mmu_notifier_invalidate_range_start(HVA, HVA + 0x1000)
    upd = vm.begin_set_user_memory_region(*CREATE1)
    assert upd.run_until()[-1].waiting and upd.blocked
    step = upd.steps[-1]
    assert step.waiting and step.function == "rcuwait_wait_event"
    assert "1 MMU-notifier invalidation" in upd.blocked and vm.active_idx[0] == 0
    assert vm.inactive_set(0).generation == 0 | IP      # marked, not yet published
    vm.mmu_notifier_invalidate_range_end(HVA, HVA + 0x1000)
    assert upd.blocked is None
    upd.run()
    assert upd.result == 0 and vm.generation(0) == 2


def test_hva_walk_reports_the_slot_then_the_invalid_copy_then_nothing():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CREATE1)
    hits = vm.mmu_notifier_invalidate_range_start(HVA + 0x1800, HVA + 0x2001)
    assert [(h.as_id, h.slot.id, h.gfn_start, h.gfn_end, h.invalid) for h in hits] == \
        [(0, 1, 0x101, 0x103, False)]
    vm.mmu_notifier_invalidate_range_end(HVA + 0x1800, HVA + 0x2001)
    upd = vm.begin_set_user_memory_region(*DELETE1)
    for step in upd:
        if step.function == "kvm_arch_flush_shadow_memslot":
            break
    hits = vm.mmu_notifier_invalidate_range_start(HVA, HVA + 0x10000)
    assert [(h.slot.id, h.gfn_start, h.gfn_end, h.invalid) for h in hits] == [(1, 0x100, 0x104, True)]
    assert "INVALID" in str(hits[0])
    vm.mmu_notifier_invalidate_range_end(HVA, HVA + 0x10000)
    upd.run()
    assert vm.mmu_notifier_invalidate_range_start(HVA, HVA + 0x10000) == []


def test_notifier_hits_in_smm_address_space():
    vm = kvmviz.VM()
    vm.set_user_memory_region((1 << 16) | 3, 0, 0x0, 0x2000, HVA)
    hits = vm.mmu_notifier_invalidate_range_start(HVA + 0x1000, HVA + 0x2000)
    assert [(h.as_id, h.gfn_start, h.gfn_end) for h in hits] == [(1, 1, 2)]


def test_reader_and_notifier_actions_are_history_events_and_step_back_restores_them():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CREATE1)
    v = vm.add_vcpu()
    n0 = len(vm.history)
    v.srcu_read_lock()
    v.gfn_to_memslot(0x100)
    vm.mmu_notifier_invalidate_range_start(HVA, HVA + 0x1000)
    events = vm.history.events[n0:]
    assert [type(e) for e in events] == [ReaderAction] * 3
    assert [(e.actor, e.function) for e in events] == [
        ("vcpu0", "srcu_read_lock"), ("vcpu0", "kvm_vcpu_gfn_to_memslot"),
        ("mmu_notifier", "kvm_mmu_notifier_invalidate_range_start")]
    assert [e.index for e in events] == [n0, n0 + 1, n0 + 2]
    vm.history.goto(n0)
    assert not v.inside and vm.srcu.readers == () and v.last_used_slot is None
    assert vm.mn_active_invalidate_count == 0
    vm.history.goto(n0 + 3)
    assert v.inside and v.last_used_slot.id == 1 and vm.mn_active_invalidate_count == 1
    assert vm.srcu.readers[0][0] is v


def test_step_back_through_a_blocked_update_with_readers():
    vm, v, _ = _create_past_one_reader()
    end = len(vm.history)
    states = []
    for n in range(end, -1, -1):
        vm.history.goto(n)
        states.append((n, v.inside, vm.generations(), kvmviz.check_invariants(vm)))
    assert all(problems == [] for *_, problems in states)
    vm.history.goto(end)
    assert vm.generation(0) == 2 and not v.inside


def test_readers_refuse_to_act_in_the_past():
    vm = kvmviz.VM()
    v = vm.add_vcpu()
    v.srcu_read_lock()
    vm.history.back()
    with pytest.raises(RuntimeError, match="stepped back"):
        v.srcu_read_lock()
