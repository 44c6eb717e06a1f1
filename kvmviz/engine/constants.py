"""x86 KVM constants used by the model (reference §1.2, §1.6, §3.5).

>>> hex(KVM_USER_MEM_SLOTS), KVM_ADDRESS_SPACE_NUM
('0x7ffc', 2)
>>> hex(TASK_SIZE_MAX)
'0x7ffffffff000'
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
GFN_LIMIT = 1 << (64 - PAGE_SHIFT)      # a gfn is a u64 page number of a u64 address

KVM_ADDRESS_SPACE_NUM = 2          # x86: address space 1 is SMM
KVM_MEM_SLOTS_NUM = 32767          # SHRT_MAX
KVM_PRIVATE_MEM_SLOTS = 3          # x86: TSS, APIC access page, identity map
KVM_USER_MEM_SLOTS = KVM_MEM_SLOTS_NUM - KVM_PRIVATE_MEM_SLOTS
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2       # 6.8+: the slot's private memory is a guest_memfd file
KVM_MEMSLOT_INVALID = 1 << 16      # kernel-internal; bits 16..31 are reserved
KVM_USER_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY

KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS = 1 << 63

ID_HASH_BITS = 7                   # 128 buckets
GOLDEN_RATIO_32 = 0x61C88647       # hash_32() multiplier

# x86-64, 4-level paging: the user half ends one page below 2^47.
TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE
U16_MAX = (1 << 16) - 1
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

MMIO_SPTE_GEN_BITS = 19            # x86 since the 5.13 cycle

# Sizes (bytes) used by the cost accounting of the array model (reference §6.1).
SIZEOF_KVM_MEMORY_SLOT = 88

FLAG_NAMES = {
    KVM_MEM_LOG_DIRTY_PAGES: "LOG_DIRTY_PAGES",
    KVM_MEM_READONLY: "READONLY",
    KVM_MEM_GUEST_MEMFD: "GUEST_MEMFD",
    KVM_MEMSLOT_INVALID: "INVALID",
}


def flag_names(flags):
    """Return the flag bits of ``flags`` as a ``|``-joined string, or ``-``.

    Models no kernel function; used for display.

    >>> flag_names(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEMSLOT_INVALID)
    'LOG_DIRTY_PAGES|INVALID'
    >>> flag_names(0)
    '-'
    >>> flag_names(1 << 5)
    '0x20'
    """
    names = [n for bit, n in FLAG_NAMES.items() if flags & bit]
    rest = flags & ~sum(FLAG_NAMES)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "-"
