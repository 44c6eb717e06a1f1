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
                           "hash, edits on the inactive set, then a swap (reference §2)"),
    Kernel("6.12", "tree", "the current long-term kernel: 5.17's protocol plus the x86 max-gfn "
                           "check at prepare (a MOVE beyond it reverts with two swaps)",
           max_gfn_check=True, default_max_gfn=(1 << (52 - 12)) - 1),
)}

#: The version a ``VM()`` models when none is named.
DEFAULT_KERNEL = "5.17"


def kernel_for(kernel=None, implementation=None):
    """The ``Kernel`` for ``VM(kernel=..., implementation=...)``; ``array`` means 5.15.

    >>> kernel_for().name, kernel_for(implementation="array").name, kernel_for("6.12").name
    ('5.17', '5.15', '6.12')
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
