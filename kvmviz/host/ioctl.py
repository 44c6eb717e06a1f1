"""Ioctl numbers, ``ioctl(2)`` and anonymous memory, from ``ctypes`` (no new dependency).

Numbers and struct sizes follow ``include/uapi/linux/kvm.h`` and
``include/uapi/asm-generic/ioctl.h``. ``ioctl`` returns ``-errno`` instead of
raising, so a kernel refusal is a value a test can compare.

>>> hex(KVM_SET_USER_MEMORY_REGION), hex(KVM_SET_USER_MEMORY_REGION2)
('0x4020ae46', '0x40a0ae49')
"""

import ctypes

from ..engine.constants import PAGE_SIZE

KVMIO = 0xAE


def _ioc(direction, nr, size):
    """``_IOC`` of ``include/uapi/asm-generic/ioctl.h``."""
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


_IOW, _IOR, _IOWR = 1, 2, 3
KVM_GET_API_VERSION = _ioc(0, 0x00, 0)
KVM_CREATE_VM = _ioc(0, 0x01, 0)
KVM_CHECK_EXTENSION = _ioc(0, 0x03, 0)
KVM_GET_VCPU_MMAP_SIZE = _ioc(0, 0x04, 0)
KVM_CREATE_VCPU = _ioc(0, 0x41, 0)
KVM_GET_DIRTY_LOG = _ioc(_IOW, 0x42, 16)
KVM_SET_USER_MEMORY_REGION = _ioc(_IOW, 0x46, 32)
KVM_SET_USER_MEMORY_REGION2 = _ioc(_IOW, 0x49, 160)
KVM_RUN = _ioc(0, 0x80, 0)
KVM_GET_REGS = _ioc(_IOR, 0x81, 144)
KVM_SET_REGS = _ioc(_IOW, 0x82, 144)
KVM_GET_SREGS = _ioc(_IOR, 0x83, 312)
KVM_SET_SREGS = _ioc(_IOW, 0x84, 312)
KVM_CREATE_GUEST_MEMFD = _ioc(_IOWR, 0xD4, 64)

#: ``KVM_CAP_*`` numbers asked by ``capabilities()``.
CAPS = {"NR_MEMSLOTS": 10, "READONLY_MEM": 81, "MULTI_ADDRESS_SPACE": 118,
        "USER_MEMORY2": 231, "GUEST_MEMFD": 234}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_PROT_RW, _MAP_PRIVATE_ANON_NORESERVE = 0x3, 0x02 | 0x20 | 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value


def ioctl(fd, request, arg=0):
    """``ioctl(2)``: returns the kernel's value, or ``-errno`` when it failed.

    ``arg`` is an integer or a writable ``ctypes`` buffer (filled in place).

    >>> ioctl(-1, KVM_GET_API_VERSION)
    -9
    """
    ctypes.set_errno(0)
    if isinstance(arg, int):
        r = _libc.ioctl(fd, ctypes.c_ulong(request), ctypes.c_ulong(arg))
    else:
        r = _libc.ioctl(fd, ctypes.c_ulong(request), ctypes.byref(arg))
    return -ctypes.get_errno() if r < 0 else r


class Memory:
    """Anonymous host memory to back slots: ``base`` is its hva; ``munmap`` on close.

    >>> with Memory(2 * PAGE_SIZE) as m:
    ...     m.write(m.base + PAGE_SIZE, b"\\x2a"); m.read(m.base + PAGE_SIZE)
    42
    """

    def __init__(self, size):
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"memory size {size:#x} is not a positive multiple of the page size")
        addr = _libc.mmap(None, size, _PROT_RW, _MAP_PRIVATE_ANON_NORESERVE, -1, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap of {size:#x} bytes failed")
        self.base, self.size = addr, size

    def contains(self, hva, length=1):
        """True when ``[hva, hva+length)`` lies in this mapping."""
        return self.base <= hva and hva + length <= self.base + self.size

    def read(self, hva):
        """The byte at ``hva``."""
        self._check(hva)
        return ctypes.string_at(hva, 1)[0]

    def write(self, hva, data):
        """Store ``data`` (bytes) at ``hva``."""
        self._check(hva, len(data))
        ctypes.memmove(hva, data, len(data))

    def _check(self, hva, length=1):
        if self.base is None or not self.contains(hva, length):
            raise ValueError(f"hva {hva:#x} is not inside this mapping")

    def close(self):
        """``munmap`` (idempotent)."""
        if self.base is not None:
            _libc.munmap(self.base, self.size)
            self.base = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def release(owner, *names):
    """Close each named attribute of ``owner`` that is set (an mmap, ``Memory``, ...), then clear it.

    >>> class Box: pass
    >>> b = Box(); b.m = Memory(PAGE_SIZE); b.n = None; release(b, "m", "n"); b.m
    """
    for name in names:
        thing = getattr(owner, name)
        if thing is not None:
            thing.close()
            setattr(owner, name, None)
