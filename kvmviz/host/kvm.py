"""The real ``/dev/kvm``, from the standard library: ioctls, capabilities, a VM.

Outside the pure engine (the engine never imports ``kvmviz.host``). Ioctl
numbers and struct layouts are those of ``include/uapi/linux/kvm.h``; a
refusal by the kernel is a return code (``-errno``), never an exception, and
values that the ioctl's C fields cannot hold are a ``ValueError`` before any
ioctl (reusing the engine's ``make_region``).

>>> ok, why = available()
>>> if ok:
...     with HostVM() as h:
...         h.set_user_memory_region(1, 0, 0x100000, 0x1000, h.memory.base), \\
...         h.set_user_memory_region(1, 0, 0x100000, 0x1001, h.memory.base)
... else:
...     (0, -22)
(0, -22)
"""

import ctypes
import errno
import os
import struct
from typing import NamedTuple

from ..engine.constants import U32_MAX, U64_MAX
from ..engine.fmt import result_text
from ..engine.validate import make_region
from .guest import Guest, free_place
from .ioctl import (CAPS, KVM_CHECK_EXTENSION, KVM_CREATE_GUEST_MEMFD, KVM_CREATE_VM, KVM_GET_API_VERSION,
                    KVM_GET_DIRTY_LOG, KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2, Memory,
                    ioctl, release)

def available(path="/dev/kvm"):
    """``(True, release)`` when ``path`` opens and creates a VM, else ``(False, why)``.

    >>> ok, why = available("/nonexistent/kvm")
    >>> ok, why.split(":")[0]
    (False, '/nonexistent/kvm does not exist')
    """
    if not os.path.exists(path):
        return False, f"{path} does not exist: no KVM on this machine (or in this container)"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        hint = " (are you in the kvm group?)" if e.errno in (errno.EACCES, errno.EPERM) else ""
        return False, f"cannot open {path}: {e.strerror}{hint}"
    try:
        vm = ioctl(fd, KVM_CREATE_VM, 0)
        if vm < 0:
            return False, f"KVM_CREATE_VM failed: {result_text(vm)}"
        os.close(vm)
        return True, os.uname().release
    finally:
        os.close(fd)


class Capabilities(NamedTuple):
    """What the running kernel says of memslots (``KVM_CHECK_EXTENSION`` on a VM fd)."""

    release: str
    api_version: int
    nr_memslots: int
    multi_address_space: int
    readonly_mem: int
    user_memory2: int
    guest_memfd: int

    @property
    def address_spaces(self):
        """Memslot address spaces per VM: 0 from the cap means the kernel has just one."""
        return max(self.multi_address_space, 1)


def region_buffer(slot, flags, guest_phys_addr, memory_size, userspace_addr):
    """The argument of ``KVM_SET_USER_MEMORY_REGION``: a packed ``struct kvm_userspace_memory_region``.

    Fields that C cannot hold are a ``ValueError`` (``make_region``).

    >>> len(region_buffer(1, 0, 0x100000, 0x1000, 0x7f0000000000).raw)
    32
    """
    r = make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
    return ctypes.create_string_buffer(struct.pack("IIQQQ", *r[:5]), 32)


def _u(value, limit, name):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"{name}={value!r} does not fit its field (0..{limit:#x})")
    return value


