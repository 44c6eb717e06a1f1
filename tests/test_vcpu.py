"""vCPUs as SRCU readers: pinned sets, SMM, caches keyed by the generation, what a
vCPU sees in each window of DELETE and MOVE, and the reader invariants
(reference §1.5, §2.3, §3.2, §3.5, §5.1)."""

import pytest

import kvmviz
from kvmviz.engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from kvmviz.engine.vcpu import MmioSpte, check_mmio_spte
from conftest import HVA

GPA = 0x100000
SLOT1 = (1, 0, GPA, 0x4000, HVA)          # gfn 0x100..0x103
DELETE1 = (1, 0, GPA, 0, 0)
MOVE1 = (1, 0, 0x300000, 0x4000, HVA)     # gfn 0x300..0x303
HOLE = 0x200


def _vm(*regions):
    vm = kvmviz.VM()
    for r in regions:
        vm.set_user_memory_region(*r)
    return vm


def _sync_done(n):
    """Predicate: the n-th grace period of the update is over."""
    seen = []

    def pred(step):
        if step.function == "synchronize_srcu_expedited" and not step.waiting:
            seen.append(step)
        return len(seen) == n
    return pred


def _fresh_access(vm, v, gfn, write=False):
    """Enter a read section now, access, leave: what a vCPU running now sees."""
    v.srcu_read_lock()
    out = v.access(gfn, write)
    v.srcu_read_unlock()
    return out


# -- vCPUs, pinning, SMM --------------------------------------------------------------
def test_add_vcpu_and_vcpus_tuple():
    vm = kvmviz.VM()
    a, b = vm.add_vcpu(), vm.add_vcpu()
    assert vm.vcpus == [a, b] and (a.name, b.vcpu_id) == ("vcpu0", 1)
    assert vm.history.events[-1].function == "kvm_vm_ioctl_create_vcpu"
    vm.history.back()
    assert vm.vcpus == [a]


def test_lock_pins_the_set_active_now_and_its_generation():
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    assert v.pinned == (1, 0) and v.pinned_gens == (2, 1)
    upd = vm.begin_set_user_memory_region(*DELETE1)
    assert upd.run_until("rcu_assign_pointer")[-1].function == "rcu_assign_pointer"
    assert vm.active_idx[0] == 0                     # the writer published set 0 ...
    assert v.memslots().name == "as0/set1"            # ... vcpu0 still reads set 1
    assert v.gfn_to_memslot(0x100).label == "#1" and not v.gfn_to_memslot(0x100).invalid
    v.srcu_read_unlock()
    # outside a section the vCPU reads the active set (and the action says so)
    slot = v.gfn_to_memslot(0x100)
    assert slot.invalid and "lockdep" in vm.history.events[-1].text


def test_smm_selects_address_space_1():
    vm = _vm(SLOT1, ((1 << 16) | 5, 0, 0, 0x1000, HVA + 0x100000))
    v = vm.add_vcpu()
    v.srcu_read_lock()
    assert v.gfn_to_memslot(0) is None and v.gfn_to_memslot(0x100).id == 1
    v.set_smm(True)
    assert v.address_space == 1
    assert v.gfn_to_memslot(0).as_id == 1 and v.gfn_to_memslot(0x100) is None
    assert v.access(0).generation == vm.generation(1) == 3
    assert v.gfn_to_memslot(0x100, as_id=0).id == 1           # explicit address space


def test_vcpu_slot_cache_is_dropped_when_the_generation_changes():
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    first = v.gfn_to_memslot(0x101)
    assert v.last_used_slot is first and v.last_used_slot_gen == 2
    v.gfn_to_memslot(0x102)
    assert "hit in the vCPU slot cache" in vm.history.events[-1].text
    vm.active_set(0).last_used_slot = None
    v.gfn_to_memslot(0x103)
    assert vm.active_set(0).last_used_slot is None     # search_memslots leaves the VM-wide cache alone
    v.srcu_read_unlock()
    vm.set_user_memory_region(2, 0, 0x400000, 0x1000, HVA + 0x400000)
    v.srcu_read_lock()
    assert v.gfn_to_memslot(0x101) is first
    text = vm.history.events[-1].text
    assert "is stale: the generation is now 0x4" in text and "search_memslots" in text
    assert v.last_used_slot_gen == 4


# -- access outcomes -------------------------------------------------------------------
def test_access_reasons_hva_and_generation():
    vm = _vm(SLOT1, (2, kvmviz.KVM_MEM_READONLY, 0x500000, 0x1000, HVA + 0x500000))
    v = vm.add_vcpu()
    v.srcu_read_lock()
    ok = v.access(0x102)
    assert (ok.reason, ok.hva, ok.generation, ok.exit_reason) == ("ok", HVA + 0x2000, 4, None)
    assert v.access(0x500).reason == "ok"
    ro = v.access(0x500, write=True)
    assert (ro.reason, ro.hva, ro.exit_reason) == ("readonly", None, "KVM_EXIT_MMIO")
    hole = v.access(HOLE)
    assert (hole.reason, hole.slot, hole.exit_reason) == ("no-slot", None, "KVM_EXIT_MMIO")


