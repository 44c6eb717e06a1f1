"""Reader lookup cost: one vCPU gfn -> memslot lookup at 32764 slots vs at 10 slots.

A vCPU inside an SRCU read-side section looks up gfns that each fall in a
different slot, so every lookup misses the per-vCPU slot cache and walks the
gfn tree (``search_memslots``, reference §5.1); a second series repeats one
gfn, so every lookup hits the cache. Prints the abstract work per lookup (gfn
tree nodes visited, from ``vm.cost``) and wall times (fastest of 15 batches)
with their ratio to the 10-slot baseline measured in the same process.

    .venv/bin/python benchmarks/reader_lookup.py [--slots N] [--lookups K]
"""

import argparse
import time

import kvmviz

HVA = 0x7f0000000000


def build(n):
    """A VM (no history, for speed) with ``n`` one-page slots and one vCPU inside a section."""
    vm = kvmviz.VM(history=False)
    for i in range(n):
        vm.set_user_memory_region(i, 0, i << 12, 0x1000, HVA + (i << 12))
    vcpu = vm.add_vcpu()
    vcpu.srcu_read_lock()
    return vm, vcpu


def per_lookup(vm, fn, gfns, repeats=15):
    """Fastest of ``repeats`` batches (least disturbed by other load), per call; tree nodes per call."""
    times, nodes = [], 0
    for _ in range(repeats):
        before = vm.cost["gfn_tree_nodes"]
        start = time.perf_counter()
        for g in gfns:
            fn(g)
        times.append((time.perf_counter() - start) / len(gfns))
        nodes = (vm.cost["gfn_tree_nodes"] - before) / len(gfns)
    return min(times), nodes


def measure(n, lookups):
    """Rows for one VM size: (what, seconds per lookup, nodes per lookup)."""
    vm, vcpu = build(n)
    step = max(1, n // lookups)
    misses = [(i * step + 1) % n for i in range(lookups)]      # consecutive gfns in different slots
    hits = [misses[0]] * lookups
    pinned = vcpu.memslots(0)
    return {
        "vcpu.gfn_to_memslot, cache miss": per_lookup(vm, vcpu.gfn_to_memslot, misses),
        "vcpu.gfn_to_memslot, cache hit": per_lookup(vm, vcpu.gfn_to_memslot, hits),
        "search_memslots alone": per_lookup(vm, pinned.search_memslots, misses),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=kvmviz.KVM_USER_MEM_SLOTS)
    ap.add_argument("--lookups", type=int, default=2000)
    args = ap.parse_args()
    small, big = measure(10, args.lookups), measure(args.slots, args.lookups)
    print(f"{'lookup':34} {'nodes@10':>9} {f'nodes@{args.slots}':>12} {'us@10':>8} "
          f"{f'us@{args.slots}':>10} {'ratio':>6}")
    for what, (t_big, n_big) in big.items():
        t_small, n_small = small[what]
        print(f"{what:34} {n_small:>9.1f} {n_big:>12.1f} {t_small * 1e6:>8.2f} {t_big * 1e6:>10.2f} "
              f"{t_big / t_small:>6.2f}")


if __name__ == "__main__":
    main()