class HostVM:
    """A real KVM VM (``KVM_CREATE_VM``) with ``memory`` bytes of backing memory.

    ``set_user_memory_region`` and friends return exactly what the ioctl did:
    0, or ``-errno``. ``guest()`` gives a tiny real-mode vCPU that reads and
    writes guest physical addresses (``kvmviz.host.guest``). Use it as a
    context manager; ``close()`` releases every fd and mapping.
    """

    def __init__(self, memory=16 << 20, path="/dev/kvm"):
        self._fds, self._guest, self.memory = [], None, None
        self.kvm_fd = self._keep(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        try:
            vm = ioctl(self.kvm_fd, KVM_CREATE_VM, 0)
            if vm < 0:
                raise OSError(-vm, f"KVM_CREATE_VM failed: {os.strerror(-vm)}")
            self.fd = self._keep(vm)
            self.memory = Memory(memory)
        except BaseException:
            self.close()
            raise
        self.regions = {}

    def _keep(self, fd):
        self._fds.append(fd)
        return fd

    def check_extension(self, cap):
        """``KVM_CHECK_EXTENSION`` on the VM fd (per-VM answers, e.g. address spaces)."""
        return ioctl(self.fd, KVM_CHECK_EXTENSION, _u(cap, U32_MAX, "cap"))

    def capabilities(self):
        """The memslot-related capabilities and the kernel release."""
        caps = {name.lower(): max(self.check_extension(n), 0) for name, n in CAPS.items()}
        return Capabilities(os.uname().release, ioctl(self.kvm_fd, KVM_GET_API_VERSION), **caps)

    def set_user_memory_region(self, slot, flags, guest_phys_addr, memory_size, userspace_addr):
        """``KVM_SET_USER_MEMORY_REGION``: 0 or ``-errno``."""
        r = make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        return self._note(r, ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, region_buffer(*r[:5])))

    def set_user_memory_region2(self, slot, flags, guest_phys_addr, memory_size, userspace_addr,
                                guest_memfd=0, guest_memfd_offset=0):
        """``KVM_SET_USER_MEMORY_REGION2`` (6.8+): 0 or ``-errno`` (-EINVAL where absent)."""
        r = make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset,
                        guest_memfd, v2=True)
        buf = ctypes.create_string_buffer(struct.pack("IIQQQQI", *r[:7]), 160)
        return self._note(r, ioctl(self.fd, KVM_SET_USER_MEMORY_REGION2, buf))

    def _note(self, region, rc):
        """Remember where slots are (for ``free_probe_place``); returns ``rc``."""
        if rc == 0 and region.memory_size:
            self.regions[region.slot] = (region.guest_phys_addr, region.memory_size)
        elif rc == 0:
            self.regions.pop(region.slot, None)
        return rc

    def free_probe_place(self, gpa):
        """A slot id and page the probe guest's code can use without touching ``gpa``."""
        return free_place(self.regions, gpa)

    def create_guest_memfd(self, size, flags=0):
        """``KVM_CREATE_GUEST_MEMFD``: a new fd (closed with the VM), or ``-errno``."""
        buf = ctypes.create_string_buffer(struct.pack("QQ", _u(size, U64_MAX, "size"),
                                                      _u(flags, U64_MAX, "flags")), 64)
        fd = ioctl(self.fd, KVM_CREATE_GUEST_MEMFD, buf)
        return self._keep(fd) if fd >= 0 else fd

    def get_dirty_log(self, slot, npages):
        """``KVM_GET_DIRTY_LOG``: ``(0, set of dirty page indexes)`` or ``(-errno, None)``.

        Without ``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`` the kernel returns the
        bitmap and clears it (write-protecting the pages again).
        """
        _u(slot, U32_MAX, "slot")
        nbytes = (_u(npages, 1 << 31, "npages") + 63) // 64 * 8
        bitmap = ctypes.create_string_buffer(max(nbytes, 8))
        log = ctypes.create_string_buffer(struct.pack("IIQ", slot, 0, ctypes.addressof(bitmap)), 16)
        r = ioctl(self.fd, KVM_GET_DIRTY_LOG, log)
        if r < 0:
            return r, None
        data = bitmap.raw[:nbytes]
        return 0, {i for i in range(npages) if data[i >> 3] >> (i & 7) & 1}

    def guest(self):
        """The VM's probe vCPU (``kvmviz.host.guest.Guest``), created on first use."""
        if self._guest is None:
            self._guest = Guest(self)
        return self._guest

    def close(self):
        """Close every fd (vCPU, guest_memfd, VM, /dev/kvm) and unmap memory; idempotent."""
        release(self, "_guest", "memory")
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
