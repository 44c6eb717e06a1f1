"""Constants and helpers the test files share (pytest loads this module first).

Test files import them with ``from conftest import HVA, ...``; pytest puts
``tests/`` on ``sys.path``, so this is the module pytest already loaded.
"""

import kvmviz
from kvmviz.engine.constants import KVM_MEM_LOG_DIRTY_PAGES

#: A user-space address for slot memory: canonical, page-aligned, far from 0.
HVA = 0x7F0000000000
#: Slot 1 of as0: 64 KiB (16 pages) at gpa 1 MiB (gfn 0x100..0x10f).
CREATE = (1, 0, 0x100000, 0x10000, HVA)
#: The same slot with dirty logging on (a FLAGS_ONLY change once it exists).
FLAGS_ON = (1, KVM_MEM_LOG_DIRTY_PAGES, 0x100000, 0x10000, HVA)
#: Delete slot 1 of as0.
DELETE = (1, 0, 0, 0, 0)


def vm_with(n, history=True):
    """A VM with slots 0..n-1 of 1 MiB each, 2 MiB apart in gpa, 256 MiB apart in hva."""
    vm = kvmviz.VM(history=history)
    for i in range(n):
        vm.set_user_memory_region(i, 0, i * 0x200000, 0x100000, HVA + i * 0x10000000)
    return vm


def rules_of(vm):
    """The rule keys of ``check_invariants(vm)``, in the checker's order."""
    return [v.rule for v in kvmviz.check_invariants(vm)]


def snapshot(vm):
    """Everything observable about a tree-design VM, by object identity and value."""
    sets = tuple((s.generation, s.last_used_slot and s.last_used_slot.label,
                  tuple((k, v.label, v.values(), v.nodes, v.freed) for k, v in s.gfn_tree.items()),
                  tuple(sorted((v.label, a, b) for a, b, v in s.hva_tree)),
                  tuple(sorted((k, v.label) for b in s.id_hash for k, v in b.items())))
                 for pair in vm.sets for s in pair)
    return (sets, vm.active_idx, vm.locks, vm.nr_memslot_pages, vm.swaps, vm.srcu.seq,
            vm.arch.mmu_valid_gen)
