"""memslot_perf_test, modelled: array (5.15) vs tree (5.17) memslots, beside the series' table.

Runs the memslot-bookkeeping part of the kernel selftest's workloads
(reference §8.2) on both kvmviz designs and prints wall time (median of
repeats, all in this one process) and the engine's exact cost counters next
to the v4 cover letter's figures (reference §8.1):

- setup: create slots 1..N-1 over the default area (512 MiB + 4 KiB at GPA
  0x10000000; slot 0, the default region, exists before the clock starts).
- move active / move inactive: one iteration MOVEs the last slot to
  MEM_GPA + MEM_SIZE and back (two ioctls). The model has no guest, so both
  rows get the same model figure.
- unmap / unmap 2M: one iteration unmaps the 128 MiB test area (both halves)
  in 4 KiB or 2 MiB madvise calls, each split at slot boundaries as the test
  does; each call is one MMU-notifier invalidate_range_start/end pair (hva walks).
- map: one iteration is the guest faulting in every page of the 32 MiB area
  (one gfn lookup per page) while the host unmaps the other half, one
  madvise call per slot-sized piece (reference §8.2: map is not only lookups).
  At most 8194 slots, as in the test.

Where one iteration would take minutes (the array's O(n) notifier walks at
32k slots), an evenly spaced, deterministic subset of each kind of call runs
and time and costs are scaled up; the array's O(n^2) slot setup at 32k slots
is estimated from real CREATEs timed at nine sizes (``setup_sampled``;
``--setup-budget inf`` runs it for real, for many minutes). Such cells are
marked with ``~``. The untimed preparation of the array's big layouts is
built directly (``bulk_load``), which gives the state the ioctls give.

    .venv/bin/python benchmarks/memslot_perf.py            # full run (several minutes)
    .venv/bin/python benchmarks/memslot_perf.py --quick    # N = 10, 100, 509
    .venv/bin/python benchmarks/memslot_perf.py --write-costs   # refresh kvmviz/viz/scaling_costs.json
"""

import argparse
import bisect
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import kvmviz
from kvmviz.engine.constants import KVM_ADDRESS_SPACE_NUM
from kvmviz.engine.array.memslots import ARCH, BASE, ID, new_entry

PAGE = 4096
MEM_GPA = 0x10000000
MEM_SIZE = 512 * 2**20 + PAGE                 # default test area (the first page is the sync area)
MAP_SIZE = 32 * 2**20 + PAGE                  # map test area: at most 8193 one-page slots
UNMAP_SIZE = 128 * 2**20 + PAGE               # unmap test area
CHUNK_2M = 2 * 2**20 // PAGE                  # pages per "unmap chunked" madvise
HVA_TEST = 0x7f0000000000                     # test memory, one contiguous mapping
HVA_SLOT0 = 0x7e0000000000                    # default region of slot 0
SLOT0_SIZE = 2 * 2**20                        # an assumption: a small default region at gpa 0
MAP_MAX_SLOTS = 8194

DESIGNS = ("array", "tree")
TESTS = ("map", "unmap", "unmap 2M", "move active", "move inactive", "setup")
#: reference §8.1 (v4 cover letter, Xeon 8167M): (slots, test) -> (array s, tree s)
SERIES = {
    (509, "map"): (0.0232, 0.0223), (509, "unmap"): (0.0724, 0.0315), (509, "unmap 2M"): (0.00155, 0.000869),
    (509, "move active"): (0.000101, 0.0000792), (509, "move inactive"): (0.000108, 0.0000847),
    (509, "setup"): (0.0135, 0.00803),
    (100, "map"): (0.0195, 0.0191), (100, "unmap"): (0.0374, 0.0312), (100, "unmap 2M"): (0.000470, 0.000447),
    (100, "move active"): (0.0000956, 0.0000800), (100, "move inactive"): (0.000101, 0.0000840),
    (100, "setup"): (0.00260, 0.00174),
    (50, "map"): (0.0192, 0.0190), (50, "unmap"): (0.0339, 0.0311), (50, "unmap 2M"): (0.000399, 0.000395),
    (50, "move active"): (0.0000999, 0.0000854), (50, "move inactive"): (0.0000992, 0.0000826),
    (50, "setup"): (0.00141, 0.000990),
    (30, "map"): (0.0192, 0.0190), (30, "unmap"): (0.0325, 0.0310), (30, "unmap 2M"): (0.000373, 0.000373),
    (30, "move active"): (0.000100, 0.0000865), (30, "move inactive"): (0.000106, 0.0000918),
    (30, "setup"): (0.000989, 0.000775),
    (10, "map"): (0.0192, 0.0186), (10, "unmap"): (0.0313, 0.0310), (10, "unmap 2M"): (0.000348, 0.000351),
    (10, "move active"): (0.000110, 0.0000948), (10, "move inactive"): (0.000111, 0.0000933),
    (10, "setup"): (0.000342, 0.000283),
    (32764, "map"): (0.200, 0.0541), (32764, "unmap"): (3.88, 0.0351), (32764, "unmap 2M"): (3.88, 0.0348),
    (32764, "move active"): (0.00142, 0.0000786), (32764, "move inactive"): (0.00148, 0.0000880),
    (32764, "setup"): (16.1, 0.59),
}
#: Counters of elementary operations (one tree node, hash op, array entry or slot copy each).
WORK = ("gfn_tree_nodes", "hva_tree_nodes", "hash_ops", "slots_copied", "entries_shifted",
        "array_entries_scanned", "array_search_probes", "array_index_ops")
