"""Replay speed: calls per second on a generated 100,000-call QEMU trace.

Generates the trace (``kvmviz.trace.generate``: a large VM with 250 DIMMs,
VGA dirty-log toggles, DIMM unplug/replug, option ROMs, migrations), prints
it as QEMU's 2024+ log would be, then times, in one process:

- parsing the text (``parse_qemu``),
- replaying it (``replay``, history off, per-call steps dropped),
- the baseline: the same ioctls straight into ``VM.set_user_memory_region``
  (history off), so the ratio is the cost of the replay bookkeeping.

Times are CPU seconds of this process (``time.process_time``), so other work
on a shared machine does not skew them.

Usage: ``.venv/bin/python benchmarks/replay_speed.py [--calls N]``
"""

import argparse
import time

from kvmviz import VM, KvmError
from kvmviz.trace import parse_qemu, replay
from kvmviz.trace.generate import generate, text


def _timed(fn):
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def _baseline(calls):
    vm = VM(history=False)
    for c in calls:
        try:
            vm.set_user_memory_region(*c.args)
        except KvmError:
            pass
    return vm


def measure(n):
    """Generate an ``n``-call trace, parse and replay it; CPU seconds per stage and the log's size."""
    log = text(generate(n))
    trace, t_parse = _timed(lambda: parse_qemu(log))
    report, t_replay = _timed(lambda: replay(trace, keep_steps=False))
    vm, t_base = _timed(lambda: _baseline(trace.calls))
    assert len(trace.calls) == n and not trace.unparsed and not report.mismatches
    assert vm.generations() == report.vm.generations()
    return dict(report=report, log_bytes=len(log), parse=t_parse, replay=t_replay, baseline=t_base)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    n = parser.parse_args().calls
    m = measure(n)
    report = m["report"]
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items() if v)
    print(f"generated trace: {n} calls, {m['log_bytes'] / 1e6:.1f} MB of log text; {counts}; "
          f"peak {report.peak_slots} slots")
    print(f"{'stage':<38}{'CPU s':>7}{'calls/s':>10}")
    for stage, t in (("parse_qemu", m["parse"]), ("replay (history off, no steps)", m["replay"]),
                     ("baseline: raw set_user_memory_region", m["baseline"]),
                     ("parse + replay", m["parse"] + m["replay"])):
        print(f"{stage:<38}{t:7.2f}{n / t:10,.0f}")
    print(f"replay / baseline time ratio: {m['replay'] / m['baseline']:.2f}")


if __name__ == "__main__":
    main()
