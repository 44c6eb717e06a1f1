"""Engine scale: create 32764 slots one by one, then 1000 MOVEs at that size.

Prints wall times and, as the figure to compare across machines, ratios
against a baseline run in the same process (the same work at 10 slots);
then the memory the setup keeps (``tracemalloc``, a second run) with history
on and off, per recorded event; then the time of N and 2N distinct unmapped
gfn accesses, vCPUs and open notifier ranges (a ratio near 2 is linear).

    .venv/bin/python benchmarks/engine_scale.py [--slots N] [--moves M] [--n N]
"""

import argparse
import statistics
import time
import tracemalloc

import kvmviz

HVA = 0x7f0000000000


def create(n, history):
    vm = kvmviz.VM(history=history)
    start = time.perf_counter()
    for i in range(n):
        vm.set_user_memory_region(i, 0, i << 12, 0x1000, HVA + (i << 12))
    return vm, time.perf_counter() - start


def moves(vm, n, count):
    """MOVE the last slot away and back (memslot_perf_test's move area), timed one by one."""
    last, times = n - 1, []
    for k in range(count):
        gpa = (n + 16) << 12 if k % 2 == 0 else last << 12
        start = time.perf_counter()
        vm.set_user_memory_region(last, 0, gpa, 0x1000, HVA + (last << 12))
        times.append(time.perf_counter() - start)
    return sum(times), statistics.median(times)


def kept_memory(n, history):
    """Bytes the VM holds after creating ``n`` slots (tracemalloc), and its event count."""
    tracemalloc.start()
    vm, _ = create(n, history)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size, len(vm.history)


def accesses(n):
    vcpu = kvmviz.VM().add_vcpu()
    vcpu.srcu_read_lock()
    for gfn in range(n):
        vcpu.access(0x100000 + gfn)


def vcpus(n):
    vm = kvmviz.VM()
    for _ in range(n):
        vm.add_vcpu().srcu_read_lock()


def notifier_ranges(n):
    vm = kvmviz.VM()
    for i in range(n):
        vm.mmu_notifier_invalidate_range_start(HVA + (i << 12), HVA + (i << 12) + 0x1000)


def doubling(work, n):
    """Seconds for ``work(n)`` and ``work(2n)``."""
    out = []
    for size in (n, 2 * n):
        start = time.perf_counter()
        work(size)
        out.append(time.perf_counter() - start)
    return out


def memory_and_linearity(slots, n):
    print(f"\n{'memory kept by the setup (tracemalloc)':44} {'history on':>12} {'history off':>12}")
    (on, events), (off, _) = kept_memory(slots, True), kept_memory(slots, False)
    print(f"{f'{slots} slots':44} {on / 2**20:>10.1f} M {off / 2**20:>10.1f} M")
    print(f"{'history bytes per recorded event':44} {(on - off) / events:>12.0f}")
    print(f"\n{'work':44} {f'N={n}':>12} {f'N={2 * n}':>12} {'ratio':>6}")
    for name, work in (("access to N distinct unmapped gfns", accesses), ("N vCPUs, each in SRCU", vcpus),
                       ("N open MMU-notifier ranges", notifier_ranges)):
        t1, t2 = doubling(work, n)
        print(f"{name:44} {t1:>10.2f} s {t2:>10.2f} s {t2 / t1:>6.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=kvmviz.KVM_USER_MEM_SLOTS)
    ap.add_argument("--moves", type=int, default=1000)
    ap.add_argument("--n", type=int, default=10_000, help="N for the linearity rows")
    args = ap.parse_args()
    print(f"{'work':44} {'history on':>12} {'history off':>12}")
    rows = {}
    for history in (True, False):
        small, t_small = create(10, history)
        _, m_small = moves(small, 10, args.moves)
        vm, t_create = create(args.slots, history)
        t_moves, m_big = moves(vm, args.slots, args.moves)
        assert kvmviz.check_invariants(vm) == []
        rows[history] = (t_create, t_moves, m_big, m_small, t_small, len(vm.history))
    fmt = lambda i, f: f"{f(rows[True][i]):>12} {f(rows[False][i]):>12}"
    sec = lambda x: f"{x:.2f} s"
    usec = lambda x: f"{x * 1e6:.0f} us"
    print(f"{f'create {args.slots} slots one by one':44} {fmt(0, sec)}")
    print(f"{f'{args.moves} MOVEs at {args.slots} slots':44} {fmt(1, sec)}")
    print(f"{'median MOVE at that size':44} {fmt(2, usec)}")
    print(f"{'median MOVE at 10 slots (baseline)':44} {fmt(3, usec)}")
    ratio = lambda h: rows[h][2] / rows[h][3]
    print(f"{'ratio MOVE big / MOVE 10':44} {ratio(True):>12.2f} {ratio(False):>12.2f}")
    per_slot = lambda h: (rows[h][0] / args.slots) / (rows[h][4] / 10)
    print(f"{'ratio per-CREATE cost, big run / 10-slot run':44} {per_slot(True):>12.2f} {per_slot(False):>12.2f}")
    print(f"{'history events recorded':44} {rows[True][5]:>12} {rows[False][5]:>12}")
    print(f"{'ratio create time, history on / off':44} {rows[True][0] / rows[False][0]:>12.2f}")
    memory_and_linearity(args.slots, args.n)


if __name__ == "__main__":
    main()