COSTS_JSON = Path(__file__).resolve().parent.parent / "kvmviz" / "viz" / "scaling_costs.json"


def log(msg):
    """Progress on stderr, so stdout keeps only the table."""
    print(msg, file=sys.stderr, flush=True)


class Layout:
    """The test's memslots: slot 0 plus slots 1..n-1 sharing ``size`` bytes at MEM_GPA.

    As ``prepare_vm`` in memslot_perf_test: equal shares, the last slot takes
    the remainder; hvas are one contiguous mapping.
    """

    def __init__(self, nslots, size):
        pages = size // PAGE
        per = pages // (nslots - 1)
        if per < 1:
            raise ValueError(f"{nslots} slots do not fit {size:#x} bytes")
        self.starts = [MEM_GPA + i * per * PAGE for i in range(nslots - 1)]
        self.sizes = [per * PAGE] * (nslots - 2) + [(pages - per * (nslots - 2)) * PAGE]
        self.nslots = nslots

    def region(self, k):
        """``(slot, flags, gpa, size, hva)`` of test slot ``k`` (slot id k + 1)."""
        gpa = self.starts[k]
        return (k + 1, 0, gpa, self.sizes[k], HVA_TEST + gpa - MEM_GPA)

    def gpa2hva(self, gpa):
        """``vm_gpa2hva``: the hva and the bytes left in the slot from ``gpa``."""
        k = bisect.bisect_right(self.starts, gpa) - 1
        return HVA_TEST + gpa - MEM_GPA, self.starts[k] + self.sizes[k] - gpa


def new_vm(design):
    """A VM with slot 0 (the default region); history off, as a benchmark needs."""
    vm = kvmviz.VM(implementation=design, history=False)
    vm.set_user_memory_region(0, 0, 0, SLOT0_SIZE, HVA_SLOT0)
    return vm


def setup(design, layout, what):
    """Create the test slots one ioctl each; returns (vm, seconds, cost)."""
    vm = new_vm(design)
    before, n = dict(vm.cost), layout.nslots - 1
    start = last_note = time.perf_counter()
    for k in range(n):
        vm.set_user_memory_region(*layout.region(k))
        if k % 512 == 511 and time.perf_counter() - last_note > 5:
            last_note = time.perf_counter()
            log(f"    {what}: {design} {k + 1}/{n} slots created ({last_note - start:.0f} s)")
    return vm, time.perf_counter() - start, _delta(vm.cost, before)


def bulk_load(vm, layout, count):
    """Untimed preparation: the state ``count`` CREATE ioctls of test slots leave.

    The tree runs the real ioctls (fast enough). For the array, whose CREATEs
    cost O(n) each, the sorted structure, ``id_to_index``, counters and
    generation are built directly; ``tests/test_array.py`` checks that this
    equals the state the ioctls produce.
    """
    if vm.implementation != "array":
        for k in range(count):
            vm.set_user_memory_region(*layout.region(k))
        return
    s, entries = vm.active_set(0), []
    for k in range(count):
        slot, flags, gpa, size, hva = layout.region(k)
        vm.uid += 1
        entry = new_entry(uid=vm.uid, id=slot, base_gfn=gpa >> 12, npages=size >> 12, flags=flags,
                          userspace_addr=hva)
        entry[ARCH] = vm.alloc("arch", (size >> 12) * 8)
        entries.append(tuple(entry))
    s.memslots = sorted(s.memslots + entries, key=lambda e: -e[BASE])
    for i, entry in enumerate(s.memslots):
        s.id_to_index[entry[ID]] = i
    s.used_slots = len(s.memslots)
    s.generation += KVM_ADDRESS_SPACE_NUM * count
    vm.swaps = (vm.swaps[0] + count,) + vm.swaps[1:]
    vm.srcu.seq += count
    vm.calls += count


