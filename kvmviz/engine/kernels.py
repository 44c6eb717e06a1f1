"""The kernel versions kvmviz models: one switch, ``VM(kernel=...)``, for all behaviour.

Each ``Kernel`` names its design (the 5.15 array or the 5.17+ trees), its
x86 defaults and the checks that exist in it. Knobs a real host decides
(the number of address spaces, the host's max gfn) have a default per
version and can be set on ``VM(...)``; ``kvmviz.host.model_for_host()``
sets them from the running kernel.

>>> for k in KERNELS.values(): print(k.name, k.implementation, k.address_spaces, k.max_gfn_check)
5.15 array 2 False
5.17 tree 2 False
6.12 tree 2 True
>>> hex(KERNELS["6.12"].default_max_gfn)
'0xffffffffff'
"""

import functools
from typing import NamedTuple


class Kernel(NamedTuple):
    """One modelled kernel version and its x86 defaults."""

    name: str
    implementation: str        # "array" (5.10-5.15) or "tree" (5.17+)
    summary: str
    #: x86 memslot address spaces with CONFIG_KVM_SMM (``kvm_arch_nr_memslot_as_ids``).
    address_spaces: int = 2
    #: ``kvm_arch_prepare_memory_region`` refuses gfns above ``kvm_mmu_max_gfn()`` (-EINVAL).
    max_gfn_check: bool = False
    #: the bound used when the host's is not known: 52 physical bits (shadow paging).
    default_max_gfn: int = None


KERNELS = {k.name: k for k in (
    Kernel("5.15", "array", "5.10-5.15 design: one sorted array per address space, copied whole "
                            "on every change (reference §6)"),
    Kernel("5.17", "tree", "the 5.17 merge: two sets per address space in gfn/hva trees and an id "
                           "hash, edits on the inactive set, then a swap (reference §2); 5.17.y with the "
                           "dirty-bitmap leak fix c87661f855c3"),
    Kernel("6.12", "tree", "the current long-term kernel: 5.17's protocol plus KVM_SET_USER_MEMORY_REGION2 "
                           "and guest_memfd slots, address spaces per VM, the x86 max-gfn check at prepare "
                           "(a MOVE beyond it reverts with two swaps), the SLOT_ZAP_ALL quirk (docs/kernel-6.12.md)",
           max_gfn_check=True, default_max_gfn=(1 << (52 - 12)) - 1),
)}

class Feature(NamedTuple):
    """A behaviour that not every modelled version has: where it is and where it came from."""

    since: str           # first modelled version that has it
    where: str           # file / function
    commit: str          # commit subject (and id where known)

    def cite(self):
        """``"6.12: file function (commit)"``, for step texts and messages."""
        return f"{self.since}+: {self.where}; {self.commit}"


#: Behaviours that came after 5.17, by name (docs/kernel-6.12.md has the full account).
FEATURES = {
    "max_gfn": Feature("6.12", "arch/x86/kvm/x86.c kvm_arch_prepare_memory_region",
                       '"KVM: x86/mmu: Do not create SPTEs for GFNs that exceed host.MAXPHYADDR" (86931ff7207b)'),
    "memory_region2": Feature("6.12", "virt/kvm/kvm_main.c kvm_vm_ioctl",
                              '"KVM: Introduce KVM_SET_USER_MEMORY_REGION2" (6.8)'),
    "guest_memfd": Feature("6.12", "kvm_main.c __kvm_set_memory_region, guest_memfd.c kvm_gmem_bind",
                           '"KVM: Add KVM_CREATE_GUEST_MEMFD ioctl() for guest-specific backing memory" '
                           '(a7800aa80ea4, 6.8)'),
    "as_ids_per_vm": Feature("6.12", "kvm_main.c __kvm_set_memory_region, kvm_swap_active_memslots",
                             '"KVM: Allow arch code to track number of memslot address spaces per VM" (6.8)'),
    "guest_memory_reclaimed": Feature("6.12", "kvm_main.c kvm_invalidate_memslot",
                                      "kvm_arch_guest_memory_reclaimed after the flush (SEV cache flush; "
                                      "commit subject not found)"),
    "dirty_logging_count": Feature("6.12", "kvm_main.c kvm_commit_memory_region",
                                   '"KVM: x86: Replace cpu_dirty_logging_count with nr_memslots_dirty_logging" '
                                   '(6.3)'),
    "slot_zap_quirk": Feature("6.12", "arch/x86/kvm/mmu/mmu.c kvm_arch_flush_shadow_memslot",
                              '"KVM: x86/mmu: Introduce a quirk to control memslot zap behavior" (aa8d1f48d353)'),
}

_ORDER = ("5.15", "5.17", "6.12")


@functools.cache
def has(kernel, feature):
    """True when modelled version ``kernel`` has ``FEATURES[feature]``.

    >>> has("5.17", "max_gfn"), has("6.12", "max_gfn")
    (False, True)
    """
    return _ORDER.index(kernel) >= _ORDER.index(FEATURES[feature].since)


#: The version a ``VM()`` models when none is named.
DEFAULT_KERNEL = "6.12"


def kernel_for(kernel=None, implementation=None):
    """The ``Kernel`` for ``VM(kernel=..., implementation=...)``; ``array`` means 5.15.

    >>> kernel_for().name, kernel_for(implementation="array").name, kernel_for("5.17").name
    ('6.12', '5.15', '5.17')
    >>> kernel_for("5.15", implementation="tree")
    Traceback (most recent call last):
    ...
    ValueError: kernel 5.15 uses the array design, not implementation='tree'
    """
    if implementation not in (None, "tree", "array"):
        raise ValueError(f"unknown implementation {implementation!r}; choose from ['array', 'tree']")
    if kernel is None:
        kernel = "5.15" if implementation == "array" else DEFAULT_KERNEL
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; modelled: {', '.join(KERNELS)}")
    k = KERNELS[kernel]
    if implementation is not None and implementation != k.implementation:
        raise ValueError(f"kernel {kernel} uses the {k.implementation} design, not "
                         f"implementation={implementation!r}")
    return k


def check_model(kernel=None, variant="merged"):
    """The version name ``VM(kernel=kernel, variant=variant)`` runs; ``ValueError`` if they do not fit.

    Variants are changes to the tree protocol (5.17 and later); the 5.15
    array design has no inactive set to edit, so they do not apply there.

    >>> check_model(None, "seed") in KERNELS, check_model("6.12", "no-catch-up")
    (True, '6.12')
    >>> check_model("5.15", "seed")
    Traceback (most recent call last):
    ...
    ValueError: variant 'seed' changes the tree protocol of 5.17 and later; kernel 5.15 is the array design (one sorted array copied whole), where it does not apply: choose kernel 5.17 or 6.12, or variant merged
    """
    k = kernel_for(kernel)
    if variant != "merged" and k.implementation != "tree":
        trees = " or ".join(n for n, kk in KERNELS.items() if kk.implementation == "tree")
        raise ValueError(f"variant {variant!r} changes the tree protocol of 5.17 and later; kernel {k.name} "
                         "is the array design (one sorted array copied whole), where it does not apply: "
                         f"choose kernel {trees}, or variant merged")
    return k.name
