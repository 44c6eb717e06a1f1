"""Lesson 11: the same memslot calls on the model and on this machine's kernel, side by side.

Each experiment runs on a model configured like the kernel
(``kvmviz.host.model_for_host``) and on a real VM (``kvmviz.host.HostVM``).
Without a usable ``/dev/kvm`` the kernel's answers are played back from a run
recorded on a project machine (``data/your-kernel.json``, written by
``record``): the experiments make the same calls in the same order, and a
``Playback`` returns what the kernel returned then. ``Kernel.here()`` says
which it is, and why.

>>> k = Kernel.recorded("an example")
>>> k.live, k.release.startswith("6.18"), k.model().address_spaces
(False, True, 1)
>>> rows = calls_side_by_side(k)
>>> rows[0]
Row(what='CREATE slot 1: 64 KiB at gpa 0x100000', model='0', kernel='0', same=True)
>>> all(r.same for r in rows)
True
"""

import json
from pathlib import Path
from typing import NamedTuple

from ..engine.constants import KVM_MEM_LOG_DIRTY_PAGES as LOG, KVM_MEM_READONLY as RO, PAGE_SHIFT
from ..engine.fmt import result_text
from ..host.check import Call, expected_access, fmt_outcome, model_call
from ..host.guest import GuestAccess
from ..host.kvm import Capabilities, HostVM, available
from ..host.model import describe, model_for_host

RECORDED = Path(__file__).parent / "data" / "your-kernel.json"
MEMORY = 1 << 20            # backing memory of the real VM; hvas below are offsets into it


class Row(NamedTuple):
    """One line of a side-by-side table: what was done, the model's answer, the kernel's, and whether they agree."""

    what: str
    model: str
    kernel: str
    same: bool


# -- where the kernel's answers come from ----------------------------------------------
class Recorder:
    """A ``HostVM`` that remembers every answer it gives, in order (for ``record``)."""

    def __init__(self, host, answers):
        self.host, self.answers = host, answers
        self.memory = host.memory

    def set_user_memory_region(self, *args):
        """``KVM_SET_USER_MEMORY_REGION`` on the real VM; the return code is recorded."""
        self.answers.append(self.host.set_user_memory_region(*args))
        return self.answers[-1]

    def get_dirty_log(self, slot, npages):
        """``KVM_GET_DIRTY_LOG``; the result is recorded (pages as a sorted list)."""
        rc, pages = self.host.get_dirty_log(slot, npages)
        self.answers.append([rc, sorted(pages) if pages is not None else None])
        return rc, pages

    def guest(self):
        """The recording vCPU (``read``/``write`` below)."""
        return self

    def read(self, gpa):
        """A real guest load; its outcome is recorded."""
        return self._note(self.host.guest().read(gpa))

    def write(self, gpa, value):
        """A real guest store; its outcome is recorded."""
        return self._note(self.host.guest().write(gpa, value))

    def _note(self, access):
        self.answers.append(list(access))
        return access


class Playback:
    """Stands in for a ``HostVM``: returns the recorded answers, in the order they were recorded."""

    def __init__(self, answers):
        self.answers = iter(answers)
        self.memory = None

    def set_user_memory_region(self, *args):
        """The recorded return code of this call."""
        return next(self.answers)

    def get_dirty_log(self, slot, npages):
        """The recorded ``(rc, pages)``."""
        rc, pages = next(self.answers)
        return rc, set(pages) if pages is not None else None

    def guest(self):
        """Itself: ``read`` and ``write`` play back guest outcomes."""
        return self

    def read(self, gpa):
        """The recorded ``GuestAccess`` of this read."""
        return GuestAccess(*next(self.answers))

    def write(self, gpa, value):
        """The recorded ``GuestAccess`` of this write."""
        return GuestAccess(*next(self.answers))


class Kernel:
    """The kernel the lesson talks to: live (``/dev/kvm``) or recorded; ``why`` says which and why."""

    def __init__(self, live, caps, why, recorded=None, max_gfn=None):
        self.live, self.caps, self.why = live, caps, why
        self.recorded_answers, self.max_gfn = recorded or {}, max_gfn
        self.recording = None       # a dict: experiment -> answers, while ``record`` runs

    @classmethod
    def here(cls, path="/dev/kvm"):
        """This machine's kernel if ``/dev/kvm`` is usable, else the recorded one (saying why)."""
        ok, why = available(path)
        if not ok:
            return cls.recorded(why)
        from ..host.model import host_capabilities
        return cls(True, host_capabilities(path), f"live: /dev/kvm of this machine, Linux {why}")

    @classmethod
    def recorded(cls, why):
        """The kernel of ``data/your-kernel.json``; ``why`` says why the live one is not used."""
        data = json.loads(RECORDED.read_text())
        return cls(False, Capabilities(**data["caps"]),
                   f"recorded: no usable /dev/kvm here ({why}); the kernel's answers below were recorded "
                   f"on {data['machine']}, Linux {data['caps']['release']}, on {data['date']}",
                   {**data["answers"], "host_check": data["host_check"]}, data["max_gfn"])

    @property
    def release(self):
        """The kernel release (``uname -r``)."""
        return self.caps.release

    def model(self, **options):
        """A model VM configured like this kernel (version, address spaces, max gfn, private memory)."""
        if self.max_gfn is not None:
            options.setdefault("max_gfn", self.max_gfn)
        return model_for_host(self.caps, **options)

    def open(self, experiment):
        """A real VM, or the playback of ``experiment``'s recorded answers (use with ``with``)."""
        if self.recording is not None:
            return _Recording(HostVM(memory=MEMORY), self.recording.setdefault(experiment, []))
        if self.live:
            return HostVM(memory=MEMORY)
        return _Closing(Playback(self.recorded_answers[experiment]))