def setup_sampled(design, layout, points=8, creates=16):
    """Estimate a slot setup too slow to run: time real CREATEs at ``points`` sizes.

    At each size (bulk-loaded first, untimed) ``creates`` real ioctls run;
    the median per-CREATE time and the mean costs, linear in n for the array, are integrated
    over 0..n-1 by the trapezoid rule. Returns (vm at full size, seconds, cost).
    """
    n = layout.nslots - 1
    xs, ts, costs = [], [], []
    for k in range(points + 1):
        done = min(n - creates, round(n * k / points))
        vm = new_vm(design)
        bulk_load(vm, layout, done)
        before, each = dict(vm.cost), []
        for j in range(done, done + creates):
            t0 = time.perf_counter()
            vm.set_user_memory_region(*layout.region(j))
            each.append(time.perf_counter() - t0)
        ts.append(statistics.median(each))
        costs.append({c: v / creates for c, v in _delta(vm.cost, before).items()})
        xs.append(done)
        log(f"    setup (sampled): {design} {creates} CREATEs at {done} slots: {ts[-1] * 1e3:.2f} ms each")
        del vm
        gc.collect()
    def integral(ys):      # sum over sizes 0..n-1; the last few sizes take the last value
        return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(points)) + (n - xs[-1]) * ys[-1]
    names = {c for cost in costs for c in cost}
    cost = {c: round(integral([cost.get(c, 0) for cost in costs])) for c in names}
    vm = new_vm(design)
    bulk_load(vm, layout, n)
    return vm, integral(ts), cost


def _delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


