"""Stepper latency: one ``step()`` (engine replay + widget update + SVG redraw), click to picture.

Target: median <= 150 ms. Prints the median and 90th percentile per step of a
MOVE and a DELETE with 3 slots and 32 slots in the object picture (the
default view; 00-start-here has 1 slot) and 32 slots in the gfn-range view
("sets", matplotlib lays out every tick and slot label), and the ratio to a
bare engine step measured in the same process. The time from a click to the
new picture in the browser adds the widget message and the SVG parse (a few
ms). Run: ``.venv/bin/python benchmarks/stepper_latency.py``.
"""

import statistics
import time

import kvmviz
from kvmviz.viz import Stepper

SLOTS = 32


def make_vm(slots=SLOTS):
    vm = kvmviz.VM()
    for i in range(slots):
        vm.set_user_memory_region(i, 0, i * 0x200000, 0x100000, 0x7f0000000000 + i * 0x10000000)
    return vm


CALLS = ((1, 0, 0x40000000, 0x100000, 0x7f0010000000),      # MOVE slot 1
         (2, 0, 2 * 0x200000, 0, 0x7f0020000000))            # DELETE slot 2


def stepper_times(slots=SLOTS, view="objects"):
    st = Stepper(make_vm(slots))
    st.view.value = view
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
    stepper_times(3)                    # warm up fonts and caches of matplotlib
    eng = engine_times()
    for slots, view in ((3, "objects"), (SLOTS, "objects"), (SLOTS, "sets")):
        st = stepper_times(slots, view)
        med, p90 = statistics.median(st), statistics.quantiles(st, n=10)[-1]
        print(f"Stepper step + redraw, {slots} slots ({view}), {len(st)} steps (MOVE + DELETE):")
        print(f"  median {med * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, max {max(st) * 1000:.1f} ms "
              f"(target: median <= 150 ms) -> {'OK' if med <= 0.150 else 'TOO SLOW'}")
        print(f"  ratio to a bare engine step ({statistics.median(eng) * 1e6:.0f} us, {SLOTS} slots): "
              f"{med / statistics.median(eng):.0f}x")


if __name__ == "__main__":
    main()