class _Closing:
    """``with`` support for a ``Playback``."""

    def __init__(self, playback):
        self.playback = playback

    def __enter__(self):
        return self.playback

    def __exit__(self, *exc):
        return False


def _base(host):
    return host.memory.base if host.memory is not None else 0


# -- the experiments ---------------------------------------------------------------------
#: Calls of the side-by-side table: what each does, and the call (hva relative to the VM's memory).
CALLS = (
    ("CREATE slot 1: 64 KiB at gpa 0x100000", Call(1, 0, 0x100000, 0x10000, 0)),
    ("the same call again (nothing to change)", Call(1, 0, 0x100000, 0x10000, 0)),
    ("turn LOG_DIRTY_PAGES on (FLAGS_ONLY)", Call(1, LOG, 0x100000, 0x10000, 0)),
    ("also set READONLY", Call(1, LOG | RO, 0x100000, 0x10000, 0)),
    ("grow slot 1 to 128 KiB in place", Call(1, LOG, 0x100000, 0x20000, 0)),
    ("slot 2 overlapping slot 1's gpas", Call(2, 0, 0x108000, 0x10000, 0x10000)),
    ("slot 2 in address space 1 (SMM)", Call(1 << 16 | 2, 0, 0, 0x1000, 0x20000)),
    ("flags bit 2 (GUEST_MEMFD) through the v1 ioctl", Call(3, 4, 0x400000, 0x1000, 0x30000)),
    ("hva 1 << 47: the first non-canonical address", Call(3, 0, 0x400000, 0x1000, 1 << 47, abs_hva=True)),
    ("MOVE slot 1 to gpa 1 << 52 (gfn 2**40)", Call(1, LOG, 1 << 52, 0x10000, 0)),
    ("MOVE slot 1 to gpa 0x200000", Call(1, LOG, 0x200000, 0x10000, 0)),
    ("DELETE slot 1", Call(1, 0, 0, 0, 0)),
    ("DELETE slot 1 again", Call(1, 0, 0, 0, 0)),
)


def calls_side_by_side(kernel):
    """``CALLS`` on the model and on the kernel: one ``Row`` per call with both return codes."""
    vm, rows = kernel.model(history=False), []
    with kernel.open("calls") as host:
        for what, call in CALLS:
            rc, _ = model_call(vm, call, _base(host))
            got = host.set_user_memory_region(call.slot, call.flags, call.gpa, call.size, call.address(_base(host)))
            rows.append(Row(what, result_text(rc), result_text(got), rc == got))
    return rows


#: What the guest does in ``guest_side_by_side``: (what, gpa, byte to write or None for a read).
GUEST = (
    ("read gpa 0x103000 (slot 1, page 3)", 0x103000, None),
    ("read gpa 0x200000 (no slot there)", 0x200000, None),
    ("write 0xa5 to gpa 0x300010 (slot 2, READONLY)", 0x300010, 0xA5),
    ("write 0xa5 to gpa 0x105010 (slot 1, page 5)", 0x105010, 0xA5),
)


def guest_side_by_side(kernel):
    """What a vCPU sees: the model's ``vcpu.access`` next to a real vCPU's load or store.

    Slot 1 (16 pages at gpa 0x100000) and a READONLY slot 2 (one page at gpa
    0x300000) are backed by memory whose byte at each page's offset 0 is the
    page number; then the accesses of ``GUEST``, then slot 1 is deleted and
    page 3 read again.
    """
    vm, rows = kernel.model(history=False), []
    vcpu = vm.add_vcpu()
    with kernel.open("guest") as host:
        base = _base(host)
        if host.memory is not None:
            for page in range(MEMORY >> PAGE_SHIFT):
                host.memory.write(base + (page << PAGE_SHIFT), bytes([page & 0xFF]))
        for call in (Call(1, 0, 0x100000, 0x10000, 0), Call(2, RO, 0x300000, 0x1000, 0x20000)):
            model_call(vm, call, base)
            host.set_user_memory_region(call.slot, call.flags, call.gpa, call.size, call.address(base))
        todo = list(GUEST) + [("DELETE slot 1, then read gpa 0x103000 again", 0x103000, None)]
        for what, gpa, value in todo:
            if what.startswith("DELETE"):
                model_call(vm, Call(1, 0, 0, 0, 0), base)
                host.set_user_memory_region(1, 0, 0, 0, base)
            want, rule = expected_access(vm, vcpu, _PageBytes(host.memory), gpa, value)
            got = host.guest().read(gpa) if value is None else host.guest().write(gpa, value)
            seen = fmt_outcome((got.outcome, got.value if got.outcome == "ok" else got.mmio_write))
            rows.append(Row(what, f"{fmt_outcome(want)}; {rule}", seen, fmt_outcome(want) == seen))
    return rows


