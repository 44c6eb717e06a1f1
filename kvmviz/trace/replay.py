"""Replay a QEMU memslot trace through the model and compare return values.

Each logged call runs as ``KVM_SET_USER_MEMORY_REGION`` on a ``VM`` (history
off by default, for speed): all checks of reference §4.2 in order, then the
update steps. The model's return value is compared with the logged ``ret=``;
a difference is a ``Mismatch`` that says why. What the log says wins:

- a call the kernel refused (``ret<0``) but the model would accept is not
  applied, so the VM stays what the real one was;
- a call the kernel accepted but the model refuses (say, a delete of a slot
  the log never created because it starts mid-run) leaves the VM unchanged,
  as a refused ioctl does;
- QEMU cannot change READONLY in place (check §4.2#15): its
  ``kvm_set_user_memory_region`` first deletes the slot with an *untraced*
  ``memory_size 0`` call. A logged success that toggles READONLY on an
  existing slot is replayed as that implied DELETE plus the logged call;
- guest_memfd slots (``KVM_MEM_GUEST_MEMFD``, Linux 6.8+, reference §4.5) are
  replayed as ``KVM_SET_USER_MEMORY_REGION2`` on a VM whose kernel has them
  (``kernel="6.12"``; a VM without private memory refuses the flag, as a 6.12
  default VM does): the trace does not log ``KVM_CREATE_GUEST_MEMFD``, so each
  guest_memfd fd the log names gets a model file of ``GMEM_FILE_SIZE`` bytes
  when first seen. On older kernels they are outside the model: such calls
  are reported as ``OUTSIDE`` and not run.

Every ioctl runs to its end or is refused by the checks before it changes
anything, so no call leaves a half-applied VM; a VM with readers inside SRCU
or running MMU-notifier invalidations is refused up front, as its updates
could block midway.

>>> r = replay('''kvm_set_user_memory Slot#1 flags=0x0 gpa=0x0 size=0x0 ua=0x7f0000000000 ret=0
... kvm_set_user_memory Slot#1 flags=0x0 gpa=0x100000 size=0x200000 ua=0x7f0000000000 ret=0
... kvm_set_user_memory Slot#1 flags=0x1 gpa=0x100000 size=0x200000 ua=0x7f0000000000 ret=0''')
>>> {k: v for k, v in r.counts.items() if v}
{'CREATE': 1, 'FLAGS_ONLY': 1, 'FAILED': 1}
>>> m = r.mismatches[0]; m.line, m.logged, m.modelled
(1, 0, -22)
>>> r.peak_slots, r.vm.generation(0), r.layout()
(1, 4, {0: [(1, 256, 512, 1)], 1: []})
"""

import errno
from collections import Counter
from functools import partial
from importlib import resources
from typing import NamedTuple

from ..engine.constants import KVM_MEM_READONLY, flag_names
from ..engine.fmt import result_text
from ..engine.kernels import KERNELS, has
from ..engine.validate import CHANGES, DELETE
from ..engine.vm import VM
from .qemu import MemoryCall, QemuTrace, parse_qemu

FAILED, OUTSIDE = "FAILED", "OUTSIDE"
GMEM_FILE_SIZE = 1 << 62     # big enough for any offset + size a trace binds
COUNT_KEYS = CHANGES + (FAILED, OUTSIDE)
_DATA = "data"


class Mismatch(NamedTuple):
    """A call whose modelled return value differs from the logged one."""

    number: int      # call number, from 1
    line: int        # line of the log where the record starts
    logged: int      # ret= in the log: 0 or -errno
    modelled: int    # what the model returned (or would have returned)
    why: str


