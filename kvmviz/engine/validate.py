"""Validation and classification of ``KVM_SET_USER_MEMORY_REGION`` (reference §4).

``check_ioctl`` models ``kvm_vm_ioctl_set_memory_region`` (the user-slot bound,
checked before any lock); ``check_memory_region`` models the checks of
``__kvm_set_memory_region`` in kernel order (§4.2, numbered as there) and the
decision table of §4.3. Both raise ``KvmError`` with the kernel's errno.

>>> from kvmviz import VM
>>> vm = VM()
>>> r = Region(slot=1, flags=0, guest_phys_addr=0x1000, memory_size=0x2000, userspace_addr=0x7f0000000000)
>>> check_memory_region(vm, r).change
'CREATE'
>>> check_memory_region(vm, r._replace(guest_phys_addr=0x1001))
Traceback (most recent call last):
...
kvmviz.engine.errors.KvmError: [Errno 22] EINVAL: guest_phys_addr 0x1001 is not page-aligned (slot 1, as 0) (reference §4.2#4)
"""

import errno
from typing import NamedTuple

from .constants import (KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_MAX_NR_PAGES, KVM_MEM_READONLY,
                        KVM_MEM_SLOTS_NUM, KVM_USER_FLAGS, KVM_USER_MEM_SLOTS, PAGE_SHIFT,
                        PAGE_SIZE, TASK_SIZE_MAX, U32_MAX, U64_MAX, flag_names)
from .errors import KvmError
from .kernels import FEATURES, has

CREATE, DELETE, MOVE, FLAGS_ONLY, NONE = "CREATE", "DELETE", "MOVE", "FLAGS_ONLY", "NONE"
CHANGES = (CREATE, DELETE, MOVE, FLAGS_ONLY, NONE)


class Region(NamedTuple):
    """``struct kvm_userspace_memory_region2`` as userspace passes it (v1: no guest_memfd fields)."""

    slot: int
    flags: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    guest_memfd_offset: int = 0
    guest_memfd: int = 0
    v2: bool = False          # came through KVM_SET_USER_MEMORY_REGION2

    @property
    def as_id(self):
        """Address space: bits 16..31 of ``slot``."""
        return self.slot >> 16

    @property
    def id(self):
        """Slot id: the low 16 bits of ``slot``."""
        return self.slot & 0xFFFF

    def where(self):
        """``slot N, as A`` for messages."""
        return f"slot {self.id}, as {self.as_id}"


class Plan(NamedTuple):
    """What a valid call will do: the change type and the slot values."""

    change: str
    old: object          # the Memslot found by id (None for CREATE)
    as_id: int
    id: int
    base_gfn: int
    npages: int
    flags: int
    userspace_addr: int


_FIELDS = (("slot", U32_MAX, "__u32"), ("flags", U32_MAX, "__u32"),
           ("guest_phys_addr", U64_MAX, "__u64"), ("memory_size", U64_MAX, "__u64"),
           ("userspace_addr", U64_MAX, "__u64"), ("guest_memfd_offset", U64_MAX, "__u64"),
           ("guest_memfd", U32_MAX, "__u32"))


def make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset=0,
                guest_memfd=0, v2=False):
    """Build a ``Region``, refusing values its C fields cannot hold.

    Not a kernel check: C userspace cannot pass a negative or 65-bit value, so
    such input is a ``ValueError`` (a caller's mistake), not a kernel errno.

    >>> make_region(-1, 0, 0, 0, 0)
    Traceback (most recent call last):
    ...
    ValueError: slot=-1 does not fit the ioctl's __u32 field
    """
    values = (slot, flags, guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset, guest_memfd)
    for value, (_, limit, _) in zip(values, _FIELDS):
        if type(value) is not int or not 0 <= value <= limit:      # the common case stops at type()
            _check_fields(values)
            break
    return Region(*values, v2=v2)


def _check_fields(values):
    for value, (name, limit, ctype) in zip(values, _FIELDS):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}={value!r} is not an integer")
        if not 0 <= value <= limit:
            raise ValueError(f"{name}={value} does not fit the ioctl's {ctype} field")


def _fail(rule, message, region, err=errno.EINVAL):
    raise KvmError(err, f"{message} ({region.where()})", rule=f"4.2#{rule}", slot=region.id)


