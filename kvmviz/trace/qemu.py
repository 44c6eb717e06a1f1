"""Parse QEMU's ``kvm_set_user_memory`` trace event into ioctl calls.

QEMU's ``kvm_set_user_memory_region()`` (``accel/kvm/kvm-all.c``) traces every
``KVM_SET_USER_MEMORY_REGION(2)`` it makes *after* the ioctl returned, with the
return value (``ret=``: 0 or ``-errno``). Run QEMU with
``-trace kvm_set_user_memory`` to get the log. QEMU has printed three formats
(declarations in ``accel/kvm/trace-events``):

``slot`` (before 2022)
    ``"Slot#%d flags=0x%x gpa=0x%"PRIx64 " size=0x%"PRIx64 " ua=0x%"PRIx64 " ret=%d"``.
    ``Slot#`` is the ioctl's whole ``slot`` field, so the address space sits in
    bits 16-31: ``Slot#65539`` is address space 1 (SMM), slot 3.
``addrspace`` (2022)
    ``"AddrSpace#%d Slot#%d flags=0x%x gpa=... size=... ua=... ret=%d"``, from
    Xiaoyao Li's "trace: Split address space and slot id in
    trace_kvm_set_user_memory()" (Message-Id
    ``20220104023540.1433331-1-xiaoyao.li@intel.com``, 4 Jan 2022).
``guest_memfd`` (2024 and later)
    ``"AddrSpace#%d Slot#%d flags=0x%x gpa=... size=... ua=... guest_memfd=%d"
    " guest_memfd_offset=0x%" PRIx64 " ret=%d"``, from "kvm: Enable
    KVM_SET_USER_MEMORY_REGION2 for memslot" (Chao Peng and Xiaoyao Li, posted
    as Message-Id ``20240125032328.2522472-6-xiaoyao.li@intel.com``).
    ``guest_memfd=-1`` means no guest_memfd.

QEMU deletes a slot by calling with ``memory_size`` 0 (so ``size=0x0``). The
log backend puts ``pid@seconds.microseconds:`` before the event name (e.g.
``41874@1587736345.192636:kvm_set_user_memory Slot#3 ...``); it is optional
here. Other trace events may be mixed in. Lines that are neither a record nor
another event come back in ``unparsed`` with their numbers; nothing is dropped
silently, except blank lines and ``#`` comment lines. Mail quoting (``> ``) is
stripped, and a record that a mail client wrapped over up to four lines is
joined when every continuation line starts with one of the record's
``field=`` tokens and the join is a complete record (otherwise the join would
be a guess, and the lines are reported as unparsed).

>>> t = parse_qemu('''41874@1587736345.192636:kvm_set_user_memory Slot#65539 flags=0x1 gpa=0xfd000000 size=0x1000000 ua=0x7fadf6800000 ret=0
... kvm_run_exit cpu_index 0, reason 19
... > kvm_set_user_memory AddrSpace#0 Slot#2 flags=0x2 gpa=0xffc00000
... > size=0x400000 ua=0x7f5840a00000 guest_memfd=-1 guest_memfd_offset=0x0 ret=0
... hello''')
>>> [(c.line, c.as_id, c.id, c.era) for c in t.calls]
[(1, 1, 3, 'slot'), (3, 0, 2, 'guest_memfd')]
>>> t.other, [(u.line, u.reason) for u in t.unparsed]
([(2, 'kvm_run_exit')], [(5, 'not a trace record')])
"""

import re
from typing import NamedTuple

from ..engine.constants import PAGE_SHIFT, U16_MAX, U32_MAX, U64_MAX

EVENT = "kvm_set_user_memory"
ERAS = ("slot", "addrspace", "guest_memfd")
KVM_MEM_GUEST_MEMFD = 1 << 2        # uapi flag bit 2, 6.8+ (reference §1.2)


def _hex(name):
    return rf"0x(?P<{name}>[0-9a-fA-F]+)"


_RECORD = re.compile(
    EVENT + r"\s+(?:AddrSpace#(?P<as>\d+)\s+)?Slot#(?P<slot>-?\d+)"
    + rf"\s+flags={_hex('flags')}\s+gpa={_hex('gpa')}\s+size={_hex('size')}\s+ua={_hex('ua')}"
    + rf"(?:\s+guest_memfd=(?P<fd>-?\d+)\s+guest_memfd_offset={_hex('off')})?"
    + r"\s+ret=(?P<ret>-?\d+)\s*$", re.ASCII)     # ASCII: no other scripts' digits or spaces
