"""x86-like arch hooks of the memslot update (reference §2.1, §2.4, §3.5).

Models ``kvm_arch_prepare_memory_region``, ``kvm_arch_commit_memory_region``,
``kvm_arch_flush_shadow_memslot`` (5.17: zap all shadow pages) and
``kvm_arch_memslots_updated`` (MMIO-generation wrap check), plus the failure
injection used to show the revert path. Each hook returns a sentence for the
step it belongs to.

>>> from kvmviz import VM
>>> vm = VM(); arch = vm.arch
>>> arch.memslots_updated(2)
'x86: MMIO generation is now 0x2; every vCPU is kicked (steal-time cache refresh).'
>>> arch.memslots_updated(1 << 19).split(";")[0]
'x86: the 19-bit MMIO generation wrapped to 0 (as bits cleared): kvm_mmu_zap_all_fast zaps every shadow page'
"""

import errno

from .constants import KVM_ADDRESS_SPACE_NUM, KVM_MEM_LOG_DIRTY_PAGES, MMIO_SPTE_GEN_BITS
from .history import Journaled

MMIO_SPTE_GEN_MASK = (1 << MMIO_SPTE_GEN_BITS) - 1


class X86Arch(Journaled):
    """The x86 side: shadow-page generation, flush and wrap counters."""

    __slots__ = ("vm", "mmu_valid_gen", "zap_all_count", "mmio_wraps")

    def __init__(self, history, vm):
        super().__init__(history, vm=vm, mmu_valid_gen=0, zap_all_count=0, mmio_wraps=0)

    def prepare_memory_region(self, old, new, change, fail=0):
        """``kvm_arch_prepare_memory_region``: returns ``(r, text)``."""
        if fail:
            return -fail, (f"x86 prepare fails with -{errno.errorcode.get(fail, fail)} "
                           "(injected failure)")
        if change in ("CREATE", "MOVE"):
            new.arch = self.vm.alloc("arch", new.npages * 8)
            return 0, f"x86 allocates fresh arch metadata {new.arch.label} (rmap, lpage info) for {new.label}."
        if change == "FLAGS_ONLY":
            new.arch = old.arch
            return 0, f"x86 shares {old.label}'s arch metadata {old.arch.label} with {new.label}."
        return 0, "x86 has nothing to prepare for DELETE and returns 0."

    def commit_memory_region(self, old, new, change):
        """``kvm_arch_commit_memory_region``: returns the step text."""
        parts = []
        if change in ("CREATE", "DELETE"):
            parts.append("recomputes the MMU page budget from nr_memslot_pages")
        if change in ("FLAGS_ONLY", "MOVE", "CREATE") and new is not None:
            was = bool(old and old.flags & KVM_MEM_LOG_DIRTY_PAGES)
            now = bool(new.flags & KVM_MEM_LOG_DIRTY_PAGES)
            if now != was:
                parts.append("dirty logging turns " + ("on: the slot is write-protected" if now
                                                      else "off: large pages may come back"))
        if change == "MOVE":
            self.vm.free(old.arch)
            parts.append(f"frees {old.label}'s arch metadata {old.arch.label}")
        return "x86: " + ("; ".join(parts) if parts else "nothing to do") + "."

    def flush_shadow_memslot(self, old):
        """``kvm_arch_flush_shadow_memslot``: 5.17 x86 zaps all shadow pages."""
        self.kvm_mmu_zap_all_fast()
        return (f"x86 zaps every shadow page, not only {old.label}'s (kvm_mmu_zap_all_fast: "
                f"mmu_valid_gen -> {self.mmu_valid_gen}); no SPTE maps the slot any more.")

    def kvm_mmu_zap_all_fast(self):
        """Make every shadow page obsolete by bumping ``mmu_valid_gen``."""
        self.mmu_valid_gen += 1
        self.zap_all_count += 1

    def memslots_updated(self, gen):
        """``kvm_arch_memslots_updated``: MMIO-generation wrap check, kick vCPUs."""
        mmio_gen = gen & MMIO_SPTE_GEN_MASK & ~(KVM_ADDRESS_SPACE_NUM - 1)
        kick = "every vCPU is kicked (steal-time cache refresh)."
        if mmio_gen == 0:
            self.mmio_wraps += 1
            self.kvm_mmu_zap_all_fast()
            return ("x86: the 19-bit MMIO generation wrapped to 0 (as bits cleared): "
                    f"kvm_mmu_zap_all_fast zaps every shadow page; {kick}")
        return f"x86: MMIO generation is now {gen & MMIO_SPTE_GEN_MASK:#x}; {kick}"
