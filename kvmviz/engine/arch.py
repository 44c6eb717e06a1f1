"""x86-like arch hooks of the memslot update (reference §2.1, §2.4, §3.5).

Models ``kvm_arch_prepare_memory_region``, ``kvm_arch_commit_memory_region``,
``kvm_arch_flush_shadow_memslot`` (5.17: zap all shadow pages) and
``kvm_arch_memslots_updated`` (MMIO-generation wrap check), plus the failure
injection used to show the revert path. Each hook returns a sentence for the
step it belongs to: a string, or a ``(template, *args)`` tuple that the step
fills when it is read (``kvmviz.engine.events.lazy_text``).

>>> from kvmviz import VM
>>> from kvmviz.engine.events import lazy_text
>>> vm = VM(); arch = vm.arch
>>> lazy_text(*arch.memslots_updated(2))
'x86: MMIO generation is now 0x2; every vCPU is kicked (steal-time cache refresh).'
>>> arch.memslots_updated(1 << 19).split(";")[0]
'x86: the 19-bit MMIO generation wrapped to 0 (as bits cleared): kvm_mmu_zap_all_fast zaps every shadow page'
"""

import errno

from .constants import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, MMIO_SPTE_GEN_BITS
from .fmt import result_text
from .history import Journaled
from .kernels import FEATURES, has

MMIO_SPTE_GEN_MASK = (1 << MMIO_SPTE_GEN_BITS) - 1
#: The commit texts without a label (one object each, whatever the number of calls).
_COMMIT_TEXTS = {}


class X86Arch(Journaled):
    """The x86 side: shadow-page generation, flush and wrap counters."""

    __slots__ = ("vm", "mmu_valid_gen", "zap_all_count", "mmio_wraps")

    def __init__(self, history, vm):
        super().__init__(history, vm=vm, mmu_valid_gen=0, zap_all_count=0, mmio_wraps=0)

    def prepare_memory_region(self, old, new, change, fail=0):
        """``kvm_arch_prepare_memory_region``: returns ``(r, text)``.

        6.x (``vm.max_gfn`` set) first refuses a CREATE or MOVE whose last gfn
        is above ``kvm_mmu_max_gfn()`` with -EINVAL: a prepare failure, so a
        MOVE beyond the limit reverts with two swaps.

        >>> from kvmviz import VM
        >>> vm = VM(kernel="6.12", max_gfn=0xfffff)
        >>> vm.set_user_memory_region(1, 0, 0xfffff000, 0x2000, 0x100000)
        Traceback (most recent call last):
        ...
        kvmviz.engine.errors.KvmError: [Errno 22] EINVAL: kvm_prepare_memory_region failed for slot 1, as 0 (CREATE; no swap happened, the generation is unchanged): x86 refuses #1: its last gfn 0x100000 is above kvm_mmu_max_gfn() = 0xfffff, the highest gfn the host's MMU can map, and returns -EINVAL (6.12+: arch/x86/kvm/x86.c kvm_arch_prepare_memory_region; "KVM: x86/mmu: Do not create SPTEs for GFNs that exceed host.MAXPHYADDR" (86931ff7207b)). (reference §4.4)
        """
        if fail:
            return -fail, f"x86 prepare fails with {result_text(-fail)} (injected failure)"
        if change in ("CREATE", "MOVE") and self.vm.max_gfn is not None and new.end_gfn - 1 > self.vm.max_gfn:
            return -errno.EINVAL, (f"x86 refuses {new.label}: its last gfn {new.end_gfn - 1:#x} is above "
                                   f"kvm_mmu_max_gfn() = {self.vm.max_gfn:#x}, the highest gfn the host's MMU "
                                   f"can map, and returns -EINVAL ({FEATURES['max_gfn'].cite()}).")
        if change in ("CREATE", "MOVE"):
            new.arch = self.vm.alloc("arch", new.npages * 8)
            return 0, ("x86 allocates fresh arch metadata {} (rmap, lpage info) for {}.", new.arch.label, new.label)
        if change == "FLAGS_ONLY":
            new.arch = old.arch
            return 0, ("x86 shares {}'s arch metadata {} with {}.", old.label, old.arch.label, new.label)
        return 0, "x86 has nothing to prepare for DELETE and returns 0."

    def commit_memory_region(self, old, new, change):
        """``kvm_arch_commit_memory_region`` (arch/x86/kvm/x86.c): returns the step text.

        The MMU page budget (unless userspace set one): 5.17+ recomputes it
        from ``nr_memslot_pages`` on CREATE and DELETE only; 5.15 walks all
        slots on every change. Then ``kvm_mmu_slot_apply_flags`` (5.12+, see
        ``slot_apply_flags``). MOVE frees ``old``'s arch metadata.

        >>> from kvmviz import VM
        >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
        >>> vm.arch.commit_memory_region(vm.id_to_memslot(1), None, "DELETE")
        'x86: recomputes the MMU page budget from nr_memslot_pages.'
        """
        parts = []
        if self.vm.implementation == "array":
            parts.append("recomputes the MMU page budget by walking every slot "
                         "(5.15 kvm_mmu_calculate_default_mmu_pages, on every change)")
        elif change in ("CREATE", "DELETE"):
            parts.append("recomputes the MMU page budget from nr_memslot_pages")
        parts += slot_apply_flags(old, new, change)
        if change == "MOVE":
            self.vm.free(old.arch)
            parts.append(f"frees {old.label}'s arch metadata {old.arch.label}")
        text = "x86: " + ("; ".join(parts) if parts else "nothing to do") + "."
        return text if change == "MOVE" else _COMMIT_TEXTS.setdefault(text, text)     # a few texts, shared

    def flush_shadow_memslot(self, old):
        """``kvm_arch_flush_shadow_memslot``: zap all shadow pages, or (6.12) maybe only the slot's.

        5.17 x86 always zaps everything. 6.12 does so only for a default VM
        with ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` on (``vm.slot_zap_all``, the
        default); otherwise it unmaps the slot's gfn range and zaps the shadow
        pages that map it, and every other mapping stays.

        >>> from kvmviz import VM
        >>> VM(kernel="6.12", slot_zap_all=False).arch.flush_shadow_memslot(VM().alloc_memslot())[:40]
        'x86 zaps only the mappings of #1 (kvm_un'
        """
        vm = self.vm
        if has(vm.kernel, "slot_zap_quirk") and (vm.private_mem or not vm.slot_zap_all):
            why = "a VM with private memory" if vm.private_mem else "KVM_X86_QUIRK_SLOT_ZAP_ALL is disabled"
            return (f"x86 zaps only the mappings of {old.label} (kvm_unmap_gfn_range over its gfns, then the "
                    f"shadow pages that map it): {why}; other slots keep their SPTEs "
                    f"({FEATURES['slot_zap_quirk'].cite()}).")
        self.kvm_mmu_zap_all_fast()
        quirk = (f" because KVM_X86_QUIRK_SLOT_ZAP_ALL is on, the default ({FEATURES['slot_zap_quirk'].cite()})"
                 if has(vm.kernel, "slot_zap_quirk") else "")
        return (f"x86 zaps every shadow page, not only {old.label}'s{quirk} (kvm_mmu_zap_all_fast: "
                f"mmu_valid_gen -> {self.mmu_valid_gen}); no SPTE maps the slot any more.")

    def kvm_mmu_zap_all_fast(self):
        """Make every shadow page obsolete by bumping ``mmu_valid_gen``."""
        self.mmu_valid_gen += 1
        self.zap_all_count += 1

    def memslots_updated(self, gen):
        """``kvm_arch_memslots_updated``: MMIO-generation wrap check, kick vCPUs."""
        mmio_gen = gen & MMIO_SPTE_GEN_MASK & ~(self.vm.address_spaces - 1)
        kick = "every vCPU is kicked (steal-time cache refresh)."
        if mmio_gen == 0:
            self.mmio_wraps += 1
            self.kvm_mmu_zap_all_fast()
            return ("x86: the 19-bit MMIO generation wrapped to 0 (as bits cleared): "
                    f"kvm_mmu_zap_all_fast zaps every shadow page; {kick}")
        return "x86: MMIO generation is now {:#x}; every vCPU is kicked (steal-time cache refresh).", \
            gen & MMIO_SPTE_GEN_MASK


