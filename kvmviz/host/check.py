"""The differential check: the same calls on the model and on ``/dev/kvm``, compared call by call.

A *case* is a list of items: a ``Call`` (``KVM_SET_USER_MEMORY_REGION``; the
return codes of model and kernel must be equal) or ``PROBE`` (what the guest
sees must agree: the byte a real vCPU reads at gpas inside, at the edges of,
between and after the model's slots, an MMIO exit where the model has no slot
or a READONLY slot is written, the byte a guest write leaves in host memory,
and ``KVM_GET_DIRTY_LOG`` of every slot). hvas are offsets into the
``HostVM``'s memory (``Call.hva`` is relative to its base unless ``abs_hva``),
so the model and the kernel see the same addresses.

``CASES`` covers every validation rule of reference §4 at and around its
bounds, every change type, the usual mistakes, 32764 slots, and the max-gfn
check; ``random_case`` draws call sequences from small value pools so that
collisions are frequent. ``run`` returns a ``Report``.

>>> from kvmviz.host.kvm import available
>>> if available()[0]:
...     r = run(cases=[c for c in CASES if c.name == "change-types"])
...     print(r.differences == [], r.calls > 5)
... else:
...     print(True, True)
True True
"""

import random
import time
from typing import NamedTuple

from ..engine.constants import (KVM_MEM_LOG_DIRTY_PAGES as LOG, KVM_MEM_MAX_NR_PAGES, KVM_MEM_READONLY as RO,
                         KVM_USER_MEM_SLOTS, PAGE_SHIFT, PAGE_SIZE as P, TASK_SIZE_MAX, U64_MAX)
from ..engine.errors import KvmError
from ..engine.fmt import result_text
from .guest import PROBE_LIMIT
from .kvm import HostVM
from .model import describe, host_capabilities, model_for_host

MEMORY = 16 << 20           # host memory behind the hvas of the cases
PROBED_SLOTS = 4            # a probe looks at the first and last 4 slots by gfn


class Call(NamedTuple):
    """One ``KVM_SET_USER_MEMORY_REGION``; ``hva`` is relative to the memory base unless ``abs_hva``.

    ``v2`` makes it ``KVM_SET_USER_MEMORY_REGION2``; ``gmem`` is then
    ``(k, offset)``: the k-th ``GmemFile`` of the case (or ``None`` for an fd
    that is not open) and the guest_memfd offset.
    """

    slot: int
    flags: int
    gpa: int
    size: int
    hva: int = 0
    abs_hva: bool = False
    v2: bool = False
    gmem: tuple = (None, 0)

    def address(self, base):
        """The userspace_addr passed to the ioctl."""
        return self.hva if self.abs_hva else base + self.hva

    def __str__(self):
        hva = f"{self.hva:#x}" if self.abs_hva else f"mem+{self.hva:#x}"
        v2 = (f" guest_memfd=file{self.gmem[0]} offset={self.gmem[1]:#x} (v2)" if self.v2 and
              self.gmem[0] is not None else " (v2)" if self.v2 else "")
        return (f"slot={self.slot:#x} flags={self.flags:#x} gpa={self.gpa:#x} size={self.size:#x} "
                f"hva={hva}{v2}")


class GmemFile(NamedTuple):
    """``KVM_CREATE_GUEST_MEMFD`` of ``size`` bytes, on the model and on the kernel."""

    size: int

    def __str__(self):
        return f"KVM_CREATE_GUEST_MEMFD size={self.size:#x}"


PROBE = "probe"
CLOSED_FD = 1 << 20          # an fd number no process here has open


class Case(NamedTuple):
    """A named list of ``Call``s and ``PROBE``s; ``build(max_gfn)`` makes the items."""

    name: str
    what: str
    build: object


class Difference(NamedTuple):
    """A disagreement: where, the call or probe, both results, the rule the model applied."""

    case: str
    index: int
    item: str
    model: object
    host: object
    rule: str

    def __str__(self):
        return (f"{self.case} #{self.index}: {self.item}: model {self.model}, kernel {self.host} "
                f"(model rule: {self.rule})")


