"""``kvmviz host-check``: the differential suite on this machine's kernel, as a table.

Runs ``kvmviz.host.check.run`` (every case of ``CASES`` plus ``--random N``
seeded random sequences) and prints, per case, the calls and probes
compared, the matches and the differences (each with the call, the model's
and the kernel's result and the rule the model applied), then the kernel
release and the model configuration chosen by ``model_for_host``.
``--json`` prints the same as one JSON object. Exit status: 0 when all
match, 1 on a difference, 2 when the KVM device is unusable (with why).

>>> import io, argparse
>>> parser = argparse.ArgumentParser(prog="kvmviz")
>>> add_parser(parser.add_subparsers(dest="command"))
>>> out = io.StringIO()
>>> run(parser.parse_args(["host-check", "--device", "/nonexistent/kvm"]), out), out.getvalue().split(":")[0]
(2, 'kvmviz host-check')
"""

import itertools
import json
import sys

from .check import CASES, random_case, run as run_suite
from .kvm import available


def add_parser(subparsers):
    """Register ``host-check`` on an argparse ``subparsers`` object."""
    p = subparsers.add_parser("host-check", help="check the model against this machine's /dev/kvm, call by call",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--random", type=int, metavar="N",
                   help="random call sequences of 30 calls each (default 100, or 0 with --case)")
    p.add_argument("--seed", type=int, default=0, help="first seed of the random sequences")
    p.add_argument("--case", action="append", choices=[c.name for c in CASES], metavar="NAME",
                   help="run only this case (repeatable): " + ", ".join(c.name for c in CASES))
    p.add_argument("--device", default="/dev/kvm", help="the KVM device (default /dev/kvm)")
    p.set_defaults(func=run)


def run(args, out):
    """Run the suite; print the table (or JSON); return 0, 1 or 2."""
    ok, why = available(args.device)
    if not ok:
        print(json.dumps({"error": why}) if args.json else f"kvmviz host-check: cannot use the real kernel: {why}",
              file=out)
        return 2
    sequences = (0 if args.case else 100) if args.random is None else args.random
    if not 0 <= sequences <= 100_000:
        print(f"kvmviz host-check: --random {sequences} is not in 0..100000", file=sys.stderr)
        return 2
    cases = [c for c in CASES if not args.case or c.name in args.case]
    cases += [random_case(args.seed + k) for k in range(sequences)]
    report = run_suite(cases=cases, path=args.device, progress=None if args.json else _progress(len(cases)))
    print(to_json(report) if args.json else table(report), file=out)
    return 1 if report.differences else 0


def _progress(total):
    """A stderr line per named case, so a long run (about a minute: 32764-slots is most of it) shows life."""
    counter = itertools.count(1)

    def show(result):
        n = next(counter)
        if not result.name.startswith("random-") or n == total:
            print(f"  [{n}/{total}] {result.name}: {len(result.differences)} difference(s)",
                  file=sys.stderr, flush=True)
    return show


def table(report):
    """The plain-text report: caps, model, one row per case (random ones summed), differences."""
    c = report.caps
    lines = ["kvmviz host-check: the model against this machine's kernel, call by call",
             f"kernel: Linux {c.release} (KVM API {c.api_version}; NR_MEMSLOTS {c.nr_memslots}, "
             f"MULTI_ADDRESS_SPACE {c.multi_address_space}, USER_MEMORY2 {c.user_memory2}, "
             f"GUEST_MEMFD {c.guest_memfd}, READONLY_MEM {c.readonly_mem})",
             f"model:  {report.model}", "",
             f"{'case':<16}{'calls':>8}{'probes':>8}{'matches':>9}{'differences':>13}"]
    for name, calls, probes, matches, diffs in _rows(report):
        lines.append(f"{name:<16}{calls:>8}{probes:>8}{matches:>9}{diffs:>13}")
    total = report.comparisons
    diffs = report.differences
    lines.append(f"{'total':<16}{report.calls:>8}{total - report.calls:>8}{total - len(diffs):>9}{len(diffs):>13}")
    lines.append("")
    if diffs:
        lines.append(f"{len(diffs)} difference(s):")
        lines += [f"  {d}" for d in diffs]
    else:
        named = sum(not r.name.startswith("random-") for r in report.results)
        lines.append(f"all {total} comparisons match ({named} cases and {len(report.results) - named} random "
                     f"sequences, {report.seconds:.1f} s)")
    return "\n".join(lines)


def _rows(report):
    rows, rand = [], [0, 0, 0, 0, 0]
    for r in report.results:
        row = (r.calls, r.probes, r.matches, len(r.differences))
        if r.name.startswith("random-"):
            rand = [rand[0] + 1] + [a + b for a, b in zip(rand[1:], row)]
        else:
            rows.append((r.name, *row))
    if rand[0]:
        rows.append((f"random x{rand[0]}", *rand[1:]))
    return rows


def to_json(report):
    """The report as one JSON object (caps, model, cases, differences, seconds)."""
    return json.dumps({
        "kernel": report.caps._asdict(), "model": report.model, "seconds": round(report.seconds, 2),
        "calls": report.calls, "comparisons": report.comparisons,
        "cases": [{"name": r.name, "calls": r.calls, "probes": r.probes, "matches": r.matches,
                   "differences": len(r.differences)} for r in report.results],
        "differences": [{"case": d.case, "index": d.index, "item": d.item, "model": str(d.model),
                         "kernel": str(d.host), "rule": d.rule} for d in report.differences],
    }, indent=1)