class ReplayedCall:
    """What the replay did with one logged call.

    ``change`` is the model's classification (None if refused before it),
    ``modelled`` its return value, ``steps`` the model's ``Step``s (None when
    the replay ran with ``keep_steps=False``), ``before``/``after`` the slot's
    ``(base_gfn, npages, flags)`` in its address space (None: no such slot),
    ``gens_before``/``gens_after`` the active generation of each address space.
    """

    __slots__ = ("number", "call", "change", "modelled", "error", "steps", "outside", "implied",
                 "mismatch", "before", "after", "gens_before", "gens_after")

    def __init__(self, number, call, before, gens_before):
        self.number, self.call, self.before, self.gens_before = number, call, before, gens_before
        self.change = self.modelled = self.error = self.outside = self.implied = self.mismatch = None
        self.steps = []
        self.after, self.gens_after = None, gens_before

    def __repr__(self):
        what = self.outside and "OUTSIDE" or self.change or "refused"
        return (f"<call {self.number} line {self.call.line}: {what}, logged {_rc(self.call.ret)}, "
                f"model {_rc(self.modelled)}>")


class ReplayReport:
    """The result of ``replay``: counts, mismatches, unparsed lines, the final VM.

    ``counts`` counts the ioctls the model ran by change type (an implied
    DELETE included), refused ones as ``FAILED`` and guest_memfd calls as
    ``OUTSIDE``. ``calls`` holds a ``ReplayedCall`` per logged call.
    """

    def __init__(self, trace, calls, counts, mismatches, peak_slots, vm):
        self.trace = trace
        self.calls = calls
        self.counts = counts
        self.mismatches = mismatches
        self.unparsed = trace.unparsed
        self.other = trace.other
        self.peak_slots = peak_slots
        self.vm = vm

    def call(self, number):
        """The ``ReplayedCall`` of call ``number`` (counted from 1)."""
        if not 1 <= number <= len(self.calls):
            raise IndexError(f"call {number} is outside 1..{len(self.calls)}")
        return self.calls[number - 1]

    @property
    def outside(self):
        """The calls left out because they use guest_memfd."""
        return [c for c in self.calls if c.outside]

    def layout(self):
        """Final slots per address space: ``{as_id: [(id, base_gfn, npages, flags)]}``."""
        return {a: [(s.id, s.base_gfn, s.npages, s.flags) for s in self.vm.memslots(a)]
                for a in range(self.vm.address_spaces)}

    def vm_before(self, number):
        """A fresh VM, history on, in the state the log had just before call ``number``.

        Replays calls 1..number-1 with history off, then turns history on, so
        a notebook can step through call ``number`` and back.
        """
        self.call(number)
        vm = like(self.vm)
        replay(self.trace.calls[:number - 1], vm, keep_steps=False)
        vm.history.enabled = True
        return vm

    def summary(self):
        """Plain-text summary: calls, counts, slots, generations, mismatches, unparsed lines."""
        counts = ", ".join(f"{k} {self.counts[k]}" for k in COUNT_KEYS)
        lines = [f"{len(self.calls)} kvm_set_user_memory calls, {len(self.other)} other trace events, "
                 f"{len(self.unparsed)} unparsed lines",
                 f"replayed ioctls: {counts}",
                 f"peak slots: {self.peak_slots} (all address spaces)"]
        for a, slots in self.layout().items():
            lines.append(f"as{a}: {len(slots)} slots at the end, generation {self.vm.generation(a):#x}")
        lines.append(f"mismatches: {len(self.mismatches)}")
        lines += [f"  line {m.line} (call {m.number}): logged {_rc(m.logged)}, model {_rc(m.modelled)}: "
                  f"{m.why}" for m in self.mismatches]
        lines += [f"  line {u.line} unparsed ({u.reason}): {_cut(u.text.strip())}"
                  for u in self.unparsed[:UNPARSED_SHOWN]]
        if len(self.unparsed) > UNPARSED_SHOWN:
            lines.append(f"  ... and {len(self.unparsed) - UNPARSED_SHOWN} more unparsed lines")
        return "\n".join(lines)

    def __repr__(self):
        return (f"<ReplayReport: {len(self.calls)} calls, {len(self.mismatches)} mismatches, "
                f"{len(self.unparsed)} unparsed, peak {self.peak_slots} slots>")


#: How many unparsed lines ``summary`` lists (each cut to ``LINE_SHOWN`` characters).
UNPARSED_SHOWN, LINE_SHOWN = 20, 160


def _cut(text):
    return text if len(text) <= LINE_SHOWN else text[:LINE_SHOWN - 3] + "..."