_QUOTE = re.compile(r"^\s*(?:>\s?)*", re.ASCII)
_PREFIX = re.compile(r"^(?:(?P<pid>\d+)@(?P<time>\d+\.\d+):)?\s*", re.ASCII)
_EVENT_NAME = re.compile(r"(?P<name>[a-z][a-z0-9]*_[a-z0-9_]*)(?:\s|$)", re.ASCII)
_FIELD = re.compile(r"^(?:flags|gpa|size|ua|guest_memfd|guest_memfd_offset|ret)=")
_MAX_CONTINUATION = 3


class MemoryCall(NamedTuple):
    """One traced ``KVM_SET_USER_MEMORY_REGION(2)`` call and its logged result.

    ``line`` is the 1-based line where the record starts; ``lines`` how many
    physical lines it took (more than 1 when it was e-mail-wrapped).
    ``guest_memfd``/``guest_memfd_offset`` are None in the two older formats.

    >>> c = MemoryCall(line=1, as_id=1, id=3, flags=0, guest_phys_addr=0xd0000,
    ...                memory_size=0x10000, userspace_addr=0x7f0000000000, ret=0)
    >>> hex(c.slot), c.base_gfn, c.npages, c.uses_guest_memfd
    ('0x10003', 208, 16, False)
    """

    line: int
    as_id: int
    id: int
    flags: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    ret: int
    guest_memfd: object = None
    guest_memfd_offset: object = None
    era: str = "guest_memfd"
    pid: object = None
    time: object = None
    lines: int = 1
    text: str = ""

    @property
    def slot(self):
        """The ioctl's ``slot`` field: ``(as_id << 16) | id``."""
        return (self.as_id << 16) | self.id

    @property
    def args(self):
        """Arguments for ``VM.set_user_memory_region``: slot, flags, gpa, size, hva."""
        return (self.slot, self.flags, self.guest_phys_addr, self.memory_size, self.userspace_addr)

    @property
    def base_gfn(self):
        """First guest frame number (``gpa >> 12``)."""
        return self.guest_phys_addr >> PAGE_SHIFT

    @property
    def npages(self):
        """Size in 4 KiB pages (0 for a delete)."""
        return self.memory_size >> PAGE_SHIFT

    @property
    def uses_guest_memfd(self):
        """True when the call binds a guest_memfd (a 6.8+ feature the model lacks)."""
        return bool(self.flags & KVM_MEM_GUEST_MEMFD) or (self.guest_memfd is not None and self.guest_memfd >= 0)


class Unparsed(NamedTuple):
    """A line the parser did not understand, with its 1-based number and why."""

    line: int
    text: str
    reason: str


class QemuTrace(NamedTuple):
    """Result of ``parse_qemu``: calls, other trace events, unparsed lines."""

    calls: list
    other: list       # (line, event name) of other trace events
    unparsed: list    # Unparsed


def _strip(line):
    return _QUOTE.sub("", line, count=1).rstrip()


def _int_field(value, bits, name):
    number = int(value)
    if number < 0:
        number += 1 << bits      # %d of an unsigned C field prints it as signed
    if not 0 <= number < 1 << bits:
        raise ValueError(f"{name}={value} does not fit its {bits}-bit field")
    return number


def _call(match, prefix, line, nlines, text):
    g = match.groupdict()
    values = {k: int(g[k], 16) for k in ("flags", "gpa", "size", "ua")}
    if values["flags"] > U32_MAX:
        raise ValueError(f"flags={values['flags']:#x} does not fit the 32-bit field")
    for k in ("gpa", "size", "ua"):
        if values[k] > U64_MAX:
            raise ValueError(f"{k}={values[k]:#x} does not fit its 64-bit field")
    ret = int(g["ret"])
    if ret > 0:
        raise ValueError(f"ret={ret}: an ioctl returns 0 or -errno")
    if g["as"] is None:
        slot = _int_field(g["slot"], 32, "Slot#")
        as_id, id_, era = slot >> 16, slot & U16_MAX, "slot"
    else:
        as_id = _int_field(g["as"], 16, "AddrSpace#")
        id_ = _int_field(g["slot"], 16, "Slot#")
        era = "addrspace" if g["fd"] is None else "guest_memfd"
    fd = None if g["fd"] is None else int(g["fd"])
    off = None if g["off"] is None else int(g["off"], 16)
    return MemoryCall(line, as_id, id_, values["flags"], values["gpa"], values["size"], values["ua"],
                      ret, fd, off, era, prefix["pid"] and int(prefix["pid"]), prefix["time"],
                      nlines, text)