def slot_apply_flags(old, new, change):
    """x86 ``kvm_mmu_slot_apply_flags`` (5.12+): what a change does to dirty logging; a list of texts.

    Any change that toggles LOG_DIRTY_PAGES (a missing ``old`` or ``new``
    counts as flags 0) updates the CPU dirty-logging (PML) count. Only
    FLAGS_ONLY of a writable slot touches SPTEs: logging on write-protects
    the slot, logging off zaps collapsible SPTEs. A CREATE has no SPTEs yet,
    and a MOVE/DELETE had its old mappings zapped after swap #1.

    >>> from kvmviz.engine.memslot import Memslot
    >>> a, b = Memslot(flags=0), Memslot(flags=1)
    >>> slot_apply_flags(None, b, "CREATE")[1]
    'nothing to write-protect: a new slot has no SPTEs yet'
    >>> slot_apply_flags(b, a, "FLAGS_ONLY")[1]
    'zaps collapsible SPTEs (kvm_mmu_zap_collapsible_sptes) so large pages can come back'
    """
    was = bool(old is not None and old.flags & KVM_MEM_LOG_DIRTY_PAGES)
    now = bool(new is not None and new.flags & KVM_MEM_LOG_DIRTY_PAGES)
    if was == now:
        return []
    out = ["dirty logging " + ("starts" if now else "stops") + ": the CPU dirty-logging (PML) count goes "
           + ("up" if now else "down") + " (kvm_mmu_update_cpu_dirty_logging)"]
    if change == "CREATE":
        return out + ["nothing to write-protect: a new slot has no SPTEs yet"]
    if change != "FLAGS_ONLY":
        return out + ["no SPTE to change: kvm_arch_flush_shadow_memslot zapped the old mappings after swap #1"]
    if new.flags & KVM_MEM_READONLY:
        return out + ["a READONLY slot cannot be dirtied: nothing to write-protect"]
    if now:
        return out + ["write-protects the slot's SPTEs (kvm_mmu_slot_remove_write_access) so each page's next "
                      "write is logged (skipped with KVM_DIRTY_LOG_INITIALLY_SET)"]
    return out + ["zaps collapsible SPTEs (kvm_mmu_zap_collapsible_sptes) so large pages can come back"]
