"""Stepper latency: one ``step()`` (engine step + widget update + figure redraw), 32 slots.

Target: median <= 150 ms. Prints the median and 90th percentile per step of a
MOVE and a DELETE, and the ratio to a bare engine step measured in the same
process. Run: ``.venv/bin/python benchmarks/stepper_latency.py``.
"""

import statistics
import time

import kvmviz
from kvmviz.viz import Stepper

SLOTS = 32


def make_vm():
    vm = kvmviz.VM()
    for i in range(SLOTS):
        vm.set_user_memory_region(i, 0, i * 0x200000, 0x100000, 0x7f0000000000 + i * 0x10000000)
    return vm


CALLS = ((5, 0, 0x40000000, 0x100000, 0x7f0050000000),      # MOVE slot 5
         (7, 0, 7 * 0x200000, 0, 0x7f0070000000))            # DELETE slot 7


def stepper_times():
    st = Stepper(make_vm())
    times = []
    for call in CALLS:
        st.begin(*call)
        while True:
            t = time.perf_counter()
            more = st.step()
            times.append(time.perf_counter() - t)
            if not more:
                times.pop()
                break
    return times


def engine_times():
    vm = make_vm()
    times = []
    for call in CALLS:
        upd = vm.begin_set_user_memory_region(*call)
        while upd.result is None:
            t = time.perf_counter()
            next(upd)
            times.append(time.perf_counter() - t)
    return times


def main():
    stepper_times()                     # warm up fonts and caches of matplotlib
    st = stepper_times()
    eng = engine_times()
    med, p90 = statistics.median(st), statistics.quantiles(st, n=10)[-1]
    print(f"Stepper step + redraw, {SLOTS} slots, {len(st)} steps (MOVE + DELETE):")
    print(f"  median {med * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, max {max(st) * 1000:.1f} ms "
          f"(target: median <= 150 ms) -> {'OK' if med <= 0.150 else 'TOO SLOW'}")
    print(f"  bare engine step median {statistics.median(eng) * 1e6:.0f} us; "
          f"ratio stepper/engine {med / statistics.median(eng):.0f}x")


if __name__ == "__main__":
    main()
