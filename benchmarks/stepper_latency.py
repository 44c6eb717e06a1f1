"""Stepper latency: one ``step()`` (engine replay + widget update + SVG redraw), click to picture.

Target: median <= 150 ms. Prints the median and 90th percentile per step of a
MOVE and a DELETE with 3 slots and 32 slots in the object picture (the
default view; 00-start-here has 1 slot) and 32 slots in the gfn-range view
("sets", matplotlib lays out every tick and slot label; steps that change
nothing it shows reuse the cached drawing, so its line counts the redraws
only), and the ratio to a bare engine step measured in the same process.
Wall time depends on the machine's load (printed); the CPU time of this
process beside it does much less. The time from a click to the new picture
in the browser adds the widget message and the SVG parse (a few ms; the
browser test prints it). Run: ``.venv/bin/python benchmarks/stepper_latency.py``.
"""

import os
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


def stepper_times(slots=SLOTS, view="objects", redraws_only=False):
    """(wall, cpu) seconds per step of ``CALLS`` in a Stepper showing ``view``."""
    st = Stepper(make_vm(slots))
    st.view.value = view
    times = []
    for call in CALLS:
        st.begin(*call)
        while True:
            before = st.figure.value
            t, c = time.perf_counter(), time.process_time()
            more = st.step()
            if not more:
                break
            if not redraws_only or st.figure.value != before:
                times.append((time.perf_counter() - t, time.process_time() - c))
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
    eng = statistics.median(engine_times())
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for slots, view in ((3, "objects"), (SLOTS, "objects"), (SLOTS, "sets")):
        st = stepper_times(slots, view, redraws_only=view == "sets")
        wall, cpu = [t[0] for t in st], [t[1] for t in st]
        med, p90 = statistics.median(wall), statistics.quantiles(wall, n=10)[-1]
        what = "redraws" if view == "sets" else "steps"
        print(f"Stepper step + redraw, {slots} slots ({view}), {len(st)} {what} (MOVE + DELETE):")
        print(f"  wall median {med * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, max {max(wall) * 1000:.1f} ms; "
              f"CPU median {statistics.median(cpu) * 1000:.1f} ms, p90 {statistics.quantiles(cpu, n=10)[-1] * 1000:.1f}"
              f" ms (target: median <= 150 ms) -> {'OK' if med <= 0.150 else 'TOO SLOW'}")
        print(f"  ratio to a bare engine step ({eng * 1e6:.0f} us, {SLOTS} slots): {med / eng:.0f}x")


if __name__ == "__main__":
    main()
