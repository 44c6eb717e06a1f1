"""``kvmviz replay FILE [--step N] [--host | --kernel K --address-spaces N]``: replay a QEMU memslot trace.

Prints the summary and the mismatches (``ReplayReport.summary``); ``--step N``
explains call N in plain text (``explain``). ``FILE`` may also name a trace
shipped with kvmviz (``kvmviz replay qemu-boot-smm.log``). The model is
``VM(kernel=K, address_spaces=N)`` (defaults: the newest modelled kernel, two
address spaces; a log that binds guest_memfd gets a VM with private memory);
``--host`` models the running kernel instead (``kvmviz.host.model``) and also
runs every call on a fresh real ``HostVM`` (``threeway``): one line per call
with the logged, model and host return codes, and a summary of agreements
and explained differences. Bad input, or ``--host`` without a usable
``/dev/kvm``, or a file with no trace record, gives a one-line message and exit
status 2, never a traceback; ``--host`` exits 1 when the model and the real
kernel differ on a call the log does not explain.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="kvmviz")
>>> add_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["replay", "qemu-vga-dirty-log.log", "--step", "3"])
>>> args.step, args.func is run
(3, True)
>>> print(_model(parser.parse_args(["replay", "x.log", "--kernel", "6.12", "--address-spaces", "1"])))
kernel 6.12, 1 address space(s)
"""

import argparse
import os
import sys

from ..inputs import TRACE_LIMIT, read_text
from ..engine.kernels import DEFAULT_KERNEL, KERNELS, has
from ..engine.vm import VM
from .qemu import parse_qemu
from .replay import explain, load, replay, shipped
from .threeway import on_host


def add_parser(subparsers):
    """Register the ``replay`` subcommand on an argparse ``subparsers`` object."""
    p = subparsers.add_parser("replay", help="replay a QEMU -trace kvm_set_user_memory log",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="the trace log, or the name of a shipped trace: " + ", ".join(shipped()))
    p.add_argument("--step", type=int, metavar="N", help="explain call N (counted from 1) in plain text")
    p.add_argument("--host", action="store_true", help="model the running kernel and replay every call on "
                                                       "the real /dev/kvm too (three-way report)")
    p.add_argument("--kernel", choices=list(KERNELS), help=f"modelled kernel version (default {DEFAULT_KERNEL})")
    p.add_argument("--address-spaces", type=int, choices=(1, 2), metavar="N",
                   help="memslot address spaces: 2 (x86 with SMM, the default) or 1 (no SMM)")
    p.set_defaults(func=run)


class _Model:
    """The model VM the options ask for, and how to name it."""

    def __init__(self, vm, name):
        self.vm, self.name = vm, name

    def __str__(self):
        return self.name


def _model(args, gmem=False):
    if args.host:
        if args.kernel or args.address_spaces:
            raise ValueError("--host models the running kernel; drop --kernel/--address-spaces")
        from ..host.model import describe, model_for_host
        vm = model_for_host(history=False)
        return _Model(vm, describe(vm))
    private = gmem and has(args.kernel or DEFAULT_KERNEL, "guest_memfd") and args.address_spaces in (None, 1)
    vm = VM(kernel=args.kernel, address_spaces=args.address_spaces, private_mem=private, history=False)
    return _Model(vm, f"kernel {vm.kernel}, {vm.address_spaces} address space(s)"
                      + (", private memory (the log binds guest_memfd)" if private else ""))


def _need_kvm():
    from ..host import available
    ok, why = available()
    if not ok:
        raise OSError(f"--host needs a usable /dev/kvm: {why}")


def _three_way(report, model, out):
    from ..host import HostVM
    with HostVM(memory=1 << 12) as host:
        result = on_host(report, host, str(model), f"Linux {os.uname().release} (/dev/kvm, a fresh VM)")
    print(result.table(), file=out)
    print(result.summary(), file=out)
    return result


def _read(name):
    if os.path.exists(name):
        return read_text(name, TRACE_LIMIT, "trace")
    if name in shipped():
        return load(name)
    raise FileNotFoundError(f"no such file: {name} (shipped traces: {', '.join(shipped())})")


def run(args, out=None):
    """Run the subcommand for parsed ``args``; returns the exit status."""
    out = out or sys.stdout
    try:
        text = _read(args.file)
        if args.host:
            _need_kvm()
        calls = parse_qemu(text)
        if not calls.calls:
            raise ValueError(f"{args.file} holds no kvm_set_user_memory records "
                             f"({len(calls.unparsed)} line(s) not understood)")
        model = _model(args, any(c.uses_guest_memfd for c in calls.calls))
        report = replay(calls, model.vm, keep_steps=False)
        if args.step is not None:
            print(explain(report, args.step), file=out)
            return 0
        print(f"model: {model}", file=out)
        print(report.summary(), file=out)
        if args.host and _three_way(report, model, out).unexplained:
            return 1
    except (OSError, IndexError, ValueError) as e:
        print(f"kvmviz replay: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    """``python -m kvmviz.trace.cli FILE [--step N]``, for use without ``kvmviz.cli``."""
    parser = argparse.ArgumentParser(prog="kvmviz")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["replay", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
