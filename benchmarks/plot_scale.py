"""Time of ``viz.plot_memslots`` (figure + ``canvas.draw()`` + PNG) from 1 to 32764 slots.

Target: under 2 s at 32764 slots (KVM_USER_MEM_SLOTS, aggregated into gfn
bins). Prints one row per size and the ratio to the 1-slot figure measured in
the same process. Run: ``.venv/bin/python benchmarks/plot_scale.py``.
"""

import time

import kvmviz
from kvmviz import KVM_USER_MEM_SLOTS, viz
from kvmviz.viz.figure import png_bytes


def vm_with(n):
    """A VM whose as0 holds ``n`` one-page slots (built without history, for speed)."""
    vm = kvmviz.VM(history=False)
    for i in range(n):
        vm.set_user_memory_region(i, 0, i * 0x2000, 0x1000, 0x7f0000000000 + i * 0x1000)
    return vm


def plot_time(vm, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fig = viz.plot_memslots(vm)
        fig.canvas.draw()
        png_bytes(fig)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    plot_time(vm_with(1))               # warm up fonts
    base = None
    print(f"{'slots':>6} {'seconds':>8} {'ratio':>6}")
    for n in (1, 32, 64, 65, 1024, KVM_USER_MEM_SLOTS):
        s = plot_time(vm_with(n))
        base = base or s
        print(f"{n:>6} {s:8.3f} {s / base:6.1f}")
    verdict = "OK" if s < 2 else "TOO SLOW"
    print(f"{KVM_USER_MEM_SLOTS} slots: {s:.3f} s (target < 2 s, including canvas.draw) -> {verdict}")


if __name__ == "__main__":
    main()
