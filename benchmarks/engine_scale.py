"""Engine scale: create 32764 slots one by one, then MOVEs at that size, beside the real kernel.

Prints wall times for the tree model with history on and off and for this
machine's kernel (``kvmviz.host.timing``: the kernel's VM in a child process
of its own, idle while the model runs), measured in the same run: rounds
alternate kernel and model, each figure is the median over rounds. A MOVE
figure is half the median there-and-back pair (the last slot moved away and
back). Ratios model / kernel follow each row, and the model's figures also
against its own 10-slot baseline (a ratio near 1: the cost does not grow
with N). Without ``/dev/kvm`` the kernel column is skipped with a note. Then
the memory the setup keeps (``tracemalloc``, a second run) with history on
and off, per recorded event; then the time of N and 2N distinct unmapped gfn
accesses, vCPUs and open notifier ranges (a ratio near 2 is linear).

    .venv/bin/python benchmarks/engine_scale.py [--slots N] [--moves M] [--rounds R] [--n N]
"""

import argparse
import statistics
import sys
import time
import tracemalloc

import kvmviz
from kvmviz.host.timing import KernelTimer, ModelTimer

HVA = 0x7f0000000000
COLUMNS = ("history on", "history off", "real kernel")
SETTLE = 2.0                # seconds between the CREATEs and the timed MOVEs


def slot(i, gfn=None):
    """The call that puts slot ``i`` (one page) at ``gfn`` (default: gfn ``i``)."""
    return (i, 0, (i if gfn is None else gfn) << 12, 0x1000, HVA + (i << 12))


def create(n, history):
    vm = kvmviz.VM(history=history)
    start = time.perf_counter()
    for i in range(n):
        vm.set_user_memory_region(*slot(i))
    return vm, time.perf_counter() - start


def one_size(timer, n, moves):
    """Create ``n`` slots, then ``moves`` MOVEs of the last one (away and back): seconds, MOVE seconds.

    A pause of ``SETTLE`` seconds comes between: right after thousands of
    CREATEs the kernel is busy for a while (the first MOVEs after 32764 took
    three times as long); the model gets the same pause.
    """
    timer.new_vm()
    [t_create] = timer.run([slot(i) for i in range(n)])
    time.sleep(SETTLE)
    pairs = timer.run([slot(n - 1, n + 16), slot(n - 1)], moves // 2)
    return t_create, sum(pairs), statistics.median(pairs) / 2


def one_round(timer, slots, moves):
    """One round on one column: the 10-slot baseline and the big run."""
    t_small, _, m_small = one_size(timer, 10, moves)
    t_create, t_moves, m_big = one_size(timer, slots, moves)
    if isinstance(timer, ModelTimer):
        assert kvmviz.check_invariants(timer.vm) == []
    return dict(create=t_create, moves=t_moves, move=m_big, move10=m_small, create10=t_small,
                events=len(timer.vm.history) if isinstance(timer, ModelTimer) else None)


def measure(slots, moves, rounds, kernel):
    """``{column: {figure: median over rounds}}``; the kernel's column only when it is available."""
    timers = {"history on": ModelTimer(history=True), "history off": ModelTimer(history=False)}
    if kernel.available:
        timers = {"real kernel": kernel, **timers}
    runs = {}
    for r in range(rounds):
        for column, timer in timers.items():
            print(f"  round {r + 1}/{rounds}: {column}", flush=True, file=sys.stderr)
            runs.setdefault(column, []).append(one_round(timer, slots, moves))
            if isinstance(timer, ModelTimer):
                timer.vm = None
    return {column: {k: (statistics.median(x[k] for x in rs) if rs[0][k] is not None else None)
                     for k in rs[0]} for column, rs in runs.items()}


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
    ap.add_argument("--moves", type=int, default=1000, help="MOVEs per size and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=10_000, help="N for the linearity rows")
    args = ap.parse_args()
    with KernelTimer() as kernel:
        rows = measure(args.slots, args.moves, args.rounds, kernel)
        release = kernel.release if kernel.available else None
    columns = [c for c in COLUMNS if c in rows]
    models = columns[:2]
    print(f"median of {args.rounds} rounds alternating kernel and model; "
          + (f"real kernel: Linux {release}" if release else "no /dev/kvm: real kernel column skipped"))
    print(f"{'work':44} " + " ".join(f"{c:>12}" for c in columns)
          + ("  " + " ".join(f"{c.split()[1] + '/kernel':>11}" for c in models) if release else ""))
    sec = lambda x: f"{x:.2f} s"
    usec = lambda x: f"{x * 1e6:.0f} us"
    for label, key, fmt in ((f"create {args.slots} slots one by one", "create", sec),
                            (f"{args.moves} MOVEs at {args.slots} slots", "moves", sec),
                            ("median MOVE at that size", "move", usec),
                            ("median MOVE at 10 slots (baseline)", "move10", usec)):
        line = f"{label:44} " + " ".join(f"{fmt(rows[c][key]):>12}" for c in columns)
        if release:
            line += "  " + " ".join(f"{rows[c][key] / rows['real kernel'][key]:>10.2f}x" for c in models)
        print(line)
    for label, f in (("ratio MOVE big / MOVE 10", lambda r: r["move"] / r["move10"]),
                     ("ratio per-CREATE cost, big run / 10-slot run",
                      lambda r: (r["create"] / args.slots) / (r["create10"] / 10))):
        print(f"{label:44} " + " ".join(f"{f(rows[c]):>12.2f}" for c in columns))
    print(f"{'history events recorded':44} " + " ".join(f"{rows[c]['events']:>12.0f}" for c in models))
    print(f"{'ratio create time, history on / off':44} {rows['history on']['create'] / rows['history off']['create']:>12.2f}")
    memory_and_linearity(args.slots, args.n)


if __name__ == "__main__":
    main()