class CaseResult(NamedTuple):
    """Counts of one case: calls and probes compared, how many matched, the differences."""

    name: str
    calls: int
    probes: int
    matches: int
    differences: tuple


# -- running one case -------------------------------------------------------------------
def model_call(vm, call, base, fds=()):
    """The model's return code and the rule it applied (``-errno`` or 0); ``fds``: the model's gmem fds."""
    args = (call.slot, call.flags, call.gpa, call.size, call.address(base))
    try:
        if call.v2:
            fd = CLOSED_FD if call.gmem[0] is None else fds[call.gmem[0]]
            steps = vm.set_user_memory_region2(*args, guest_memfd=fd, guest_memfd_offset=call.gmem[1])
        else:
            steps = vm.set_user_memory_region(*args)
    except KvmError as e:
        return -e.errno, f"§{e.rule}: {e.message}" if e.rule else e.message
    return 0, (steps[-1].function if steps else "-")


class _Runner:
    """Runs one case on a fresh model VM and a fresh ``HostVM``."""

    def __init__(self, case, make_vm, max_gfn, path):
        self.case, self.make_vm, self.max_gfn, self.path = case, make_vm, max_gfn, path
        self.calls = self.probes = self.matches = 0
        self.differences = []
        self.fds = ([], [])         # guest_memfd fds: the model's, the kernel's

    def run(self):
        vm = self.make_vm()
        with HostVM(memory=MEMORY, path=self.path) as host:
            _fill(host.memory)
            for i, item in enumerate(self.case.build(self.max_gfn)):
                if item == PROBE:
                    self.probe(i, vm, host)
                elif isinstance(item, GmemFile):
                    self.gmem_file(i, item, vm, host)
                else:
                    self.call(i, item, vm, host)
        return CaseResult(self.case.name, self.calls, self.probes, self.matches, tuple(self.differences))

    def compare(self, index, item, model, kernel, rule):
        if model == kernel:
            self.matches += 1
        else:
            self.differences.append(Difference(self.case.name, index, item, model, kernel, rule))

    def call(self, i, call, vm, host):
        self.calls += 1
        base = host.memory.base
        rc, rule = model_call(vm, call, base, self.fds[0])
        args = (call.slot, call.flags, call.gpa, call.size, call.address(base))
        if call.v2:
            fd = CLOSED_FD if call.gmem[0] is None else self.fds[1][call.gmem[0]]
            got = host.set_user_memory_region2(*args, guest_memfd=fd, guest_memfd_offset=call.gmem[1])
        else:
            got = host.set_user_memory_region(*args)
        self.compare(i, str(call), result_text(rc), result_text(got), rule)

    def gmem_file(self, i, item, vm, host):
        self.calls += 1
        try:
            fd, rule = vm.create_guest_memfd(item.size), "kvm_gmem_create"
            self.fds[0].append(fd)
            rc = 0
        except KvmError as e:
            rc, rule = -e.errno, e.message
        got = host.create_guest_memfd(item.size)
        if got >= 0:
            self.fds[1].append(got)
        self.compare(i, str(item), result_text(rc), result_text(min(got, 0)), rule)

    def probe(self, i, vm, host):
        vcpu = vm.add_vcpu()
        for gpa, value in _probe_points(vm):
            try:
                host.free_probe_place(gpa)
            except ValueError:      # every id or page is taken: nowhere to put the guest's code
                continue
            want, rule = expected_access(vm, vcpu, host.memory, gpa, value)
            if want is None:
                continue
            self.probes += 1
            got = host.guest().read(gpa) if value is None else host.guest().write(gpa, value)
            seen = (got.outcome, got.value if got.outcome == "ok" else got.mmio_write)
            if value is not None and got.outcome == want[0] == "ok":
                seen = ("ok", host.memory.read(want[2]))     # the byte where the model says it went
            self.compare(i, f"guest {'write' if value is not None else 'read'} gpa {gpa:#x}",
                         fmt_outcome(want), fmt_outcome(seen), rule)
        slots = vm.memslots(0)
        for slot in slots[:PROBED_SLOTS] + slots[PROBED_SLOTS:][-PROBED_SLOTS:]:
            self.probes += 1
            try:
                pages, rule = sorted(vm.get_dirty_log(slot.id)), "dirty bitmap"
            except KvmError as e:
                pages, rule = result_text(-e.errno), e.message
            rc, got = host.get_dirty_log(slot.id, slot.npages)
            self.compare(i, f"KVM_GET_DIRTY_LOG slot {slot.id}", pages,
                         sorted(got) if rc == 0 else result_text(rc), rule)