def check_ioctl(region, kernel="5.17"):
    """``kvm_vm_ioctl`` and ``kvm_vm_ioctl_set_memory_region``: before any lock (§4.1, §4.5).

    6.x's v1 ioctl first refuses flags other than LOG_DIRTY_PAGES|READONLY
    (``KVM_SET_USER_MEMORY_REGION_V1_FLAGS``); then user slot ids stop at 32764.

    >>> check_ioctl(Region(1, KVM_MEM_GUEST_MEMFD, 0, 0x1000, 0), "6.12")
    Traceback (most recent call last):
    ...
    kvmviz.engine.errors.KvmError: [Errno 22] EINVAL: KVM_SET_USER_MEMORY_REGION (v1) takes only LOG_DIRTY_PAGES|READONLY, not flags 0x4 (GUEST_MEMFD): use KVM_SET_USER_MEMORY_REGION2 (6.12+: virt/kvm/kvm_main.c kvm_vm_ioctl; "KVM: Introduce KVM_SET_USER_MEMORY_REGION2" (6.8)) (reference §4.5)
    """
    if region.v2 and not has(kernel, "memory_region2"):
        raise KvmError(errno.ENOTTY, f"KVM_SET_USER_MEMORY_REGION2 does not exist in {kernel} "
                                     f"(added in 6.8; kvm_vm_ioctl answers -ENOTTY)", rule="4.5", slot=region.id)
    if not region.v2 and has(kernel, "memory_region2") and region.flags & ~KVM_USER_FLAGS:
        raise KvmError(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION (v1) takes only LOG_DIRTY_PAGES|READONLY, "
                                     f"not flags {region.flags:#x} ({flag_names(region.flags)}): use "
                                     f"KVM_SET_USER_MEMORY_REGION2 ({FEATURES['memory_region2'].cite()})",
                       rule="4.5", slot=region.id)
    if region.id >= KVM_USER_MEM_SLOTS:
        raise KvmError(errno.EINVAL,
                       f"slot id {region.id} >= KVM_USER_MEM_SLOTS ({KVM_USER_MEM_SLOTS}); ids "
                       f"{KVM_USER_MEM_SLOTS}..{KVM_MEM_SLOTS_NUM - 1} are x86's internal slots",
                       rule="4.1", slot=region.id)


def _access_ok(addr, size):
    # x86-64 access_ok: the whole range lies in the user half
    return size <= TASK_SIZE_MAX and addr <= TASK_SIZE_MAX - size


def valid_flags(vm, flags):
    """``check_memory_region_flags``: the flag bits this VM accepts with ``flags``.

    5.15/5.17: LOG_DIRTY_PAGES|READONLY. 6.12: LOG_DIRTY_PAGES, plus
    GUEST_MEMFD on a VM with private memory (and then without
    LOG_DIRTY_PAGES), plus READONLY unless GUEST_MEMFD is asked for.

    >>> from kvmviz import VM
    >>> valid_flags(VM(kernel="6.12", private_mem=True), KVM_MEM_GUEST_MEMFD) == KVM_MEM_GUEST_MEMFD
    True
    """
    if not has(vm.kernel, "guest_memfd"):
        return KVM_USER_FLAGS
    valid = KVM_MEM_LOG_DIRTY_PAGES | (KVM_MEM_GUEST_MEMFD if vm.private_mem else 0)
    if flags & KVM_MEM_GUEST_MEMFD:
        return valid & ~KVM_MEM_LOG_DIRTY_PAGES
    return valid | KVM_MEM_READONLY


def _check_flags(vm, r):
    valid = valid_flags(vm, r.flags)
    bad = r.flags & ~valid
    if not bad:
        return
    if bad & KVM_MEM_GUEST_MEMFD and has(vm.kernel, "guest_memfd"):
        why = "need a VM with private memory for GUEST_MEMFD (6.12: a KVM_X86_SW_PROTECTED_VM or SNP VM)"
    elif r.flags & KVM_MEM_GUEST_MEMFD and has(vm.kernel, "guest_memfd"):
        why = "combine GUEST_MEMFD with neither LOG_DIRTY_PAGES nor READONLY"
    else:
        why = f"has bits other than {flag_names(valid)}"
    _fail(1, f"flags {r.flags:#x} ({flag_names(r.flags)}): {why} (check_memory_region_flags)", r)