def test_stale_mmio_spte_is_rejected_after_a_create():
    vm = kvmviz.VM()
    v = vm.add_vcpu()
    v.srcu_read_lock()
    first = v.access(0x100)
    assert first.reason == "no-slot" and vm.mmio_sptes == (MmioSpte(0, 0x100, 0, 0, "no-slot"),)
    again = v.access(0x100)
    assert again.path == "mmio-spte" and again.reason == "no-slot"
    v.srcu_read_unlock()
    vm.set_user_memory_region(*SLOT1)                  # CREATE does not zap shadow pages
    v.srcu_read_lock()
    now = v.access(0x100)
    assert now.reason == "ok" and now.path == "memslot"
    assert any("stale MMIO SPTE for gfn 0x100 rejected" in n and "0x0 differs from the current 0x2" in n
               for n in now.notes)


def test_mmio_caches_refuse_while_bit_63_is_set():
    vm = _vm(SLOT1)
    v, w = vm.add_vcpu(), vm.add_vcpu()
    w.srcu_read_lock()                                 # an old reader keeps the grace period open
    v.srcu_read_lock()
    v.access(HOLE)                                     # MMIO SPTE and MMIO info under generation 2
    assert (v.mmio_gfn, v.mmio_gen) == (HOLE, 2)
    v.srcu_read_unlock()
    upd = vm.begin_set_user_memory_region(2, 0, 0x600000, 0x1000, HVA + 0x600000)
    assert upd.run_until()[-1].waiting
    v.srcu_read_lock()                                 # enters after publish: generation 2|IP
    assert v.generation() == 2 | IP
    out = v.access(HOLE)
    assert out.path == "memslot" and out.reason == "no-slot"
    assert any("has the in-progress bit set" in n for n in out.notes)          # SPTE distrusted
    assert any("vcpu_cache_mmio_info refuses" in n for n in out.notes)
    assert (v.mmio_gfn, v.mmio_gen) == (HOLE, 2)       # not refreshed
    assert vm.mmio_sptes[-1].generation == 2           # bit 63 is not stored in the SPTE
    assert not v.match_mmio_gfn(HOLE)
    assert "stale MMIO info for gfn 0x200 rejected" in vm.history.events[-1].text
    v.srcu_read_unlock()
    w.srcu_read_unlock()
    upd.run()
    v.srcu_read_lock()
    out = v.access(HOLE)
    assert out.path == "memslot" and any("0x2 differs from the current 0x4" in n for n in out.notes)
    assert v.match_mmio_gfn(HOLE) and v.access(HOLE).path == "mmio-spte"


def test_mmio_spte_keeps_19_bits_so_generations_alias_after_a_wrap():
    spte = MmioSpte(0, 0x10, ((1 << 19) + 2) & ((1 << 19) - 1), 0, "no-slot")
    assert spte.generation == 2
    assert check_mmio_spte(spte, 2)[0] and check_mmio_spte(spte, (1 << 19) + 2)[0]
    assert not check_mmio_spte(spte, 2 | IP)[0] and not check_mmio_spte(spte, 4)[0]


def test_zap_all_makes_mmio_sptes_obsolete():
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    v.access(HOLE)
    v.srcu_read_unlock()
    vm.set_user_memory_region(*DELETE1)                # the flush zaps every shadow page
    v.srcu_read_lock()
    assert v.access(HOLE).path == "memslot"


def test_gfn_to_hva_cache_reinits_on_generation_change():
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    ghc = v.gfn_to_hva_cache_init(GPA + 0x1010, 0x10)
    assert (ghc.hva, ghc.generation, ghc.memslot.id, ghc.inits) == (HVA + 0x1010, 2, 1, 1)
    r = ghc.read(8, 8)
    assert (r.reason, r.hva, r.path, r.notes) == ("ok", HVA + 0x1018, "gfn_to_hva_cache", ())
    v.srcu_read_unlock()
    vm.set_user_memory_region(1, kvmviz.KVM_MEM_LOG_DIRTY_PAGES, GPA, 0x4000, HVA)    # FLAGS_ONLY
    v.srcu_read_lock()
    w = ghc.write()
    assert w.reason == "ok" and ghc.inits == 2 and ghc.generation == 4
    assert w.notes[0] == "stale cache: made under generation 0x2, now 0x4; init again"
    assert any("mark_page_dirty_in_slot" in n for n in w.notes)
    assert ghc.read(0, 0x20).reason == "einval"
    v.srcu_read_unlock()
    vm.set_user_memory_region(*DELETE1)
    v.srcu_read_lock()
    assert ghc.read().reason == "efault" and ghc.hva is None


