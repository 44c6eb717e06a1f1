"""``kvmviz capture SCENARIO [-o FILE]``: record a live memslot trace from QEMU on /dev/kvm.

Runs ``capture.capture(SCENARIO)`` and writes the trace (header included) to
FILE, or to standard output with ``-o -`` (the default); a one-line summary of
the calls goes to standard error. A capture that fails (QEMU missing,
/dev/kvm unusable, QMP error, timeout) prints one line and exits with status
2, leaving no QEMU process and no file behind; Ctrl-C exits with 130.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="kvmviz")
>>> add_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["capture", "hotplug", "-o", "hotplug.log"])
>>> args.scenario, args.output, args.timeout, args.func is run
('hotplug', 'hotplug.log', 60.0, True)
"""

import os
import sys
import time

from .capture import SCENARIOS, CaptureError, capture
from .replay import COUNT_KEYS, replay


def add_parser(subparsers):
    """Register the ``capture`` subcommand on an argparse ``subparsers`` object."""
    p = subparsers.add_parser("capture", help="capture a memslot trace from QEMU on the real /dev/kvm",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS),
                   help="; ".join(f"{name}: {s.summary}" for name, s in sorted(SCENARIOS.items())))
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write the trace ('-': stdout)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="give up after S seconds (default 60)")
    p.set_defaults(func=run)


def summary(text, seconds):
    """One line: how many calls the trace holds, by change type, and how long it took.

    >>> summary("kvm_set_user_memory Slot#1 flags=0x0 gpa=0x0 size=0x1000 ua=0x7f0000000000 ret=0", 0.5)
    '1 kvm_set_user_memory calls (CREATE 1) captured in 0.5 s'
    """
    report = replay(text, keep_steps=False)
    counts = ", ".join(f"{k} {report.counts[k]}" for k in COUNT_KEYS if report.counts[k])
    return f"{len(report.calls)} kvm_set_user_memory calls ({counts}) captured in {seconds:.1f} s"


def run(args, out=None):
    """Run the subcommand for parsed ``args``; returns the exit status."""
    out = out or sys.stdout
    start = time.monotonic()
    folder = os.path.dirname(os.path.abspath(args.output))
    if args.output != "-" and not os.access(folder, os.W_OK):
        print(f"kvmviz capture: cannot write {args.output}: {folder} is not a writable folder", file=sys.stderr)
        return 2
    try:
        text = capture(args.scenario, timeout=args.timeout)
    except CaptureError as e:
        print(f"kvmviz capture: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvmviz capture: interrupted (QEMU stopped, nothing written)", file=sys.stderr)
        return 130
    if args.output == "-":
        out.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    print(f"kvmviz capture {args.scenario}: {summary(text, time.monotonic() - start)}"
          + ("" if args.output == "-" else f" -> {args.output}"), file=sys.stderr)
    return 0
