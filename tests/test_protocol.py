"""The 5.17 update protocol: stages, swaps, generations, object lifecycles (reference §2, §3)."""

import errno
import itertools

import pytest

import kvmviz
from kvmviz.engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from kvmviz.engine.history import StateError
from conftest import CREATE, DELETE, FLAGS_ON, HVA

MOVE = (1, 0, 0x200000, 0x10000, HVA)


def stages(steps):
    """Stage order without repeats, ignoring validate (the issue's contract)."""
    return [k for k, _ in itertools.groupby(s.stage for s in steps if s.stage != "validate")]


def checked(vm, call, fail=False):
    upd = vm.begin_set_user_memory_region(*call, fail_prepare=fail)
    for step in upd:
        assert kvmviz.check_invariants(vm) == [], step
    return upd


@pytest.mark.parametrize("setup, call, fail, expect, swaps", [
    ([], CREATE, False, ["prepare", "replace", "activate", "commit"], 1),
    ([CREATE], FLAGS_ON, False, ["prepare", "replace", "activate", "commit"], 1),
    ([CREATE], DELETE, False, ["invalidate", "prepare", "replace", "activate", "commit"], 2),
    ([CREATE], MOVE, False, ["invalidate", "prepare", "replace", "activate", "commit"], 2),
    ([CREATE], DELETE, True, ["invalidate", "prepare", "activate"], 2),
    ([CREATE], MOVE, True, ["invalidate", "prepare", "activate"], 2),
    ([], CREATE, True, ["prepare"], 0),
    ([CREATE], FLAGS_ON, True, ["prepare"], 0),
])
def test_stage_order_and_swap_count(setup, call, fail, expect, swaps):
    vm = kvmviz.VM()
    for c in setup:
        vm.set_user_memory_region(*c)
    gen = vm.generation(0)
    upd = checked(vm, call, fail)
    assert stages(upd.steps) == expect
    assert [s.function for s in upd.steps].count("rcu_assign_pointer") == swaps
    assert vm.generation(0) == gen + 2 * swaps
    assert upd.result == (-errno.ENOMEM if fail else 0)


def test_swap_is_the_reference_timeline():
    vm = kvmviz.VM()
    steps = vm.set_user_memory_region(*CREATE)
    swap = [s for s in steps if s.stage == "activate"]
    assert [s.function for s in swap] == [
        "kvm_swap_active_memslots", "rcu_assign_pointer", "kvm_swap_active_memslots",
        "synchronize_srcu_expedited", "kvm_arch_memslots_updated", "kvm_swap_active_memslots",
        "kvm_activate_memslot"]
    # in-progress value on the inactive set, then published, then the final value
    assert [s.gens[0] for s in swap[:2]] == [(0, IP, 0), (0, IP, 1)]
    assert swap[0].generation(0) == 0 and swap[1].generation(0) == IP
    assert swap[-2].gens[0] == (0, 2, 1)
    # locks: SAL held until the release step, mn_invalidate_lock only around the publish
    assert [sorted(s.locks) for s in swap[:3]] == [
        ["slots_arch_lock", "slots_lock"],
        ["mn_invalidate_lock", "slots_arch_lock", "slots_lock"],
        ["slots_lock"]]


def test_worked_example_of_reference_3_3():
    """Reference §3.3: generations and active set after each row."""
    vm = kvmviz.VM()
    slot = lambda: vm.id_to_memslot(1)
    rows = [
        (CREATE, False, 2, 1, lambda: slot() is not None),
        (FLAGS_ON, False, 4, 0, lambda: slot().flags == 1),
        ((1, 1, 0x200000, 0x10000, HVA), False, 8, 0, lambda: slot().base_gfn == 0x200),
        (DELETE, False, 12, 0, lambda: slot() is None),
        (CREATE, False, 14, 1, lambda: slot() is not None),
        (DELETE, True, 18, 1, lambda: slot() is not None),
        (CREATE, False, 18, 1, lambda: slot() is not None),                # no-op
        ((2, 0, 0x300000, 0x1000, HVA), True, 18, 1, lambda: vm.id_to_memslot(2) is None),
    ]
    for call, fail, gen, active, ok in rows:
        upd = checked(vm, call, fail)
        assert (vm.generation(0), vm.active_idx[0], ok()) == (gen, active, True), (call, fail)
    assert vm.generation(1) == 1


