"""Dirty logging as userspace sees it: guest writes mark pages, ``KVM_GET_DIRTY_LOG`` harvests.

Models ``mark_page_dirty_in_slot`` (a write to a slot with LOG_DIRTY_PAGES
sets the page's bit in the slot's dirty bitmap) and
``kvm_vm_ioctl_get_dirty_log`` -> ``kvm_get_dirty_log_protect`` without
``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2``: return the pages marked since the last
call and clear them (write-protecting them again). The bitmap is the slot's
``dirty_bitmap`` allocation, so a FLAGS_ONLY or MOVE that keeps logging keeps
the bits (reference §2.1: the bitmap is shared, not copied).

>>> from kvmviz import VM
>>> vm = VM(); _ = vm.set_user_memory_region(1, 1, 0x100000, 0x4000, 0x7f0000000000)
>>> v = vm.add_vcpu(); v.srcu_read_lock(); _ = v.access(0x102, write=True); v.srcu_read_unlock()
>>> sorted(get_dirty_log(vm, 1)), sorted(get_dirty_log(vm, 1))
([2], [])
>>> get_dirty_log(vm, 2)
Traceback (most recent call last):
...
kvmviz.engine.errors.KvmError: [Errno 2] ENOENT: KVM_GET_DIRTY_LOG: slot 2 of as0 does not exist (kvm_get_dirty_log_protect)
"""

import errno

from .constants import KVM_MEM_LOG_DIRTY_PAGES, KVM_USER_MEM_SLOTS, U32_MAX
from .errors import KvmError
from .memslot import CLEAN


def mark_page_dirty_in_slot(slot, gfn):
    """``mark_page_dirty_in_slot``: set ``gfn``'s bit if ``slot`` logs dirty pages.

    Returns a note for the access text, or "" when the slot does not log.
    """
    if slot is None or not slot.flags & KVM_MEM_LOG_DIRTY_PAGES or slot.dirty_bitmap is None:
        return ""
    bitmap = slot.dirty_bitmap
    bitmap.dirty = bitmap.dirty | {gfn - slot.base_gfn}
    return f"mark_page_dirty_in_slot: bit {gfn - slot.base_gfn:#x} of {slot.label}'s dirty bitmap {bitmap.label}"


def get_dirty_log(vm, slot):
    """``KVM_GET_DIRTY_LOG`` for ``slot`` (``as_id << 16 | id``): the dirty page indexes.

    Raises ``KvmError``: -EINVAL for an address space or id userspace may
    not name, -ENOENT when the slot does not exist or does not log dirty
    pages. The returned pages are cleared in the bitmap.
    """
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot <= U32_MAX:
        raise ValueError(f"slot={slot!r} does not fit the ioctl's __u32 field")
    as_id, id = slot >> 16, slot & 0xFFFF
    if as_id >= vm.address_spaces or id >= KVM_USER_MEM_SLOTS:
        raise KvmError(errno.EINVAL, f"KVM_GET_DIRTY_LOG: as{as_id} slot {id} is not a user slot "
                                     f"(address spaces: {vm.address_spaces}, ids < {KVM_USER_MEM_SLOTS}) "
                                     "(kvm_get_dirty_log_protect)",
                       slot=id)
    memslot = vm.id_to_memslot(id, as_id)
    if memslot is None or memslot.dirty_bitmap is None:
        why = "does not exist" if memslot is None else f"({memslot.label}) has no LOG_DIRTY_PAGES"
        raise KvmError(errno.ENOENT, f"KVM_GET_DIRTY_LOG: slot {id} of as{as_id} {why} "
                                     "(kvm_get_dirty_log_protect)", slot=id)
    pages = memslot.dirty_bitmap.dirty
    memslot.dirty_bitmap.dirty = CLEAN
    return pages