def test_gfn_to_hva_cache_crossing_a_page_uses_the_slow_path():
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    ghc = v.gfn_to_hva_cache_init(GPA + 0xff8, 0x10)
    assert ghc.memslot is None
    r = ghc.read()
    assert r.reason == "ok" and "slow path" in r.notes[0]
    assert v.gfn_to_hva_cache_init(HOLE << 12, 8).hva is None


# -- what a vCPU sees, reference §2.3 ---------------------------------------------------
@pytest.mark.parametrize("change", ["DELETE", "MOVE"])
def test_window_before_swap_1_is_normal(change):
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    upd = vm.begin_set_user_memory_region(*(DELETE1 if change == "DELETE" else MOVE1))
    # the INVALID copy goes into the inactive set
    assert upd.run_until("kvm_replace_memslot")[-1].function == "kvm_replace_memslot"
    out = _fresh_access(vm, v, 0x101)
    assert (out.reason, out.hva, out.slot.label, out.generation) == ("ok", HVA + 0x1000, "#1", 2)
    assert upd.change == change


@pytest.mark.parametrize("change", ["DELETE", "MOVE"])
def test_window_between_the_swaps_retries_the_fault(change):
    vm = _vm(SLOT1)
    v, old_reader = vm.add_vcpu(), vm.add_vcpu()
    old_reader.srcu_read_lock()
    upd = vm.begin_set_user_memory_region(*(DELETE1 if change == "DELETE" else MOVE1))
    assert upd.run_until("rcu_assign_pointer")[-1].function == "rcu_assign_pointer"
    right_after = _fresh_access(vm, v, 0x101)
    assert (right_after.reason, right_after.hva, right_after.generation) == ("retry", None, 2 | IP)
    assert right_after.slot.invalid and right_after.exit_reason is None
    assert "RET_PF_RETRY" in right_after.notes[-1] and "e0c378684b65" in right_after.notes[-1]
    assert old_reader.access(0x101).reason == "ok"      # entered before swap #1: still the old set
    old_reader.srcu_read_unlock()
    flush = upd.run_until("kvm_arch_flush_shadow_memslot")[-1]
    assert flush.function == "kvm_arch_flush_shadow_memslot" and "is retried (RET_PF_RETRY" in flush.text and "before 5.13 it was handled like MMIO" in flush.text
    after_flush = _fresh_access(vm, v, 0x101, write=True)
    assert (after_flush.reason, after_flush.generation, after_flush.exit_reason) == ("retry", 4, None)
    assert vm.mmio_sptes == () and (v.mmio_gfn, v.mmio_gen) == (None, None)   # no MMIO SPTE, nothing cached
    assert not v.match_mmio_gfn(0x101)
    if change == "MOVE":
        assert _fresh_access(vm, v, 0x301).reason == "no-slot"          # not at the new gfn yet
        assert vm.mmio_sptes == (MmioSpte(0, 0x301, 4, 1, "no-slot"),)


def test_window_between_the_swaps_fails_hva_users_with_efault():
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    ghc = v.gfn_to_hva_cache_init(GPA + 0x1008, 8)
    upd = vm.begin_set_user_memory_region(*DELETE1)
    assert upd.run_until("kvm_arch_flush_shadow_memslot")[-1].function == "kvm_arch_flush_shadow_memslot"
    v.srcu_read_lock()
    r = ghc.read()
    assert (r.reason, r.hva, ghc.hva, ghc.memslot) == ("efault", None, None, None)
    assert "gfn 0x101: invalid-slot (KVM_HVA_ERR_BAD)" in r.notes
    fresh = v.gfn_to_hva_cache_init(GPA + 0x1008, 8)
    assert fresh.hva is None and fresh.generation == 4
    slot = v.gfn_to_memslot(0x101)
    assert slot.invalid and kvmviz.engine.vcpu.gfn_to_hva(slot, 0x101, False) == ("invalid-slot", None)
    assert v.access(0x101).reason == "retry"                    # the fault path retries instead


def _after_swap_2(region):
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    upd = vm.begin_set_user_memory_region(*region)
    assert upd.run_until(_sync_done(2))[-1].function == "synchronize_srcu_expedited"
    return vm, v, upd


def test_window_after_swap_2_delete_is_gone():
    vm, v, upd = _after_swap_2(DELETE1)
    out = _fresh_access(vm, v, 0x101)
    assert (out.reason, out.slot, out.generation) == ("no-slot", None, 4 | IP)
    upd.run()
    assert _fresh_access(vm, v, 0x101).generation == 6