# -- one iteration of each workload, as a list of calls ---------------------------
def unmap_calls(layout, first_page, count):
    """``test_memslot_do_unmap``: madvise calls split at slot ends, as (hva, end)."""
    calls, ctr = [], 0
    while ctr < count:
        hva, left = layout.gpa2hva(MEM_GPA + (first_page + ctr) * PAGE)
        npages = min(left // PAGE, count - ctr)
        calls.append(("unmap", hva, hva + npages * PAGE))
        ctr += npages
    return calls


def unmap_iteration(layout, chunk):
    """Both halves of the unmap area, ``chunk`` pages per madvise call."""
    half = (UNMAP_SIZE - PAGE) // PAGE // 2
    calls = []
    for base in (1, 1 + half):                  # page 0 is the sync area
        for ctr in range(0, half, chunk):
            calls += unmap_calls(layout, base + ctr, chunk)
    return calls


def map_iteration(layout):
    """Host unmaps one half (per slot piece) while the guest faults in the other."""
    half = (MAP_SIZE - PAGE) // PAGE // 2
    calls = []
    for unmapped, mapped in ((1 + half, 1), (1, 1 + half)):
        calls += unmap_calls(layout, unmapped, half)
        calls += [("lookup", (MEM_GPA >> 12) + mapped + p) for p in range(half)]
    return calls


def run_calls(vm, calls):
    """Perform the calls: notifier start+end pairs and gfn lookups."""
    start_mn, end_mn, lookup = (vm.mmu_notifier_invalidate_range_start,
                                vm.mmu_notifier_invalidate_range_end, vm.gfn_to_memslot)
    for call in calls:
        if call[0] == "unmap":
            start_mn(call[1], call[2])
            end_mn(call[1], call[2])
        elif lookup(call[1]) is None:
            raise AssertionError(f"gfn {call[1]:#x} is not in any slot")


def sample(vm, calls, budget):
    """Evenly spaced subset per kind of call so the estimated work fits ``budget``.

    Returns (subset, scale): multiply time and costs by ``scale``.
    """
    kinds = {}
    for call in calls:
        kinds.setdefault(call[0], []).append(call)
    subset, work_full, work_sub = [], 0, 0
    for group in kinds.values():
        before = work(vm.cost)
        run_calls(vm, group[:1])
        per = max(1, work(vm.cost) - before)
        stride = max(1, math.ceil(per * len(group) / budget))
        subset += group[::stride]
        work_full += per * len(group)
        work_sub += per * len(group[::stride])
    return subset, work_full / work_sub


def work(cost):
    """Elementary operations in a cost dict (the ``WORK`` counters)."""
    return sum(cost.get(k, 0) for k in WORK)


def enough(times, repeats):
    """Go on repeating: fewer than ``repeats`` runs, or under 0.5 s in all (at most 201 runs).

    Short iterations are repeated many times so that the median is not one
    scheduler hiccup on a shared machine.
    """
    return len(times) < repeats or (sum(times) < 0.5 and len(times) < 201)


def timed(vm, calls, repeats, budget):
    """Median seconds of one iteration of ``calls``, its cost, and the scale used."""
    subset, scale = sample(vm, calls, budget)
    times, cost = [], None
    while enough(times, repeats):
        before = dict(vm.cost)
        t0 = time.perf_counter()
        run_calls(vm, subset)
        times.append((time.perf_counter() - t0) * scale)
        if cost is None:          # the first pass: the same whatever the repeat count
            cost = {k: round(v * scale) for k, v in _delta(vm.cost, before).items()}
    return statistics.median(times), cost, scale


def move_iteration(vm, layout, repeats):
    """MOVE the last slot to MEM_GPA + MEM_SIZE and back; median seconds and cost."""
    slot, flags, gpa, size, hva = layout.region(layout.nslots - 2)
    times, cost = [], None
    while enough(times, repeats):
        before = dict(vm.cost)
        t0 = time.perf_counter()
        vm.set_user_memory_region(slot, flags, MEM_GPA + MEM_SIZE, size, hva)
        vm.set_user_memory_region(slot, flags, gpa, size, hva)
        times.append(time.perf_counter() - t0)
        cost = cost or _delta(vm.cost, before)
    return statistics.median(times), cost


# -- the measurements --------------------------------------------------------------
def measure(n, design, repeats, budget, results, setup_budget=1e8):
    """All workloads of one design at ``n`` slots, into ``results[(n, test, design)]``."""
    log(f"  {design}, {n} slots")
    default = Layout(n, MEM_SIZE)
    times, sampled = [], design == "array" and n * n > setup_budget
    while enough(times, repeats):
        vm, seconds, cost = setup_sampled(design, default) if sampled else setup(design, default, "setup")
        times.append(seconds)
        if seconds > 10 or sampled:
            break          # one O(n^2) run is measurement enough
    results[(n, "setup", design)] = dict(seconds=statistics.median(times), cost=cost, sampled=sampled)
    seconds, cost = move_iteration(vm, default, repeats)
    for test in ("move active", "move inactive"):
        results[(n, test, design)] = dict(seconds=seconds, cost=cost)
    assert kvmviz.check_invariants(vm) == []
    del vm
    gc.collect()
    layout = Layout(n, UNMAP_SIZE)
    vm = new_vm(design)
    bulk_load(vm, layout, n - 1)
    assert kvmviz.check_invariants(vm) == []
    for test, chunk in (("unmap", 1), ("unmap 2M", CHUNK_2M)):
        seconds, cost, scale = timed(vm, unmap_iteration(layout, chunk), repeats, budget)
        results[(n, test, design)] = dict(seconds=seconds, cost=cost, sampled=scale > 1)
    del vm
    gc.collect()
    nmap = min(n, MAP_MAX_SLOTS)
    layout = Layout(nmap, MAP_SIZE)
    vm = new_vm(design)
    bulk_load(vm, layout, nmap - 1)
    seconds, cost, scale = timed(vm, map_iteration(layout), repeats, budget)
    results[(n, "map", design)] = dict(seconds=seconds, cost=cost, sampled=scale > 1, slots=nmap)


# -- the table -----------------------------------------------------------------------
def _s(x):
    return f"{x:.3g}"


def _impr(before, after):
    return f"{(1 - after / before) * 100:.0f}%"


def table(results, ns):
    """The comparison table as text lines, plus the list of flagged rows."""
    head = (f"{'slots':>6} {'test':<13} | {'series array':>12} {'tree':>9} {'impr':>5} {'x':>6} | "
            f"{'model array':>11} {'tree':>9} {'impr':>5} {'x':>7} | {'work array':>11} {'tree':>9} | "
            f"{'bytes copied array':>18} {'tree':>6} | flag")
    lines, flags = [head, "-" * len(head)], []
    for n in ns:
        for test in TESTS:
            a, t = results[(n, test, "array")], results[(n, test, "tree")]
            sa, st = SERIES[(n, test)]
            series_x, model_x = sa / st, a["seconds"] / t["seconds"]
            off = model_x / series_x
            flag = f"{'model' if off > 1 else 'series'} ratio {max(off, 1 / off):.1f}x larger" \
                if off > 3 or off < 1 / 3 else ""
            if flag:
                flags.append((n, test, flag))
            mark = "~" if a.get("sampled") or t.get("sampled") else " "
            label = f"{test}{' @' + str(a['slots']) if a.get('slots', n) != n else ''}"
            lines.append(
                f"{n:>6} {label:<13} | {_s(sa):>12} {_s(st):>9} {_impr(sa, st):>5} {series_x:>5.1f}x | "
                f"{_s(a['seconds']):>11} {_s(t['seconds']):>9} {_impr(a['seconds'], t['seconds']):>5} "
                f"{model_x:>5.1f}x{mark}| {work(a['cost']):>11} {work(t['cost']):>9} | "
                f"{a['cost'].get('bytes_copied', 0):>18} {t['cost'].get('bytes_copied', 0):>6} | {flag}")
    return lines, flags


def targets(results, ns):
    """The issue's targets, checked on this run's figures."""
    out = []
    if 10 in ns and 32764 in ns:
        big, small = results[(32764, "move inactive", "tree")], results[(10, "move inactive", "tree")]
        r = big["seconds"] / small["seconds"]
        out.append(f"tree MOVE at 32764 / at 10 slots: {r:.2f}x (target <= 3x): {'met' if r <= 3 else 'MISSED'}")
    if 32764 in ns:
        r = results[(32764, "move inactive", "array")]["seconds"] / results[(32764, "move inactive", "tree")]["seconds"]
        out.append(f"array / tree MOVE at 32764: {r:.1f}x (target >= 10x): {'met' if r >= 10 else 'MISSED'}")
        r = results[(32764, "setup", "array")]["seconds"] / results[(32764, "setup", "tree")]["seconds"]
        out.append(f"array / tree slot setup at 32764: {r:.1f}x (target >= 20x): {'met' if r >= 20 else 'MISSED'}")
    return out


def write_costs(results, ns):
    """Store the deterministic work counts per design, workload and N for the plot."""
    rows = [dict(design=d, test=test, n=results[(n, test, d)].get("slots", n), work=work(results[(n, test, d)]["cost"]),
                 bytes_copied=results[(n, test, d)]["cost"].get("bytes_copied", 0),
                 sampled=bool(results[(n, test, d)].get("sampled")))
            for n in ns for test in TESTS if test != "move active" for d in DESIGNS]
    COSTS_JSON.write_text(json.dumps(rows, indent=1) + "\n")
    log(f"wrote {COSTS_JSON}")


def main(argv=None):
    """Run the workloads and print the table (see module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 10, 100, 509 and 3 repeats")
    ap.add_argument("--slots", type=int, nargs="+", help="slot counts to run (default: the series' six)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--budget", type=float, default=2e6,
                    help="elementary operations per measured iteration before sampling (default 2e6)")
    ap.add_argument("--setup-budget", type=float, default=1e8,
                    help="above N*N > this, the array's slot setup is sampled (default 1e8; inf: always real)")
    ap.add_argument("--write-costs", action="store_true", help=f"write {COSTS_JSON.name} for the plot")
    args = ap.parse_args(argv)
    ns = args.slots or ([10, 100, 509] if args.quick else [10, 30, 50, 100, 509, 32764])
    unknown = [n for n in ns if (n, "setup") not in SERIES]
    if unknown:
        ap.error(f"no series figures for {unknown}; choose from 10, 30, 50, 100, 509, 32764")
    repeats = args.repeats or (3 if args.quick else 7)
    results, t0 = {}, time.perf_counter()
    gc.disable()           # as timeit does: collector pauses are noise, not memslot work
    for n in ns:
        log(f"N = {n} ({time.perf_counter() - t0:.0f} s so far)")
        for design in DESIGNS:
            measure(n, design, repeats, args.budget, results, args.setup_budget)
            gc.collect()
    lines, flags = table(results, ns)
    print(f"memslot_perf_test, modelled: seconds per iteration (median of at least {repeats} runs, "
          "more until 0.5 s, at most 201; a setup over 10 s runs once); series = reference §8.1 (v4 cover letter, Xeon 8167M, array "
          "'before' vs tree 'after'); x = array / tree; work = elementary operations counted by the "
          "engine; ~ = sampled and scaled; map @8194 = run with 8194 slots")
    print("\n".join(lines))
    print()
    print("\n".join(targets(results, ns)))
    if flags:
        print(f"{len(flags)} row(s) where the model's array/tree ratio differs from the series' by more than "
              "3x; README.md 'Array vs tree' explains why.")
    if args.write_costs:
        write_costs(results, ns)
    log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