def test_move_middle_value_belongs_to_the_invalid_set():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CREATE)
    upd = vm.begin_set_user_memory_region(*MOVE)
    old = vm.id_to_memslot(1)
    for step in upd:
        if step.function == "kvm_arch_flush_shadow_memslot":
            active, inactive = vm.active_set(0), vm.inactive_set(0)
            copy = active.id_to_memslot(1)
            assert copy.invalid and copy is not old and inactive.id_to_memslot(1) is old
            assert vm.generation(0) == 4 and copy.base_gfn == old.base_gfn
            assert copy.dirty_bitmap is old.dirty_bitmap and copy.arch is old.arch
    new = vm.id_to_memslot(1)
    assert new.base_gfn == 0x200 and new is not old and old.freed
    assert vm.arch.zap_all_count == 1


def test_at_rest_both_sets_hold_the_same_objects():
    vm = kvmviz.VM()
    for call in (CREATE, (2, 0, 0, 0x1000, HVA), FLAGS_ON, MOVE):
        vm.set_user_memory_region(*call)
        a, b = vm.memslots(0), vm.memslots(0, "inactive")
        assert len(a) == len(b) and all(x is y for x, y in zip(a, b))


def test_dirty_bitmap_life():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*FLAGS_ON[:1], 1, *CREATE[2:])                 # CREATE with logging
    bm = vm.id_to_memslot(1).dirty_bitmap
    assert bm.nbytes == 2 * 8 and not bm.freed                           # 16 pages -> one long, x2
    vm.set_user_memory_region(1, 1, 0x200000, 0x10000, HVA)              # MOVE keeps logging
    assert vm.id_to_memslot(1).dirty_bitmap is bm
    vm.set_user_memory_region(1, 0, 0x200000, 0x10000, HVA)              # logging off
    assert vm.id_to_memslot(1).dirty_bitmap is None and bm.freed
    vm.set_user_memory_region(1, 1, 0x200000, 0x10000, HVA)              # on again: a new one
    bm2 = vm.id_to_memslot(1).dirty_bitmap
    assert bm2 is not bm and not bm2.freed
    vm.set_user_memory_region(1, 0, 0, 0, 0)
    assert bm2.freed


def test_failed_create_frees_what_prepare_allocated():
    vm = kvmviz.VM()
    upd = checked(vm, (1, 1, 0, 0x1000, HVA), fail=True)
    texts = " ".join(s.text for s in upd.steps)
    assert "free the dirty bitmap bm1" in texts and "c87661f855c3" in texts
    assert vm.memslots(0) == [] and vm.nr_memslot_pages == 0


def test_failed_delete_reverts_and_keeps_the_slot_object():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CREATE)
    old = vm.id_to_memslot(1)
    with pytest.raises(kvmviz.KvmError) as info:
        vm.set_user_memory_region(*DELETE, fail_prepare=errno.EIO)
    assert info.value.errno == errno.EIO and "two swaps" in str(info.value)
    assert vm.id_to_memslot(1) is old and vm.memslots(0, "inactive")[0] is old
    assert vm.generation(0) == 6 and vm.arch.zap_all_count == 1
    invalid = [s for s in vm.history.events if "allocate #" in s.text and "INVALID" in s.text]
    assert invalid, "the INVALID copy was allocated"


def test_flags_only_uses_o1_replace_and_shares_arch():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CREATE)
    old = vm.id_to_memslot(1)
    steps = vm.set_user_memory_region(*FLAGS_ON)
    new = vm.id_to_memslot(1)
    replaces = [s for s in steps if s.touched and s.touched[0][2] != "gen"]
    assert len(replaces) == 2 and all("O(1) rb_replace_node" in s.text for s in replaces)
    assert all(s.cost.get("gfn_tree_nodes") == 1 for s in replaces)
    assert new.arch is old.arch and not new.arch.freed and old.freed