def like(vm, history=False):
    """A fresh VM configured as ``vm``: kernel, address spaces, max gfn, private memory, zap quirk, variant.

    >>> v = like(VM(kernel="6.12", address_spaces=1, max_gfn=0xfffff))
    >>> v.kernel, v.address_spaces, hex(v.max_gfn), v.history.enabled
    ('6.12', 1, '0xfffff', False)
    """
    max_gfn = vm.max_gfn if KERNELS[vm.kernel].max_gfn_check else None
    return VM(kernel=vm.kernel, variant=vm.variant, address_spaces=vm.address_spaces, max_gfn=max_gfn,
              private_mem=vm.private_mem, slot_zap_all=vm.slot_zap_all, history=history)


def _span(vm, as_id, id):
    if as_id >= vm.address_spaces:
        return None
    with vm.uncounted():
        slot = vm.id_to_memslot(id, as_id)
    return None if slot is None else (slot.base_gfn, slot.npages, slot.flags)


def _gens(vm):
    return tuple(vm.generation(a) for a in range(vm.address_spaces))


class _Replayer:
    """Runs calls one by one on ``vm`` and keeps the tallies."""

    def __init__(self, vm, keep_steps):
        if vm.update is not None or vm.mn_active_invalidate_count or vm.srcu.readers:
            raise ValueError("replay needs a VM at rest: no update running, no vCPU inside SRCU, no "
                             "MMU-notifier invalidation in progress (an update could block midway)")
        self.vm, self.keep_steps = vm, keep_steps
        self.gmem, self.fds = set(), {}
        self.counts = Counter(dict.fromkeys(COUNT_KEYS, 0))
        self.calls, self.mismatches = [], []
        self.peak = self.nslots()

    def nslots(self):
        return sum(len(self.vm.active_set(a)) for a in range(self.vm.address_spaces))

    def run(self, number, call):
        vm = self.vm
        rc = ReplayedCall(number, call, _span(vm, call.as_id, call.id), _gens(vm))
        if not has(vm.kernel, "guest_memfd") and (call.uses_guest_memfd or (call.as_id, call.id) in self.gmem):
            self.outside(rc)
        elif call.ret:
            self.logged_failure(rc)
        else:
            self.logged_success(rc)
        if rc.modelled is not None and rc.modelled != call.ret:
            rc.mismatch = Mismatch(number, call.line, call.ret, rc.modelled, _why(rc, vm.address_spaces))
            self.mismatches.append(rc.mismatch)
        rc.after, rc.gens_after = _span(vm, call.as_id, call.id), _gens(vm)
        if not self.keep_steps:
            rc.steps = None
        self.peak = max(self.peak, self.nslots())
        self.calls.append(rc)

    def outside(self, rc):
        c = rc.call
        what = "binds a guest_memfd" if c.uses_guest_memfd else "changes a guest_memfd slot"
        rc.outside = (f"{what}: KVM_MEM_GUEST_MEMFD slots (Linux 6.8+, reference §4.5) are outside the "
                      "model, so the call is not replayed")
        if not c.ret:
            (self.gmem.add if c.memory_size else self.gmem.discard)((c.as_id, c.id))
        self.counts[OUTSIDE] += 1

    def logged_success(self, rc):
        c = rc.call
        if rc.before is not None and c.memory_size and (rc.before[2] ^ c.flags) & KVM_MEM_READONLY:
            rc.implied = DELETE         # QEMU sends the new flags with memory_size 0
            self.ioctl(rc, (c.slot, c.flags, c.guest_phys_addr, 0, c.userspace_addr))
        self.ioctl(rc, c.args)

    def logged_failure(self, rc):
        c = rc.call
        extra = self.gmem_args(c)
        gmem = {"guest_memfd": extra[1], "guest_memfd_offset": extra[0]} if extra else {}
        checks = self.vm.dry_run(*c.args, until=_past_the_checks, **gmem)
        if checks[-1].result:
            self.ioctl(rc, c.args)       # refused by the checks or kvm_gmem_bind: the VM stays as it is
            return
        rc.change, rc.modelled = checks[-1].change, 0
        self.counts[FAILED] += 1

    def gmem_args(self, call):
        """``(guest_memfd_offset, model fd, v2)`` for a call of the guest_memfd era on a 6.12 VM."""
        if not (call.uses_guest_memfd and has(self.vm.kernel, "guest_memfd")):
            return ()
        if call.guest_memfd not in self.fds and self.vm.private_mem:
            self.fds[call.guest_memfd] = self.vm.create_guest_memfd(GMEM_FILE_SIZE)
        return call.guest_memfd_offset or 0, self.fds.get(call.guest_memfd, 0), True

    def ioctl(self, rc, args):
        extra = self.gmem_args(rc.call)
        if extra:
            offset, fd, _ = extra
            upd = self.vm.begin_set_user_memory_region2(*args, guest_memfd=fd, guest_memfd_offset=offset)
        else:
            upd = self.vm.begin_set_user_memory_region(*args)
        steps = upd.run()           # no reader runs during a replay: nothing blocks it
        if self.keep_steps:
            rc.steps += steps
        rc.change, rc.modelled, rc.error = upd.change, upd.result, upd.error
        self.counts[upd.change if upd.result == 0 else FAILED] += 1