def check_arguments(region, vm):
    """Checks 1-8: flags, alignment, user range, bounds, wrap, size limit.

    The address-space bound is ``KVM_ADDRESS_SPACE_NUM`` in 5.17 and
    ``kvm_arch_nr_memslot_as_ids(kvm)`` in 6.x: 1 on an x86 kernel built
    without SMM, so as_id 1 is -EINVAL there. 6.12 adds the guest_memfd
    offset check between the hva checks and the address-space bound.

    >>> from kvmviz import VM
    >>> check_arguments(Region(1 << 16, 0, 0, 0x1000, 0x1000), VM(address_spaces=1))
    Traceback (most recent call last):
    ...
    kvmviz.engine.errors.KvmError: [Errno 22] EINVAL: address space 1 >= 1, the VM's number of memslot address spaces (this VM has no SMM address space) (slot 0, as 1) (reference §4.2#6)
    """
    r, address_spaces = region, vm.address_spaces
    _check_flags(vm, r)
    if r.memory_size & (PAGE_SIZE - 1):
        _fail(3, f"memory_size {r.memory_size:#x} is not a multiple of the page size", r)
    if r.guest_phys_addr & (PAGE_SIZE - 1):
        _fail(4, f"guest_phys_addr {r.guest_phys_addr:#x} is not page-aligned", r)
    if r.userspace_addr & (PAGE_SIZE - 1):
        _fail(5, f"userspace_addr {r.userspace_addr:#x} is not page-aligned", r)
    if not _access_ok(r.userspace_addr, r.memory_size):
        _fail(5, f"userspace range {r.userspace_addr:#x}+{r.memory_size:#x} leaves the "
                 f"user half of the address space (access_ok, limit {TASK_SIZE_MAX:#x})", r)
    if r.flags & KVM_MEM_GUEST_MEMFD and (r.guest_memfd_offset & (PAGE_SIZE - 1)
                                          or r.guest_memfd_offset + r.memory_size > U64_MAX):
        raise KvmError(errno.EINVAL, f"guest_memfd_offset {r.guest_memfd_offset:#x} is not page-aligned or "
                                     f"+ memory_size wraps ({r.where()}; {FEATURES['guest_memfd'].cite()})",
                       rule="4.5", slot=r.id)
    if r.as_id >= address_spaces:
        smm = " (this VM has no SMM address space)" if address_spaces == 1 else " (x86: 0, and 1 for SMM)"
        _fail(6, f"address space {r.as_id} >= {address_spaces}, the VM's number of memslot address "
                 f"spaces{smm}", r)
    if r.id >= KVM_MEM_SLOTS_NUM:
        _fail(6, f"slot id {r.id} >= KVM_MEM_SLOTS_NUM ({KVM_MEM_SLOTS_NUM})", r)
    if r.guest_phys_addr + r.memory_size > U64_MAX:
        _fail(7, f"guest_phys_addr {r.guest_phys_addr:#x} + memory_size {r.memory_size:#x} wraps", r)
    if (r.memory_size >> PAGE_SHIFT) > KVM_MEM_MAX_NR_PAGES:
        _fail(8, f"{r.memory_size >> PAGE_SHIFT:#x} pages > KVM_MEM_MAX_NR_PAGES "
                 f"({KVM_MEM_MAX_NR_PAGES:#x})", r)


def classify(vm, region, old):
    """Checks 10-17 and the decision table (§4.3); returns the change type."""
    r = region
    npages = r.memory_size >> PAGE_SHIFT
    if not r.memory_size:
        if old is None or not old.npages:
            _fail(10, f"cannot delete slot {r.id}: it does not exist", r)
        if vm.implementation != "array" and vm.nr_memslot_pages < old.npages:     # 5.15 counts no pages
            _fail(11, "nr_memslot_pages is smaller than the slot (accounting bug)", r, errno.EIO)
        return DELETE
    if old is None:
        if vm.nr_memslot_pages + npages > vm.ulong_max:
            _fail(14, "nr_memslot_pages would wrap", r)
        return CREATE
    if r.flags & KVM_MEM_GUEST_MEMFD:
        raise KvmError(errno.EINVAL, f"slot {old.label} exists: a GUEST_MEMFD request cannot modify a slot, "
                                     f"not even with the same values; delete it first ({r.where()}; "
                                     f"{FEATURES['guest_memfd'].cite()})", rule="4.5", slot=r.id)
    if r.userspace_addr != old.userspace_addr:
        _fail(15, f"userspace_addr of existing slot {old.label} may not change "
                  f"({old.userspace_addr:#x} -> {r.userspace_addr:#x}); delete and re-create it", r)
    if npages != old.npages:
        _fail(15, f"size of existing slot {old.label} may not change "
                  f"({old.npages:#x} -> {npages:#x} pages); delete and re-create it", r)
    if (r.flags ^ old.flags) & KVM_MEM_READONLY:
        _fail(15, f"READONLY cannot be toggled on existing slot {old.label}", r)
    if (r.flags ^ old.flags) & KVM_MEM_GUEST_MEMFD:
        _fail(15, f"{old.label} is a guest_memfd slot: it can only be deleted", r)
    if r.guest_phys_addr >> PAGE_SHIFT != old.base_gfn:
        return MOVE
    if r.flags != old.flags:
        return FLAGS_ONLY
    return NONE


def check_overlap(active, region):
    """Check 17, ``kvm_check_memslot_overlap``: -EEXIST on another slot's gfns."""
    base = region.guest_phys_addr >> PAGE_SHIFT
    end = base + (region.memory_size >> PAGE_SHIFT)
    for slot in active.iter_gfn_range(base, end):
        if slot.id != region.id:
            raise KvmError(errno.EEXIST,
                           f"gfns {base:#x}..{end - 1:#x} overlap slot {slot.id} ({slot.label}, gfns "
                           f"{slot.base_gfn:#x}..{slot.end_gfn - 1:#x}) ({region.where()})",
                           rule="4.2#17", slot=region.id)


def check_memory_region(vm, region):
    """Run every check of ``__kvm_set_memory_region`` in order; return a ``Plan``."""
    check_arguments(region, vm)
    active = vm.active_set(region.as_id)
    old = active.id_to_memslot(region.id)
    change = classify(vm, region, old)
    if change in (CREATE, MOVE):
        check_overlap(active, region)
    return Plan(change, old, region.as_id, region.id, region.guest_phys_addr >> PAGE_SHIFT,
                region.memory_size >> PAGE_SHIFT, region.flags, region.userspace_addr)
