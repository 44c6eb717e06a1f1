"""A real vCPU that reads or writes one guest physical address and says what happened.

The guest is a few real-mode instructions on a code page of its own: ``mov
al, [off]`` (or ``mov al, imm; mov [off], al``), then ``out 0x10, al``. The
data segment base selects the 64-KiB window of the gpa, so any gpa below 4
GiB can be probed. The outcome is what the guest saw: the byte behind the
slot (``"ok"``), an MMIO exit at the gpa (``"mmio"``; the model's no-slot and
READONLY-write cases), ``"efault"`` when KVM could not fault in the hva, or
another exit. The code page is installed in a free slot and removed again
around each probe, so the memslots userspace sees are as before.

>>> from kvmviz.host.kvm import HostVM, available
>>> if available()[0]:
...     with HostVM() as h:
...         h.memory.write(h.memory.base, b"\\x5a")
...         _ = h.set_user_memory_region(0, 0, 0x2000, 0x1000, h.memory.base)
...         print(h.guest().read(0x2000), h.guest().read(0x9000), sep="; ")
... else:
...     print("read gpa 0x2000: ok 0x5a; read gpa 0x9000: mmio")
read gpa 0x2000: ok 0x5a; read gpa 0x9000: mmio
"""

import ctypes
import mmap
import os
import struct
from typing import NamedTuple

from ..engine.constants import KVM_USER_MEM_SLOTS, PAGE_SIZE
from .ioctl import (KVM_CREATE_VCPU, KVM_GET_SREGS, KVM_GET_VCPU_MMAP_SIZE, KVM_RUN, KVM_SET_REGS,
                    KVM_SET_SREGS, Memory, ioctl, release)

KVM_EXIT_IO, KVM_EXIT_MMIO = 2, 6
PROBE_PORT = 0x10
PROBE_LIMIT = 1 << 32          # real mode with a 32-bit segment base
_SEG_SIZE, _DS = 24, 1         # struct kvm_segment; kvm_sregs order: cs, ds, ...


class GuestAccess(NamedTuple):
    """What one guest read or write did: ``outcome`` and its details."""

    gpa: int
    write: bool
    outcome: str        # "ok", "mmio", "efault" or "exit <reason>" / "run <errno>"
    value: int = None   # the byte read (or written) when outcome is "ok"
    mmio_write: bool = None

    def __str__(self):
        rw = "write" if self.write else "read"
        value = f" {self.value:#x}" if self.value is not None else ""
        return f"{rw} gpa {self.gpa:#x}: {self.outcome}{value}"


