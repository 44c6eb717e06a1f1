"""Explorer speed: distinct states, transitions and states per second of ``kvmviz check``.

For each change type (CREATE; DELETE, MOVE, FLAGS_ONLY and a MOVE whose
prepare fails, each after a CREATE) and each variant (``merged``, ``seed``
and every shipped broken one) it runs ``kvmviz.check.explore`` with 0, 1 and
2 vCPU readers and prints the distinct states, the transitions tried, the
wall time, states per second and the verdict: "ok" (no violation within the
bound) or the shortest counterexample's length and rule ("setup" when the
setup CREATE already breaks the variant). States/s is the figure to compare
between runs on one machine; the state counts are exact and the same on any
machine; the last line gives the spread of states/s over the rows with
readers, measured in the same run.

    .venv/bin/python benchmarks/explore_speed.py [--readers 0,1,2] [--variants merged,seed] [--changes DELETE,MOVE]
"""

import argparse
import time

from kvmviz import variants
from kvmviz.check import explore
from kvmviz.review import CASES

HEAD = f"{'variant':<19} {'change':<19} {'r':>1} {'states':>7} {'trans':>8} {'s':>6} {'st/s':>6}  verdict"


def row(variant, title, setup, call, readers):
    """One line of the table; returns it and the states per second."""
    start = time.perf_counter()
    r = explore([call], setup or None, variant=variant, readers=readers)
    took = time.perf_counter() - start
    cx = r.counterexample
    verdict = ("ok" if cx is None else "setup breaks: " + (cx.rule or "?") if not cx.length
               else f"{cx.length} actions, {cx.rule}")
    rate = r.states / took if took else 0
    return (f"{variant:<19} {title[:19]:<19} {readers:>1} {r.states:>7} {r.transitions:>8} {took:>6.2f} "
            f"{rate:>6.0f}  {verdict}"), rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", default="0,1,2", help="reader counts, comma-separated")
    parser.add_argument("--variants", default=",".join(variants.names()), help="variants, comma-separated")
    parser.add_argument("--changes", default=",".join(t for t, _, _ in CASES),
                        help="cases of kvmviz.review.CASES, comma-separated")
    args = parser.parse_args()
    wanted = args.changes.split(",")
    print(HEAD)
    rates = []
    for variant in args.variants.split(","):
        for title, setup, call in CASES:
            if title not in wanted:
                continue
            for readers in map(int, args.readers.split(",")):
                line, rate = row(variant, title, setup, call, readers)
                rates += [rate] if readers and rate else []
                print(line, flush=True)
    if rates:
        print(f"states/s with readers: {min(rates):.0f} to {max(rates):.0f} (fastest / slowest = "
              f"{max(rates) / min(rates):.1f})")


if __name__ == "__main__":
    main()