def test_window_after_swap_2_move_is_at_the_new_gfn():
    vm, v, upd = _after_swap_2(MOVE1)
    new = _fresh_access(vm, v, 0x301)
    assert (new.reason, new.hva, new.slot.base_gfn) == ("ok", HVA + 0x1000, 0x300)
    assert _fresh_access(vm, v, 0x101).reason == "no-slot"             # the old range is a hole
    upd.run()
    assert _fresh_access(vm, v, 0x303).hva == HVA + 0x3000


@pytest.mark.parametrize("region", [DELETE1, MOVE1])
def test_window_after_a_revert_is_normal_again(region):
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    zaps = vm.arch.zap_all_count
    upd = vm.begin_set_user_memory_region(*region, fail_prepare=True)
    assert upd.run_until(_sync_done(1))[-1].function == "synchronize_srcu_expedited"
    assert _fresh_access(vm, v, 0x101).reason == "retry"
    upd.run()
    assert upd.result < 0 and vm.arch.zap_all_count == zaps + 1     # shadow pages were zapped: refault
    out = _fresh_access(vm, v, 0x101)
    assert (out.reason, out.hva, out.slot.label, out.generation) == ("ok", HVA + 0x1000, "#1", 6)
    assert _fresh_access(vm, v, 0x301).reason == "no-slot"


# -- reader invariants --------------------------------------------------------------------
def test_pinned_old_set_counts_as_visible_for_in_place_writes():
    for pinned in (True, False):
        vm = _vm(SLOT1)
        v = vm.add_vcpu()
        if pinned:
            v.srcu_read_lock()
        upd = vm.begin_set_user_memory_region(*DELETE1)
        assert upd.run_until("rcu_assign_pointer")[-1].function == "rcu_assign_pointer"
        old = vm.inactive_set(0).id_to_memslot(1)
        old.flags = 4                          # write to the slot only the old set holds
        problems = kvmviz.check_invariants(vm)
        assert [(p.rule, p.split(" changed")[0]) for p in problems] == [("in-place", "as0: #1.flags")] * pinned


def test_reader_rules_catch_edits_frees_and_stale_caches():
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    slot = v.gfn_to_memslot(0x100)
    assert kvmviz.check_invariants(vm) == []

    def reader():
        return [(p.rule, p.split(" (")[0]) for p in kvmviz.check_invariants(vm) if p.startswith("vcpu0")]
    slot.npages = 2
    assert reader() == [("in-place", "vcpu0 looked up #1")]
    assert "modified after it was published" in [p for p in kvmviz.check_invariants(vm) if p.startswith("vcpu0")][0]
    slot.npages = 4
    vm.active_set(0).replace(slot, None)                # edit the set a reader pins
    assert reader() == [("grace-period", "vcpu0 pinned as0/set1"), ("stale-cache", "vcpu0's slot cache")]
    assert any("edited that set 1 time(s) while it was pinned" in p for p in kvmviz.check_invariants(vm))
    vm.free(slot)
    assert reader() == [("grace-period", "vcpu0 pinned as0/set1"), ("free-after-gp", "vcpu0 can still reach #1"),
                        ("stale-cache", "vcpu0's slot cache")]


def test_reader_rule_catches_a_stale_cache_entry_with_a_current_generation():
    vm = _vm(SLOT1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    v.gfn_to_memslot(0x100)
    v.srcu_read_unlock()
    vm.set_user_memory_region(*MOVE1)
    v.last_used_slot_gen = vm.generation(0)     # as if the generation had not moved
    problems = kvmviz.check_invariants(vm)
    assert [p.rule for p in problems] == ["stale-cache"] and problems[0].endswith("the stale entry would be used")


def test_double_lock_and_unlock_outside_are_clear_errors():
    v = kvmviz.VM().add_vcpu()
    with pytest.raises(RuntimeError, match="not inside"):
        v.srcu_read_unlock()
    v.srcu_read_lock()
    with pytest.raises(RuntimeError, match="already inside"):
        v.srcu_read_lock()


def test_array_model_readers_pin_the_old_structure_and_cache_an_index():
    vm = kvmviz.VM(implementation="array")
    vm.set_user_memory_region(*SLOT1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    assert v.access(0x101).reason == "ok" and v.last_used_slot == 0       # 5.15: an index, no generation
    upd = vm.begin_set_user_memory_region(*DELETE1)
    assert upd.run_until()[-1].waiting
    assert v.access(0x101).reason == "ok"                                 # still the old array
    v.srcu_read_unlock()
    assert _fresh_access(vm, v, 0x101).reason == "retry"                 # 5.15 retries too (5.13+)
    upd.run()
    assert any("retried (RET_PF_RETRY, 5.13+)" in s.text for s in upd.steps)
    assert _fresh_access(vm, v, 0x101).reason == "no-slot" and kvmviz.check_invariants(vm) == []
