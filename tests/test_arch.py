"""x86 commit hook texts (reference §2.1, corrections of 2026-12-01): only FLAGS_ONLY touches
SPTEs for dirty logging; CREATE/MOVE/DELETE only move the CPU dirty-logging (PML) count."""

import kvmviz
from kvmviz.engine.constants import KVM_MEM_LOG_DIRTY_PAGES as LOG, KVM_MEM_READONLY as RO
from conftest import HVA

SLOT = (1, 0, 0x100000, 0x4000, HVA)


def commit_text(vm, *call):
    steps = vm.set_user_memory_region(*call)
    return next(s.text for s in steps if s.function == "kvm_arch_commit_memory_region")


def test_create_with_logging_only_counts():
    text = commit_text(kvmviz.VM(), 1, LOG, 0x100000, 0x4000, HVA)
    assert "PML) count goes up" in text and "a new slot has no SPTEs yet" in text
    assert "write-protects" not in text and "page budget from nr_memslot_pages" in text


def test_move_with_logging_turned_on_only_counts():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*SLOT)
    text = commit_text(vm, 1, LOG, 0x300000, 0x4000, HVA)
    assert "PML) count goes up" in text and "zapped the old mappings" in text
    assert "write-protects" not in text and "budget" not in text      # 5.17: budget on CREATE/DELETE only
    assert "frees #1's arch metadata" in text


def test_move_keeping_logging_changes_nothing_for_dirty_logging():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, LOG, 0x100000, 0x4000, HVA)
    text = commit_text(vm, 1, LOG, 0x300000, 0x4000, HVA)
    assert "PML" not in text and text.startswith("nr_memslot_pages = 0x4. x86: frees #1's arch")


def test_flags_only_write_protects_or_zaps_collapsible():
    vm = kvmviz.VM()
    vm.set_user_memory_region(*SLOT)
    on = commit_text(vm, 1, LOG, 0x100000, 0x4000, HVA)
    off = commit_text(vm, *SLOT)
    assert "count goes up" in on and "kvm_mmu_slot_remove_write_access" in on
    assert "count goes down" in off and "kvm_mmu_zap_collapsible_sptes" in off


def test_flags_only_on_a_readonly_slot_write_protects_nothing():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, RO, 0x100000, 0x4000, HVA)
    text = commit_text(vm, 1, RO | LOG, 0x100000, 0x4000, HVA)
    assert "count goes up" in text and "READONLY slot cannot be dirtied" in text
    assert "kvm_mmu_slot_remove_write_access" not in text


def test_delete_of_a_logging_slot_counts_down():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, LOG, 0x100000, 0x4000, HVA)
    text = commit_text(vm, 1, 0, 0x100000, 0, 0)
    assert "count goes down" in text and "page budget from nr_memslot_pages" in text


def test_array_recomputes_the_budget_on_every_change():
    vm = kvmviz.VM(implementation="array")
    vm.set_user_memory_region(*SLOT)
    for call in ((1, LOG, 0x100000, 0x4000, HVA), (1, LOG, 0x300000, 0x4000, HVA)):   # FLAGS_ONLY, MOVE
        text = commit_text(vm, *call)
        assert "walking every slot" in text and "nr_memslot_pages" not in text, text
