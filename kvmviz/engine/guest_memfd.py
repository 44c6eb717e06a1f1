"""guest_memfd files as memslots see them (6.8+): creation, binding a slot's range, unbinding.

Not the file itself (no pages, no private/shared conversion): only what
``KVM_CREATE_GUEST_MEMFD`` (``kvm_gmem_create``) and ``kvm_gmem_bind`` /
``kvm_gmem_unbind`` (``virt/kvm/guest_memfd.c``) check and record, so that
``KVM_SET_USER_MEMORY_REGION2`` with ``KVM_MEM_GUEST_MEMFD`` fails and
succeeds as the kernel does (docs/kernel-6.12.md §2.4, §6.2). A file's
bindings are ``(first page, npages, slot label)`` ranges; a page is bound to
at most one slot.

>>> from kvmviz import VM
>>> vm = VM(kernel="6.12", private_mem=True)
>>> fd = vm.create_guest_memfd(0x4000)
>>> f = vm.gmem_files[fd]; f.bind(0x1000, 2, "#1"), f.bind(0x2000, 1, "#2")
(None, 'pages 0x2..0x2 of guest_memfd 3 are already bound to #1')
"""

import errno

from .constants import PAGE_SHIFT, PAGE_SIZE, U64_MAX
from .errors import KvmError
from .history import Journaled

FIRST_FD = 3            # 0-2 are stdin, stdout, stderr: open, but no guest_memfd


class GuestMemfd(Journaled):
    """One guest_memfd file of a VM: its size and which pages are bound to which slot."""

    __slots__ = ("fd", "size", "bindings")

    def __init__(self, history, *, fd, size):
        super().__init__(history, fd=fd, size=size, bindings=())

    def bind_error(self, offset, npages):
        """Why ``kvm_gmem_bind`` steps 4-5 would refuse ``npages`` at ``offset`` (an -EINVAL), or None."""
        first, end = offset >> PAGE_SHIFT, (offset >> PAGE_SHIFT) + npages
        if offset & (PAGE_SIZE - 1) or offset + (npages << PAGE_SHIFT) > self.size:
            return (f"offset {offset:#x} + {npages << PAGE_SHIFT:#x} bytes is not page-aligned or beyond "
                    f"the file's {self.size:#x} bytes")
        for start, n, other in self.bindings:
            if start < end and first < start + n:
                return (f"pages {max(first, start):#x}..{min(end, start + n) - 1:#x} of guest_memfd "
                        f"{self.fd} are already bound to {other}")
        return None

    def bind(self, offset, npages, label):
        """``kvm_gmem_bind`` steps 4-6: ``None`` when bound, else why not (an -EINVAL)."""
        why = self.bind_error(offset, npages)
        if why is None:
            self.bindings = self.bindings + ((offset >> PAGE_SHIFT, npages, label),)
        return why

    def unbind(self, label):
        """``kvm_gmem_unbind``: drop the range bound to slot ``label``."""
        self.bindings = tuple(b for b in self.bindings if b[2] != label)

    def __repr__(self):
        return f"guest_memfd {self.fd} ({self.size:#x} bytes, {len(self.bindings)} binding(s))"


def create_guest_memfd(vm, size, flags=0):
    """``KVM_CREATE_GUEST_MEMFD`` (``kvm_gmem_create``): a new file's fd, or ``KvmError``.

    6.12 accepts no flags; the size, a signed ``loff_t`` there, must be
    positive and page-aligned.

    >>> from kvmviz import VM
    >>> create_guest_memfd(VM(), 1 << 63)
    Traceback (most recent call last):
    ...
    kvmviz.engine.errors.KvmError: [Errno 22] EINVAL: KVM_CREATE_GUEST_MEMFD: size 0x8000000000000000 is not a positive multiple of the page size (as a signed loff_t) (kvm_gmem_create)
    """
    for name, value in (("size", size), ("flags", flags)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
            raise ValueError(f"{name}={value!r} does not fit the ioctl's __u64 field")
    if flags:
        raise KvmError(errno.EINVAL, f"KVM_CREATE_GUEST_MEMFD: flags {flags:#x}: 6.12 defines none "
                                     "(kvm_gmem_create)")
    if not 0 < size < 1 << 63 or size & (PAGE_SIZE - 1):
        raise KvmError(errno.EINVAL, f"KVM_CREATE_GUEST_MEMFD: size {size:#x} is not a positive multiple "
                                     "of the page size (as a signed loff_t) (kvm_gmem_create)")
    fd = FIRST_FD + len(vm.gmem_files)
    vm.gmem_files = {**vm.gmem_files, fd: GuestMemfd(vm.history, fd=fd, size=size)}
    return fd