def _record(bodies, i):
    """Parse the record starting at ``bodies[i]``; returns (call or None, lines used, reason)."""
    text = bodies[i]
    prefix = _PREFIX.match(text)
    for used in range(1, _MAX_CONTINUATION + 2):
        match = _RECORD.match(text, prefix.end())
        if match:
            return _call(match, prefix, i + 1, used, text), used, None
        nxt = i + used
        if used > _MAX_CONTINUATION or nxt >= len(bodies) or not _FIELD.match(bodies[nxt]):
            break
        text = f"{text} {bodies[nxt]}"
    return None, 1, f"{EVENT} record in none of QEMU's three formats"


def parse_qemu(text):
    """Parse a QEMU trace log; returns a ``QemuTrace`` (see the module doc).

    Models no kernel function: it reads what QEMU logged around the ioctl.

    >>> parse_qemu("kvm_set_user_memory Slot#65536 flags=0x0 gpa=0x0 size=0x0 ua=0x0 ret=-22").calls[0][1:8]
    (1, 0, 0, 0, 0, 0, -22)
    >>> parse_qemu("kvm_set_user_memory Slot#1 flags=0x0 gpa=0x0 size=0x1000 ua=0x0 ret=3").unparsed[0].reason
    'ret=3: an ioctl returns 0 or -errno'
    """
    raw = text.splitlines()
    bodies = [_strip(line) for line in raw]
    calls, other, unparsed = [], [], []
    i = 0
    while i < len(bodies):
        body = bodies[i]
        used = 1
        if body and not body.startswith("#"):
            prefix = _PREFIX.match(body)
            name = _EVENT_NAME.match(body, prefix.end())
            if name is None:
                unparsed.append(Unparsed(i + 1, raw[i], "not a trace record"))
            elif name["name"] != EVENT:
                other.append((i + 1, name["name"]))
            else:
                try:
                    call, used, reason = _record(bodies, i)
                except ValueError as e:
                    call, reason = None, str(e)
                if call is None:
                    unparsed.append(Unparsed(i + 1, raw[i], reason))
                else:
                    calls.append(call)
        i += used
    return QemuTrace(calls, other, unparsed)


_TEMPLATES = {
    "slot": "Slot#{slot} flags={flags:#x} gpa={gpa:#x} size={size:#x} ua={ua:#x} ret={ret}",
    "addrspace": "AddrSpace#{as_id} Slot#{id} flags={flags:#x} gpa={gpa:#x} size={size:#x} ua={ua:#x} ret={ret}",
    "guest_memfd": ("AddrSpace#{as_id} Slot#{id} flags={flags:#x} gpa={gpa:#x} size={size:#x} ua={ua:#x} "
                    "guest_memfd={fd} guest_memfd_offset={off:#x} ret={ret}"),
}


def format_qemu(call, era=None, prefix=None):
    """Print ``call`` as QEMU would, in format ``era`` (default: the call's own).

    ``prefix`` is the log backend's ``"pid@seconds.micro:"`` or None.

    >>> c = parse_qemu("kvm_set_user_memory Slot#65539 flags=0x1 gpa=0xfd000000 size=0x0 ua=0x7f0000000000 ret=0").calls[0]
    >>> format_qemu(c, "guest_memfd", "7@1.000001:")
    '7@1.000001:kvm_set_user_memory AddrSpace#1 Slot#3 flags=0x1 gpa=0xfd000000 size=0x0 ua=0x7f0000000000 guest_memfd=-1 guest_memfd_offset=0x0 ret=0'
    """
    era = era or call.era
    if era not in _TEMPLATES:
        raise ValueError(f"unknown trace format {era!r}; choose from {ERAS}")
    fd = -1 if call.guest_memfd is None else call.guest_memfd
    body = _TEMPLATES[era].format(slot=call.slot, as_id=call.as_id, id=call.id, flags=call.flags,
                                  gpa=call.guest_phys_addr, size=call.memory_size,
                                  ua=call.userspace_addr, fd=fd, off=call.guest_memfd_offset or 0,
                                  ret=call.ret)
    return f"{prefix or ''}{EVENT} {body}"
