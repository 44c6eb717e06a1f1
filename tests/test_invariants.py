"""The invariant checker catches each kind of broken state, and only those."""

import kvmviz
from kvmviz.engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP

HVA = 0x7f0000000000


def vm_with_slots():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0, 0x4000, HVA)
    vm.set_user_memory_region(2, 0, 0x10000, 0x4000, HVA + 0x10000)
    assert kvmviz.check_invariants(vm) == []
    return vm


def one(vm, fragment):
    problems = kvmviz.check_invariants(vm)
    assert any(fragment in p for p in problems), problems
    return problems


def test_in_place_write_to_a_live_slot():
    vm = vm_with_slots()
    vm.id_to_memslot(1).flags = 1
    one(vm, "#1.flags changed in place")


def test_write_to_a_slot_only_in_the_inactive_set_is_allowed():
    vm = vm_with_slots()
    upd = vm.begin_set_user_memory_region(1, 0, 0, 0, 0)
    for step in upd:
        if step.function == "kvm_arch_flush_shadow_memslot":
            old = vm.inactive_set(0).id_to_memslot(1)
            assert not old.invalid
            old.userspace_addr = old.userspace_addr     # like old.arch = invalid.arch: legal
            assert vm.in_place_writes == ()


def test_sets_disagree_at_rest():
    vm = vm_with_slots()
    vm.inactive_set(0).replace(vm.inactive_set(0).id_to_memslot(2), None)
    one(vm, "at rest both sets must hold the same slot objects")


def test_overlap_and_misplaced_node():
    vm = vm_with_slots()
    s = vm.inactive_set(0)
    x = s.id_to_memslot(2)
    object.__setattr__(x, "base_gfn", 2)             # behind the checker's back
    problems = one(vm, "overlaps")
    assert any("sits under gfn 0x10" in p for p in problems)


def test_indexes_out_of_step():
    vm = vm_with_slots()
    s = vm.active_set(0)
    s.hash_del(s.id_to_memslot(1))
    one(vm, "the id hash holds 1 slots, the gfn tree 2")
    s2 = vm.inactive_set(0)
    s2.hva_remove(s2.id_to_memslot(2))
    one(vm, "the hva tree holds 1 slots")


def test_freed_but_reachable():
    vm = vm_with_slots()
    vm.free(vm.id_to_memslot(2))
    one(vm, "#2 was freed but the set still links it")
    vm2 = vm_with_slots()
    vm2.set_user_memory_region(1, 1, 0, 0x4000, HVA)
    vm2.free(vm2.id_to_memslot(1).dirty_bitmap)
    one(vm2, "points to freed dirty_bitmap")


def test_dangling_last_used_slot():
    vm = vm_with_slots()
    s = vm.active_set(0)
    s.last_used_slot = kvmviz.Memslot(uid=99)
    one(vm, "last_used_slot points to #99")


def test_generation_rules():
    vm = vm_with_slots()
    vm.active_set(0).generation += 2                   # a bump without a swap
    one(vm, "expected 0x4")
    vm = vm_with_slots()
    vm.active_set(0).generation += 1
    one(vm, "is not 0 mod 2")
    vm = vm_with_slots()
    vm.active_set(0).generation |= IP
    one(vm, "in-progress bit is set but no update is running")
    vm = vm_with_slots()
    vm.inactive_set(0).generation = vm.generation(0) + 2     # final value before publishing
    one(vm, "expected the stale 0x2")


def test_locks_left_held():
    vm = vm_with_slots()
    vm.lock("slots_arch_lock")
    one(vm, "slots_arch_lock is still held")


def test_mid_update_difference_must_be_the_changing_slot():
    vm = vm_with_slots()
    upd = vm.begin_set_user_memory_region(1, 0, 0x20000, 0x4000, HVA)
    for step in upd:
        if step.function == "kvm_move_memslot":
            assert kvmviz.check_invariants(vm) == []
            s = vm.inactive_set(0)
            s.replace(s.id_to_memslot(2), None)
            one(vm, "may differ only in slot 1")
            break


def test_arch_write_to_a_live_slot_under_slots_arch_lock_is_sanctioned():
    """x86 lazy rmap allocation: the one in-place write the kernel allows (reference §1.5)."""
    vm = vm_with_slots()
    v = vm.add_vcpu()
    v.srcu_read_lock()
    live = v.gfn_to_memslot(0)                          # a reader holds the slot
    vm.lock("slots_arch_lock")
    live.arch = vm.alloc("arch", 8)
    vm.unlock("slots_arch_lock")
    assert len(vm.in_place_writes) == 1 and kvmviz.check_invariants(vm) == []


def test_other_writes_under_slots_arch_lock_and_arch_without_it_are_reported():
    vm = vm_with_slots()
    vm.lock("slots_arch_lock")
    vm.id_to_memslot(1).flags = 1                       # not arch: the lock does not make it legal
    vm.unlock("slots_arch_lock")
    vm.id_to_memslot(2).arch = vm.alloc("arch", 8)     # arch, but without the lock
    problems = [p for p in kvmviz.check_invariants(vm) if "changed in place" in p]
    assert [p.split(" changed")[0] for p in problems] == ["as0: #1.flags", "as0: #2.arch"]


def test_sanctioned_arch_write_follows_history():
    vm = vm_with_slots()
    vm.lock("slots_arch_lock")
    vm.id_to_memslot(1).arch = vm.alloc("arch", 8)
    vm.unlock("slots_arch_lock")
    vm.history.record("lazy rmap allocation")
    vm.id_to_memslot(1).arch = vm.alloc("arch", 8)     # again, without the lock
    vm.history.record("unlocked arch write")
    assert len(kvmviz.check_invariants(vm)) == 1
    vm.history.back()
    assert vm.history.cursor and kvmviz.check_invariants(vm) == []


def test_without_history_every_arch_write_is_reported():
    vm = kvmviz.VM(history=False)
    vm.set_user_memory_region(1, 0, 0, 0x4000, HVA)
    vm.lock("slots_arch_lock")
    vm.id_to_memslot(1).arch = vm.alloc("arch", 8)
    vm.unlock("slots_arch_lock")
    assert any("#1.arch changed in place" in p for p in kvmviz.check_invariants(vm))