def test_delete_frees_everything_after_the_last_grace_period():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 1, 0x100000, 0x10000, HVA)
    old = vm.id_to_memslot(1)
    bm, arch = old.dirty_bitmap, old.arch
    steps = vm.set_user_memory_region(*DELETE)
    last_sync = max(i for i, s in enumerate(steps) if s.function == "synchronize_srcu_expedited")
    free = next(i for i, s in enumerate(steps) if s.function == "kvm_free_memslot")
    assert last_sync < free and old.freed and bm.freed and arch.freed
    assert vm.nr_memslot_pages == 0


def test_steps_of_a_failed_call_are_one_validate_step():
    vm = kvmviz.VM()
    upd = vm.begin_set_user_memory_region(1, 0, 0, 0, 0)
    assert [s.stage for s in upd] == ["validate"] and upd.result == -errno.EINVAL


def test_mmu_notifier_holds_off_the_swap():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CREATE)
    hits = vm.mmu_notifier_invalidate_range_start(HVA + 0x1000, HVA + 0x3000)
    assert [(a, s.id, g0, g1) for a, s, g0, g1 in hits] == [(0, 1, 0x101, 0x103)]
    upd = vm.begin_set_user_memory_region(*FLAGS_ON)
    steps = list(upd)                       # iteration stops at the wait
    assert steps[-1].waiting and steps[-1].function == "rcuwait_wait_event" and upd.result is None
    assert "1 MMU-notifier invalidation" in upd.blocked
    assert vm.generation(0) == 2 and vm.inactive_set(0).generation == 2 | IP
    recorded = len(vm.history)
    assert all(next(upd) is steps[-1] for _ in range(3)) and len(vm.history) == recorded   # waiting records nothing
    vm.mmu_notifier_invalidate_range_end(HVA + 0x1000, HVA + 0x3000)
    assert upd.run()[-1].result == 0 and upd.blocked is None
    assert [s.function for s in upd.steps if s.waiting] == ["rcuwait_wait_event"]


def test_set_user_memory_region_refuses_to_block_forever():
    """Finding 6 of issue 14: a one-shot call a reader would block is refused before it starts."""
    vm = kvmviz.VM()
    vm.mmu_notifier_invalidate_range_start(0, 0x1000)
    before, recorded = vm.generations(), len(vm.history)
    with pytest.raises(StateError, match="would be blocked"):
        vm.set_user_memory_region(*CREATE)
    assert (vm.update, vm.locks, vm.generations(), len(vm.history)) == (None, frozenset(), before, recorded)
    vm.mmu_notifier_invalidate_range_end(0, 0x1000)
    assert vm.set_user_memory_region(*CREATE)[-1].result == 0


def test_mmio_generation_wrap_zaps_everything():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CREATE)
    vm.active_set(0).generation = (1 << 19) - 2        # jump near the wrap, as both sets would be
    vm.inactive_set(0).generation = (1 << 19) - 4
    object.__setattr__(vm, "swaps", ((1 << 18) - 1, 0))
    steps = vm.set_user_memory_region(*FLAGS_ON)
    hook = next(s for s in steps if s.function == "kvm_arch_memslots_updated")
    assert "wrapped" in hook.text and vm.arch.mmio_wraps == 1 and vm.generation(0) == 1 << 19


def test_same_inputs_same_steps():
    def trace():
        vm = kvmviz.VM()
        out = []
        for call, fail in ((CREATE, False), (FLAGS_ON, False), (MOVE, True), (MOVE, False), (DELETE, False)):
            out += [(s.stage, s.function, s.text, s.gens, s.locks) for s in
                    vm.begin_set_user_memory_region(*call, fail_prepare=fail)]
        return out
    assert trace() == trace()