class Guest:
    """The probe vCPU of a ``HostVM`` (``KVM_CREATE_VCPU`` 0, its ``kvm_run`` page)."""

    def __init__(self, host):
        self.host = host
        self.fd, self.run, self.code = None, None, None
        try:
            fd = ioctl(host.fd, KVM_CREATE_VCPU, 0)
            if fd < 0:
                raise OSError(-fd, "KVM_CREATE_VCPU failed")
            self.fd = fd
            self.run = mmap.mmap(fd, ioctl(host.kvm_fd, KVM_GET_VCPU_MMAP_SIZE))
            self.code = Memory(PAGE_SIZE)
        except BaseException:
            self.close()
            raise

    def read(self, gpa):
        """Let the guest load the byte at ``gpa``; returns a ``GuestAccess``."""
        return self._probe(gpa, None)

    def write(self, gpa, value):
        """Let the guest store ``value`` (0..255) at ``gpa``; returns a ``GuestAccess``."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
            raise ValueError(f"value={value!r} is not a byte")
        return self._probe(gpa, value)

    def _probe(self, gpa, value):
        if isinstance(gpa, bool) or not isinstance(gpa, int) or not 0 <= gpa < PROBE_LIMIT:
            raise ValueError(f"gpa={gpa!r}: the probe guest runs in real mode and reaches gpas below 4 GiB")
        code_slot, code_gpa = self.host.free_probe_place(gpa)
        r = self.host.set_user_memory_region(code_slot, 0, code_gpa, PAGE_SIZE, self.code.base)
        if r:
            raise OSError(-r, f"cannot install the probe code page at {code_gpa:#x}")
        try:
            self._load(gpa, value, code_gpa)
            return self._run(gpa, value is not None)
        finally:
            self.host.set_user_memory_region(code_slot, 0, code_gpa, 0, self.code.base)

    def _load(self, gpa, value, code_gpa):
        off = struct.pack("<H", gpa & 0xFFFF)
        body = b"\xA0" + off if value is None else b"\xB0" + bytes([value]) + b"\xA2" + off
        self.code.write(self.code.base, body + bytes([0xE6, PROBE_PORT, 0xF4]))
        sregs = bytearray(312)
        self._check(ioctl(self.fd, KVM_GET_SREGS, _buffer(sregs)), "KVM_GET_SREGS")
        for seg, base in ((0, code_gpa), (_DS, gpa & ~0xFFFF)):
            struct.pack_into("<Q", sregs, seg * _SEG_SIZE, base)
            struct.pack_into("<H", sregs, seg * _SEG_SIZE + 12, (base >> 4) & 0xFFFF)
        self._check(ioctl(self.fd, KVM_SET_SREGS, _buffer(sregs)), "KVM_SET_SREGS")
        regs = bytearray(144)
        struct.pack_into("<QQ", regs, 128, 0, 2)      # rip 0, rflags with the fixed bit 1
        self._check(ioctl(self.fd, KVM_SET_REGS, _buffer(regs)), "KVM_SET_REGS")

    @staticmethod
    def _check(r, what):
        if r < 0:
            raise OSError(-r, f"{what} failed")

    def _run(self, gpa, write):
        mmio = None
        for _ in range(4):
            r = ioctl(self.fd, KVM_RUN)
            if r < 0:
                return GuestAccess(gpa, write, "efault" if r == -14 else f"run {-r}", mmio_write=mmio)
            reason = struct.unpack_from("<I", self.run, 8)[0]
            if reason == KVM_EXIT_IO:
                _, size, port, _, data_offset = struct.unpack_from("<BBHIQ", self.run, 32)
                if port != PROBE_PORT:
                    return GuestAccess(gpa, write, f"io port {port:#x}")
                if mmio is not None:
                    return GuestAccess(gpa, write, "mmio", mmio_write=mmio)
                return GuestAccess(gpa, write, "ok", self.run[data_offset])
            if reason != KVM_EXIT_MMIO:
                return GuestAccess(gpa, write, f"exit {reason}")
            addr, = struct.unpack_from("<Q", self.run, 32)
            mmio = bool(self.run[52])
            if addr != gpa:
                return GuestAccess(gpa, write, f"mmio at {addr:#x}", mmio_write=mmio)
            self.run[40:48] = b"\xff" * 8      # what "the device" returns to an MMIO read
        return GuestAccess(gpa, write, "loop")

    def close(self):
        """Unmap the run page and code page, close the vCPU fd (idempotent)."""
        release(self, "run", "code")
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _buffer(data):
    return (ctypes.c_char * len(data)).from_buffer(data)


def free_place(regions, avoid_gpa):
    """A free slot id and page below 4 GiB for the probe code, given ``{slot: (gpa, size)}``.

    The page is the highest one below 4 GiB that no as0 slot covers and that
    is not ``avoid_gpa``'s page; the slot id the highest free user id.

    >>> free_place({0: (0, 1 << 20)}, 0x5000)
    (32763, 4294963200)
    >>> [hex(x) for x in free_place({32763: (0xffffe000, 0x2000)}, 0xffffd010)]
    ['0x7ffa', '0xffffc000']
    """
    used = {slot & 0xFFFF for slot in regions if slot >> 16 == 0}
    slot = max(set(range(KVM_USER_MEM_SLOTS - 64, KVM_USER_MEM_SLOTS)) - used, default=None)
    spans = sorted([(gpa, gpa + size) for s, (gpa, size) in regions.items() if s >> 16 == 0]
                   + [(avoid_gpa & ~(PAGE_SIZE - 1), (avoid_gpa | (PAGE_SIZE - 1)) + 1)])
    page = PROBE_LIMIT - PAGE_SIZE
    for start, end in reversed(spans):      # slots do not overlap: walk down from the top
        if start <= page < end:
            page = start - PAGE_SIZE
    if slot is None or page < 0:
        raise ValueError("no free slot id or page below 4 GiB for the probe guest's code")
    return slot, page
