"""``kvmviz replay FILE [--step N]``: replay a QEMU memslot trace from the shell.

Prints the summary and the mismatches (``ReplayReport.summary``); ``--step N``
explains call N in plain text (``explain``). ``FILE`` may also name a trace
shipped with kvmviz (``kvmviz replay qemu-boot-smm.log``). Bad input gives a
one-line message and exit status 2, never a traceback.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="kvmviz")
>>> add_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["replay", "qemu-vga-dirty-log.log", "--step", "3"])
>>> args.step, args.func is run
(3, True)
"""

import argparse
import os
import sys

from .replay import explain, load, replay, shipped


def add_parser(subparsers):
    """Register the ``replay`` subcommand on an argparse ``subparsers`` object."""
    p = subparsers.add_parser("replay", help="replay a QEMU -trace kvm_set_user_memory log",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="the trace log, or the name of a shipped trace: " + ", ".join(shipped()))
    p.add_argument("--step", type=int, metavar="N", help="explain call N (counted from 1) in plain text")
    p.set_defaults(func=run)


def _read(name):
    if os.path.exists(name):
        with open(name, encoding="utf-8", errors="replace") as f:
            return f.read()
    if name in shipped():
        return load(name)
    raise FileNotFoundError(f"no such file: {name} (shipped traces: {', '.join(shipped())})")


def run(args, out=None):
    """Run the subcommand for parsed ``args``; returns the exit status."""
    out = out or sys.stdout
    try:
        report = replay(_read(args.file), keep_steps=False)
        if args.step is None:
            print(report.summary(), file=out)
        else:
            print(explain(report, args.step), file=out)
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