#: A return code as the report prints it: ``-22 (EINVAL)``, ``none`` when the model did not run the call.
_rc = partial(result_text, none="none", number=True)


def _past_the_checks(step):
    """The call has passed ``__kvm_set_memory_region``'s checks and ``kvm_gmem_bind``, or ended."""
    return step.stage != "validate" or step.result is not None


def _why(rc, address_spaces):
    c, modelled = rc.call, rc.modelled
    where = f"slot {c.id} of as{c.as_id}"
    if c.ret == 0 and c.as_id >= address_spaces:
        return (f"the log's kernel had address space {c.as_id} (SMM), the VM replaying it has "
                f"{address_spaces} address space(s): a kernel without SMM refuses as_id {c.as_id} with -EINVAL; "
                "VM left unchanged")
    if c.ret == 0 and c.memory_size == 0 and rc.before is None:
        return (f"the log deletes {where}, which it never created: the log starts mid-run (QEMU created the "
                "slot before the first logged line), so the model has nothing to delete; VM left unchanged")
    if c.ret == 0:
        hint = {errno.EEXIST: "the model still holds a slot the real VM had deleted: the log misses that "
                              "delete (it starts mid-run, or lines were lost)",
                errno.EINVAL: "the slot exists in the model with other values: the log misses its delete"}
        return (f"the kernel accepted the call, the model refuses it ({rc.error.message}); "
                f"{hint.get(-modelled, 'the kernel that ran differs from the model here')}; VM left unchanged")
    if modelled == 0:
        return (f"the kernel refused this {rc.change} of {where} but the model's checks accept it: the kernel "
                "that ran had a check the model lacks, or failed after the checks (e.g. -ENOMEM, arch prepare, "
                "reference §4.4); the replay follows the log and leaves the VM unchanged")
    return (f"kernel and model both refuse the call, with different errnos "
            f"(kernel {_rc(c.ret)}, model: {rc.error.message})")


def replay(text_or_calls, vm=None, *, keep_steps=True):
    """Replay a QEMU trace (text, ``QemuTrace`` or iterable of ``MemoryCall``).

    Runs on ``vm``, a VM the caller configured (default: a fresh
    ``VM(history=False)`` of the default kernel, with private memory when the
    log binds a guest_memfd, since only such a VM can): a trace from a kernel
    without SMM replays with the right generations on
    ``VM(address_spaces=1)`` or ``kvmviz.host.model_for_host()``. Returns a ``ReplayReport``. ``keep_steps=False`` drops the per-call steps to save
    memory on long traces. Models ``KVM_SET_USER_MEMORY_REGION`` as QEMU's
    ``kvm_set_user_memory_region`` issued it (see the module doc).

    >>> gmem = "kvm_set_user_memory AddrSpace#0 Slot#0 flags=0x4 gpa=0x0 size=0x1000 ua=0x0 ret=0"
    >>> replay(gmem).counts["CREATE"], replay(gmem, VM(kernel="5.17")).counts["OUTSIDE"]
    (1, 1)
    >>> one = "kvm_set_user_memory Slot#1 flags=0x0 gpa=0x0 size=0x1000 ua=0x7f0000000000 ret=0"
    >>> replay(one).vm.generation(0), replay(one, VM(address_spaces=1, history=False)).vm.generation(0)
    (2, 1)
    """
    if isinstance(text_or_calls, str):
        trace = parse_qemu(text_or_calls)
    elif isinstance(text_or_calls, QemuTrace):
        trace = text_or_calls
    else:
        trace = QemuTrace(list(text_or_calls), [], [])
        if not all(isinstance(c, MemoryCall) for c in trace.calls):
            raise TypeError("replay takes trace text, a QemuTrace or MemoryCall objects")
    if vm is None:
        vm = VM(history=False, private_mem=any(c.uses_guest_memfd for c in trace.calls))
    replayer = _Replayer(vm, keep_steps)
    for number, call in enumerate(trace.calls, 1):
        replayer.run(number, call)
    return ReplayReport(trace, replayer.calls, replayer.counts, replayer.mismatches, replayer.peak,
                        replayer.vm)