class _PageBytes:
    """The model's view of the backing memory: offset 0 of each page holds the page number.

    The same content ``guest_side_by_side`` writes into the real memory, so the
    model's expected byte needs no real memory (and works in playback).
    """

    def __init__(self, memory):
        self.base = memory.base if memory is not None else 0

    def contains(self, hva):
        """Every hva of the VM's memory is modelled."""
        return self.base <= hva < self.base + MEMORY

    def read(self, hva):
        """The byte at ``hva``: the page number at offset 0 of each page, else 0."""
        offset = hva - self.base
        return (offset >> PAGE_SHIFT) & 0xFF if offset & ((1 << PAGE_SHIFT) - 1) == 0 else 0


def dirty_log_side_by_side(kernel, pages=(3, 5)):
    """A 16-page slot with ``LOG_DIRTY_PAGES``; the guest writes ``pages``; ``KVM_GET_DIRTY_LOG`` twice.

    Rows: each get, the model's dirty pages next to the kernel's.
    """
    vm, rows = kernel.model(history=False), []
    vcpu = vm.add_vcpu()
    with kernel.open("dirty") as host:
        base = _base(host)
        model_call(vm, Call(1, LOG, 0x100000, 0x10000, 0), base)
        host.set_user_memory_region(1, LOG, 0x100000, 0x10000, base)
        for page in pages:
            vcpu.srcu_read_lock()
            vcpu.access((0x100000 >> PAGE_SHIFT) + page, write=True)
            vcpu.srcu_read_unlock()
            host.guest().write(0x100000 + (page << PAGE_SHIFT) + 0x10, 0x5A)
        for what in ("first KVM_GET_DIRTY_LOG", "second KVM_GET_DIRTY_LOG"):
            rc, got = host.get_dirty_log(1, 16)
            model = f"pages {sorted(vm.get_dirty_log(1))}"
            kernel_pages = f"pages {sorted(got)}" if rc == 0 else result_text(rc)
            rows.append(Row(what, model, kernel_pages, model == kernel_pages))
    return rows


def replay_three_ways(kernel, text):
    """A QEMU trace's calls: logged, on the model of this kernel, on the kernel (``ThreeWay``)."""
    from ..trace import replay
    from ..trace.threeway import on_host
    report = replay(text, kernel.model(history=False))
    with kernel.open("threeway") as host:
        return on_host(report, host, describe(kernel.model(history=False)), f"Linux {kernel.release}")


#: The ``kvmviz host-check`` cases lesson 11 runs: quick ones that cover calls, probes and dirty logs.
HOST_CHECK_CASES = ("modify", "max-gfn", "readers")


def host_check(kernel):
    """``kvmviz host-check --case modify --case max-gfn --case readers`` as text (recorded: as it was)."""
    if not kernel.live:
        return kernel.recorded_answers["host_check"]
    from ..host.check import CASES, run
    from ..host.cli import table
    return table(run(cases=[c for c in CASES if c.name in HOST_CHECK_CASES], random_cases=0))


def markdown(rows, header=("what", "model", "kernel")):
    """``Row``s as a Markdown table, with a column saying whether model and kernel agree."""
    lines = ["| " + " | ".join(header) + " | same? |", "|---" * (len(header) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r.what} | `{r.model}` | `{r.kernel}` | {'yes' if r.same else '**no**'} |")
    return "\n".join(lines)


# -- recording ---------------------------------------------------------------------------
EXPERIMENTS = {"calls": calls_side_by_side, "guest": guest_side_by_side, "dirty": dirty_log_side_by_side}


def record(machine, date, path=RECORDED, trace_text=None):
    """Run every experiment on this machine's kernel and write its answers to ``path``.

    ``trace_text`` is the QEMU trace lesson 11 replays when it cannot capture
    one (the shipped ``captured-hotplug.log`` by default).
    """
    from .. import trace
    live = Kernel.here()
    if not live.live:
        raise OSError(f"cannot record without the real kernel: {live.why}")
    live.recording = {}
    for experiment in EXPERIMENTS.values():
        experiment(live)
    replay_three_ways(live, trace_text or trace.load("captured-hotplug.log"))
    data = {"machine": machine, "date": date, "caps": live.caps._asdict(),
            "max_gfn": live.model().max_gfn, "answers": live.recording, "host_check": host_check(live)}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return data


class _Recording:
    """``with`` support: a ``Recorder`` around a ``HostVM`` that is closed at the end."""

    def __init__(self, host, answers):
        self.host, self.answers = host, answers

    def __enter__(self):
        return Recorder(self.host, self.answers)

    def __exit__(self, *exc):
        self.host.close()
        return False