def _fill(memory):
    """A pattern whose every byte tells its page: page p, offset o holds (p * 7 + o) & 0xff."""
    data = bytes(range(256)) * (2 * P // 256)
    for page in range(memory.size // P):
        k = page * 7 & 0xFF
        memory.write(memory.base + page * P, data[k:k + P])


def _probe_points(vm):
    """Reads at a slot's first and last byte, just before and after it, and a write inside.

    For the first and last ``PROBED_SLOTS`` slots by gfn (all of them in small cases).
    """
    points, slots = [], [s for s in vm.memslots(0) if s.gmem is None]   # private memory is not probed
    for slot in slots[:PROBED_SLOTS] + slots[PROBED_SLOTS:][-PROBED_SLOTS:]:
        start, end = slot.base_gfn << PAGE_SHIFT, slot.end_gfn << PAGE_SHIFT
        if end > PROBE_LIMIT:
            continue
        points += [(start, None), (end - 1, None), (end, None)]
        if start:
            points.append((start - 1, None))
        points.append((start + ((slot.npages // 2) << PAGE_SHIFT) + 0x10, 0xA5))
    return [p for p in points if p[0] < PROBE_LIMIT] or [(0x1000, None)]


def expected_access(vm, vcpu, memory, gpa, value):
    """What the model says a guest access at ``gpa`` shows: ``(outcome, detail[, hva])``."""
    vcpu.srcu_read_lock()
    try:
        a = vcpu.access(gpa >> PAGE_SHIFT, write=value is not None)
    finally:
        vcpu.srcu_read_unlock()
    rule = f"vcpu.access: {a.reason}"
    if a.reason == "ok":
        hva = a.hva + (gpa & (P - 1))
        if not memory.contains(hva):
            return None, rule          # the model does not model host memory outside the mapping
        return (("ok", value, hva) if value is not None else ("ok", memory.read(hva))), rule
    if a.reason in ("no-slot", "readonly"):
        return ("mmio", value is not None), rule
    return (a.reason, None), rule


def fmt_outcome(outcome):
    """An outcome of ``expected_access`` (or a real one in its shape) as the report prints it."""
    kind, detail = outcome[:2]
    if kind == "ok":
        return f"ok {detail:#x}"
    if kind == "mmio":
        return "MMIO exit (write)" if detail else "MMIO exit (read)"
    return kind


# -- the cases --------------------------------------------------------------------------
def _create_delete(slot, gpa, size, flags=0, hva=0):
    return [Call(slot, flags, gpa, size, hva), Call(slot, 0, gpa, 0, hva)]


def _flag_bits(_):
    return [c for bit in range(32) for c in _create_delete(1, 0x200000, P, 1 << bit)]


def _alignment(_):
    return [Call(1, 0, 0x100000, 0x1001), Call(1, 0, 0x100000, 0xFFF), Call(1, 0, 0x100000, 1),
            Call(1, 0, 0x100000, 0x800), Call(1, 0, 0x100001, P), Call(1, 0, 0x100800, P),
            Call(1, 0, 0x100000, P, 1), Call(1, 0, 0x100000, P, 0x800),
            Call(1, 0, 0x100000, P), Call(1, 0, 0x100800, 0), Call(1, 4, 0x100000, 0),
            Call(1, 0, 0x100000, 0, 0x801), Call(1, 0, 0x100000, 0x1001, 0), Call(1, 0, 0x100000, 0)]


def _user_range(_):
    top = TASK_SIZE_MAX
    return [Call(1, 0, 0x100000, P, top - P, True), Call(1, 0, 0x100000, 0, top, True),
            Call(2, 0, 0x200000, P, top, True), Call(2, 0, 0x200000, 2 * P, top - 2 * P, True),
            Call(2, 0, 0x200000, 0, top + P, True), Call(2, 0, 0x200000, 0, top, True),
            Call(3, 0, 0x300000, P, U64_MAX + 1 - P, True), Call(3, 0, 0x300000, P, 0, True),
            Call(3, 0, 0x300000, 0, 0, True), Call(4, 0, 0x400000, top, 0, True),
            Call(4, 0, 0x400000, top + P, 0, True), Call(4, 0, 0x400000, 0, 0, True)]


def _slot_ids(_):
    ids = (0, 1, 32762, 32763, 32764, 32765, 32766, 32767, 0x8000, 0xFFFF)
    return [c for i, id in enumerate(ids) for c in _create_delete(id, 0x100000 + i * P, P, hva=i * P)]


def _address_spaces(_):
    return [c for as_id in (1, 2, 0xFFFF) for c in _create_delete(as_id << 16 | 1, 0x100000, P)]


def _gpa_wrap(_):
    return [Call(1, 0, U64_MAX + 1 - P, 2 * P), Call(1, 0, U64_MAX + 1 - P, P),
            Call(1, 0, U64_MAX + 1 - 2 * P, P), Call(1, 0, U64_MAX + 1 - P, 0)]


def _npages(_):
    big = KVM_MEM_MAX_NR_PAGES << PAGE_SHIFT
    return [Call(0, 0, 0, 16 * P), Call(1, 0, 0, big + P), Call(1, 0, 0, big), Call(1, 0, P, big),
            Call(1, 0, 1 << 40, big + P), Call(1, 0, 0, (1 << 63)), Call(1, 0, 0, 0)]


def _max_gfn(max_gfn):
    top = (max_gfn if max_gfn is not None else (1 << 40) - 1) << PAGE_SHIFT
    return [Call(1, 0, top, P), Call(1, 0, top, 0), Call(1, 0, top + P, P), Call(1, 0, top - P, 2 * P),
            Call(1, 0, top - P, 3 * P), Call(1, 0, 1 << 52, P), Call(1, 0, 1 << 48, P), Call(1, 0, 1 << 48, 0),
            Call(2, LOG, top + P, P), Call(3, 0, 0x100000, 4 * P), Call(3, 0, top - 3 * P, 4 * P),
            Call(3, 0, top - 2 * P, 4 * P), PROBE, Call(3, LOG, top - 2 * P, 4 * P), PROBE,
            Call(3, 0, 0x100000, 0)]


def _modify(_):
    return [Call(3, 0, 0x300000, 4 * P, 0x10000), Call(3, 0, 0x300000, 4 * P, 0x20000),
            Call(3, 0, 0x300000, 8 * P, 0x10000), Call(3, 0, 0x300000, 2 * P, 0x10000),
            Call(3, RO, 0x300000, 4 * P, 0x10000), Call(3, LOG, 0x300000, 4 * P, 0x10000),
            Call(3, LOG, 0x300000, 4 * P, 0x10000), Call(3, LOG, 0x400000, 4 * P, 0x10000),
            Call(3, LOG, 0x401000, 4 * P, 0x10000), Call(4, 0, 0x500000, 2 * P, 0x30000),
            Call(3, LOG, 0x500000, 4 * P, 0x10000), Call(3, LOG, 0x4FF000, 4 * P, 0x10000),
            Call(5, RO, 0x600000, P, 0x40000), Call(5, 0, 0x600000, P, 0x40000),
            Call(5, RO | LOG, 0x600000, P, 0x40000), Call(5, RO, 0x601000, P, 0x40000), PROBE,
            Call(6, 0, 0x700000, 0), Call(6, 0, 0x700000, 0, 0x50000)]


def _overlap(_):
    a = 0x600000
    tries = [(a - P, 2 * P), (a + 3 * P, 2 * P), (a + P, P), (a - P, 6 * P), (a, 4 * P),
             (a - P, P), (a + 4 * P, P)]
    return [Call(1, 0, a, 4 * P)] + [c for g, s in tries for c in _create_delete(2, g, s, hva=P)] + [PROBE]


def _change_types(_):
    return [Call(1, 0, 0x100000, 8 * P), PROBE, Call(1, LOG, 0x100000, 8 * P), PROBE, PROBE,
            Call(1, LOG, 0x200000, 8 * P), PROBE, Call(1, 0, 0x200000, 8 * P), PROBE,
            Call(1, 0, 0x200000, 8 * P), Call(1, 0, 0x200000, 0), PROBE]


def _readers(_):
    return [Call(1, RO, 0x10000, 4 * P, 0x8000), Call(2, LOG, 0x20000, 4 * P, 0x8000),
            Call(3, 0, 0x80000000, 16 * P, 0x100000), Call(4, LOG | RO, 0xFFFF0000, 16 * P, 0x200000), PROBE,
            Call(2, LOG, 0x30000, 4 * P, 0x8000), PROBE, Call(1, 0, 0x10000, 0), PROBE]


def _memory_region2(_):
    P4, G, LOG_RO = 4 * P, 1 << 2, LOG | RO
    v2 = lambda slot, flags, gpa, size, gmem=(None, 0): Call(slot, flags, gpa, size, 0, v2=True, gmem=gmem)
    return [v2(1, 0, 0x100000, P4), v2(1, 0, 0x100000, 0), v2(2, 1 << 3, 0x200000, P), Call(2, G, 0x200000, P),
            GmemFile(16 * P), GmemFile(0x1001), GmemFile(0), GmemFile(P4),
            v2(3, G, 0x300000, P4, (0, 0)), v2(4, G, 0x400000, P4, (0, 2 * P)), v2(4, G, 0x400000, P4, (0, 14 * P)),
            v2(4, G, 0x400000, P4, (0, 0x800)), v2(4, G | LOG, 0x400000, P4, (0, 8 * P)),
            v2(4, G | RO, 0x400000, P4, (0, 8 * P)), v2(4, G | LOG_RO, 0x400000, P4, (0, 8 * P)),
            v2(4, G, 0x400000, P4, (None, 0)), v2(4, G, 0x400000, P4, (1, 0)), v2(5, G, 0x500000, P4, (1, 0)),
            v2(3, G, 0x300000, P4, (0, 0)), v2(3, 0, 0x300000, P4, (0, 0)), v2(3, G, 0x600000, P4, (0, 0)),
            v2(3, G | LOG, 0x300000, P4, (0, 0)), PROBE, Call(3, 0, 0x300000, 0), v2(6, G, 0x600000, P4, (0, 0)),
            v2(6, G, 0x600000, 0, (0, 0x801)), v2(6, G, 0x600000, 0, (0, 0)), PROBE]


def _many_slots(_):
    n = KVM_USER_MEM_SLOTS
    return ([Call(i, 0, i * P, P, i * P) for i in range(n)] + [Call(n, 0, n * P, P)]
            + [Call(0, 0, n * P, P), Call(n - 1, 0, (n - 1) * P, 0), PROBE,
               Call(n - 1, 0, (n + 1) * P, P)])


CASES = [
    Case("flag-bits", "each of flag bits 0..31 alone on a CREATE (§4.2#1; bit 2 is GUEST_MEMFD, "
                      "refused by the v1 ioctl)", _flag_bits),
    Case("alignment", "size, gpa and hva not page-aligned, on CREATE and DELETE (§4.2#3-5)", _alignment),
    Case("user-range", "hva + size at, below and above the user half; wrap; size 0 (§4.2#5)", _user_range),
    Case("slot-ids", "slot ids 0, 1, 32762..32767, 0x8000, 0xffff (§4.1, §4.2#6)", _slot_ids),
    Case("address-spaces", "as_id 1, 2 and 0xffff (§4.2#6)", _address_spaces),
    Case("gpa-wrap", "guest_phys_addr + memory_size wraps (§4.2#7)", _gpa_wrap),
    Case("npages", "KVM_MEM_MAX_NR_PAGES and beyond; huge sizes (§4.2#8)", _npages),
    Case("max-gfn", "CREATE and MOVE at and beyond the host's max gfn, gpas beyond MAXPHYADDR "
                    "(x86 prepare, 6.x)", _max_gfn),
    Case("modify", "change hva, grow/shrink in place, toggle READONLY, FLAGS_ONLY, no-op, MOVE, "
                   "MOVE onto another slot, delete missing (§4.2#10-17)", _modify),
    Case("overlap", "CREATE overlapping head, tail, inside, around, same range; adjacent (§4.2#17)",
         _overlap),
    Case("change-types", "CREATE, FLAGS_ONLY on/off, MOVE with logging, no-op, DELETE, with guest "
                         "reads, writes and dirty logs in between", _change_types),
    Case("readers", "READONLY, dirty-logged and plain slots read and written by a real vCPU, "
                    "above 2 GiB too", _readers),
    Case("memory-region2", "KVM_SET_USER_MEMORY_REGION2 and guest_memfd: flag filters, file sizes, binding, "
                           "offsets, overlap in the file, flags with GUEST_MEMFD, modify, delete, rebind (§4.5)",
         _memory_region2),
    Case("32764-slots", "all 32764 user slots, one more, a MOVE onto a used gfn, a probe", _many_slots),
]

# -- random sequences from small pools ----------------------------------------------------
SLOTS = (0, 1, 2, 32763, 32764, 1 << 16 | 1)
FLAGS = (0, 0, LOG, RO, LOG | RO, 1 << 2)
SIZES = (0, 0, P, 2 * P, 4 * P, 0x1001)
HVAS = (0, P, 2 * P, 0x801)


def pools(max_gfn):
    """The value pools of random sequences: ``(slots, flags, gpas, sizes, hvas)``."""
    top = (max_gfn if max_gfn is not None else (1 << 40) - 1) << PAGE_SHIFT
    gpas = (0, P, 2 * P, 3 * P, 0x100000, 0x101000, top, top - P, U64_MAX + 1 - P)
    return SLOTS, FLAGS, gpas, SIZES, HVAS


def random_calls(rng, n, max_gfn):
    """``n`` calls drawn with ``rng`` (a ``random.Random``) from ``pools``."""
    return [Call(*(rng.choice(pool) for pool in pools(max_gfn))) for _ in range(n)]


def random_case(seed, n=30):
    """A ``Case`` of ``n`` random calls (seeded) and a final probe."""
    return Case(f"random-{seed}", f"{n} calls from small value pools, seed {seed}",
                lambda max_gfn: random_calls(random.Random(seed), n, max_gfn) + [PROBE])


# -- the whole suite --------------------------------------------------------------------
class Report(NamedTuple):
    """What ``run`` found: per-case results, the kernel and the model configuration."""

    caps: object        # the kernel's ``Capabilities``
    model: str
    results: tuple
    seconds: float

    @property
    def calls(self):
        """Calls compared in all cases."""
        return sum(r.calls for r in self.results)

    @property
    def comparisons(self):
        """Calls and probes compared."""
        return sum(r.calls + r.probes for r in self.results)

    @property
    def differences(self):
        """Every difference, in case order."""
        return [d for r in self.results for d in r.differences]


def run(cases=None, random_cases=100, seed=0, make_vm=None, path="/dev/kvm", progress=None):
    """Run ``cases`` (default ``CASES`` plus ``random_cases`` random ones) on model and kernel.

    ``make_vm`` makes the model VM of each case (default: ``model_for_host``
    with history off); ``path`` is the KVM device; ``progress(result)``, if
    given, is called after each case (the CLI prints a line, since the
    32764-slot case alone takes tens of seconds: the model runs 32764 full
    updates step by step).
    """
    caps = host_capabilities(path)
    make_vm = make_vm or (lambda: model_for_host(caps, history=False))
    max_gfn = make_vm().max_gfn
    if cases is None:
        cases = CASES + [random_case(seed + k) for k in range(random_cases)]
    start = time.monotonic()
    results = []
    for case in cases:
        results.append(_Runner(case, make_vm, max_gfn, path).run())
        if progress is not None:
            progress(results[-1])
    results = tuple(results)
    return Report(caps, describe(make_vm()), results, time.monotonic() - start)
