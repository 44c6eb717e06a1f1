"""Three-way replay: each logged call's return code, the model's, and a real kernel's.

``on_host(report, host)`` takes a ``ReplayReport`` (the model's replay) and
runs the same ioctls, in the same order, on ``host``: any object with
``set_user_memory_region(slot, flags, gpa, size, hva) -> 0 or -errno``, in
practice a fresh ``kvmviz.host.HostVM`` (this module does not import
``kvmviz.host``: the caller hands the kernel in). The hvas in a QEMU trace
are addresses in QEMU's process, not ours; ``KVM_SET_USER_MEMORY_REGION``
only range-checks an hva (``access_ok`` in ``__kvm_set_memory_region``, virt/kvm/kvm_main.c)
and touches it once a vCPU faults, so the logged values are passed as they
are. A READONLY toggle gets QEMU's untraced DELETE first, as on the model;
guest_memfd calls are not run (the model leaves them out too).

Verdicts per call: ``agree`` (logged = model = host), ``explained`` (model
and host agree, the log differs; the replay's mismatch text says why, e.g.
the log starts mid-run or came from a kernel with SMM), ``not run``
(guest_memfd), and ``UNEXPLAINED`` (model and host differ: a model bug or a
kernel behaviour the model lacks).

>>> from kvmviz.trace import replay
>>> class Kernel:           # a stand-in with the kernel's answer to a delete of a missing slot
...     def set_user_memory_region(self, slot, flags, gpa, size, hva):
...         return -22 if size == 0 else 0
>>> t = on_host(replay('''kvm_set_user_memory Slot#2 flags=0x0 gpa=0x0 size=0x0 ua=0x7f0000000000 ret=0
... kvm_set_user_memory Slot#1 flags=0x0 gpa=0x0 size=0x1000 ua=0x7f0000000000 ret=0'''), Kernel())
>>> [(c.logged, c.model, c.host, c.verdict) for c in t.calls]
[(0, -22, -22, 'explained'), (0, 0, 0, 'agree')]
>>> t.counts()
{'agree': 1, 'explained': 1, 'not run': 0, 'UNEXPLAINED': 0}
"""

from functools import partial
from typing import NamedTuple

from ..engine.fmt import result_text
from ..engine.validate import DELETE
from .replay import GMEM_FILE_SIZE

VERDICTS = ("agree", "explained", "not run", "UNEXPLAINED")


class HostCall(NamedTuple):
    """One call of a three-way replay: the three return codes and the verdict."""

    number: int
    line: int
    logged: int
    model: object       # None when the model did not run it (guest_memfd)
    host: object        # None when the host did not run it
    verdict: str
    why: str


#: A return code in the report: ``-EINVAL``, ``-`` for a side that did not run the call.
_rc = partial(result_text, none="-")


class ThreeWay:
    """The calls of ``on_host`` and a plain-text report of them."""

    def __init__(self, calls, model_name, host_name):
        self.calls, self.model_name, self.host_name = calls, model_name, host_name

    def counts(self):
        """How many calls got each verdict."""
        return {v: sum(c.verdict == v for c in self.calls) for v in VERDICTS}

    @property
    def unexplained(self):
        """Calls where the model and the real kernel differ."""
        return [c for c in self.calls if c.verdict == "UNEXPLAINED"]

    def table(self):
        """One line per call: logged, model and host return codes and the verdict."""
        return "\n".join(f"call {c.number:4} line {c.line:5}: logged {_rc(c.logged):7} model {_rc(c.model):7} "
                         f"host {_rc(c.host):7} {c.verdict}" for c in self.calls)

    def summary(self):
        """The counts, then each call that is not an agreement with its reason."""
        counts = self.counts()
        lines = [f"three-way replay of {len(self.calls)} calls: model {self.model_name}; host {self.host_name}",
                 f"logged = model = host: {counts['agree']}; model = host, log differs (explained): "
                 f"{counts['explained']}; not run on the host: {counts['not run']}; model != host "
                 f"(unexplained): {counts['UNEXPLAINED']}"]
        lines += [f"  call {c.number} (line {c.line}) {c.verdict}: {c.why}" for c in self.calls if c.verdict != "agree"]
        return "\n".join(lines)


def _verdict(rc, host):
    c = rc.call
    if rc.modelled != host:
        return "UNEXPLAINED", (f"the model returned {_rc(rc.modelled)}, this kernel {_rc(host)} "
                               f"(logged {_rc(c.ret)}): the model differs from a real kernel here")
    if host == c.ret:
        return "agree", ""
    why = f"{rc.mismatch.why}; this kernel agrees with the model"
    if host == 0:
        why += " and, unlike the replayed model, applied the call, so from here the host holds what the log refused"
    return "explained", why


def on_host(report, host, model_name="", host_name=""):
    """Run the ioctls of ``report`` (a ``ReplayReport``) on ``host``; returns a ``ThreeWay``.

    Models ``KVM_SET_USER_MEMORY_REGION`` as QEMU issued it, on the model and
    on the kernel side by side (see the module doc).
    """
    calls, files = [], {}
    for rc in report.calls:
        c = rc.call
        if rc.outside:
            calls.append(HostCall(rc.number, c.line, c.ret, None, None, "not run", rc.outside))
            continue
        if rc.implied == DELETE:
            host.set_user_memory_region(c.slot, c.flags, c.guest_phys_addr, 0, c.userspace_addr)
        got = _issue(host, c, files)
        calls.append(HostCall(rc.number, c.line, c.ret, rc.modelled, got, *_verdict(rc, got)))
    return ThreeWay(calls, model_name, host_name)


def _issue(host, call, files):
    """The call as QEMU made it: ``KVM_SET_USER_MEMORY_REGION2`` with a real guest_memfd in its era.

    The log does not show ``KVM_CREATE_GUEST_MEMFD``, so each guest_memfd fd it
    names gets a host file of ``GMEM_FILE_SIZE`` bytes when first seen (as the
    model's replay does).
    """
    if not call.uses_guest_memfd:
        return host.set_user_memory_region(*call.args)
    if call.guest_memfd not in files:
        files[call.guest_memfd] = host.create_guest_memfd(GMEM_FILE_SIZE)
    fd = max(files[call.guest_memfd], 0)
    return host.set_user_memory_region2(*call.args, guest_memfd=fd, guest_memfd_offset=call.guest_memfd_offset or 0)