def explain(report, number):
    """Plain-text account of call ``number``: the record, the decoded ioctl, the steps, the verdict.

    >>> r = replay("kvm_set_user_memory Slot#65539 flags=0x0 gpa=0xd0000 size=0x0 ua=0x7f0000000000 ret=0")
    >>> print(explain(r, 1).splitlines()[1])
    ioctl: slot=0x10003 (address space 1, slot id 3), flags=0x0 (-), DELETE request (memory_size 0)
    """
    rc = report.call(number)
    c = rc.call
    lines = [f"Call {number}, line {c.line}: {c.text}", _decode(c)]
    if rc.outside:
        lines.append(f"Not replayed: it {rc.outside}.")
        return "\n".join(lines)
    steps = rc.steps if rc.steps is not None else _rerun(report, number)
    if rc.implied:
        lines.append("QEMU changed READONLY on an existing slot, which KVM refuses (reference §4.2#15), so "
                     "its kvm_set_user_memory_region first deleted the slot with an untraced memory_size-0 "
                     "call; the steps below start with that DELETE.")
    if not steps:
        lines.append(f"The model did not run it: the kernel refused it ({_rc(c.ret)}) and the replay "
                     f"follows the log (the model would have classified it as {rc.change}).")
    lines += [f"  {i:2}. {step}" for i, step in enumerate(steps, 1)]
    verdict = "match" if rc.mismatch is None else f"MISMATCH: {rc.mismatch.why}"
    lines.append(f"Result: logged {_rc(c.ret)}, model {_rc(rc.modelled)} ({verdict}).")
    gens = ", ".join(f"as{a} {b:#x} -> {g:#x}" for a, (b, g) in enumerate(zip(rc.gens_before, rc.gens_after)))
    lines.append(f"Generations: {gens}.")
    return "\n".join(lines)


def _decode(c):
    head = (f"ioctl: slot={c.slot:#x} (address space {c.as_id}, slot id {c.id}), "
            f"flags={c.flags:#x} ({flag_names(c.flags)}), ")
    if not c.memory_size:
        return head + "DELETE request (memory_size 0)"
    return (head + f"gpa={c.guest_phys_addr:#x} (gfn {c.base_gfn:#x}..{c.base_gfn + c.npages - 1:#x}), "
            f"size={c.memory_size:#x} ({c.npages:#x} pages), hva={c.userspace_addr:#x}")


def _rerun(report, number):
    vm = report.vm_before(number)
    return replay([report.call(number).call], vm).calls[0].steps


def shipped():
    """Names of the traces shipped with kvmviz (``kvmviz/trace/data``).

    >>> "qemu-boot-smm.log" in shipped()
    True
    """
    return sorted(p.name for p in resources.files(__package__).joinpath(_DATA).iterdir()
                  if p.name.endswith(".log"))


def load(name):
    """Text of the shipped trace ``name`` (see ``shipped()``)."""
    if name not in shipped():
        raise ValueError(f"no shipped trace {name!r}; choose from {shipped()}")
    return resources.files(__package__).joinpath(_DATA, name).read_text(encoding="utf-8")
