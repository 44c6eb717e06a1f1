"""Generate QEMU-like memslot traces of a large VM (deterministic, seeded).

Not a kernel or QEMU function: it writes what QEMU's ``kvm_set_user_memory``
log would show for a large PC guest, following the patterns of the shipped
real traces. Boot: low RAM split around the VGA window and option ROMs, the
BIOS ROM below 4 GiB, RAM above 4 GiB, the VGA frame buffer, all of it again
in the SMM address space (as 1), then ``dimms`` hot-plugged DIMMs. After that,
random events until ``ncalls``: the VGA frame buffer deleted and re-created
with dirty logging toggled, a DIMM unplugged or plugged again (QEMU takes the
lowest free slot id), an option ROM mapped and unmapped, and live migration
switching dirty logging on and later off for every writable slot (FLAGS_ONLY).
QEMU never moves a slot (it deletes and re-creates), so there is no MOVE.

``python -m kvmviz.trace.generate --calls 2000`` prints the shipped
``large-vm-generated.log``.

>>> calls = generate(40, dimms=4)
>>> len(calls), calls[0].memory_size > 0, {c.ret for c in calls}
(40, True, {0})
"""

import argparse
import random

from .qemu import MemoryCall, format_qemu

GiB = 1 << 30
RAM_HVA = 0x700000000000
DIMM_HVA = 0x600000000000
ROM_HVA = 0x7f0000000000
READONLY, LOG_DIRTY = 0x2, 0x1
SHIPPED = {"ncalls": 2000, "dimms": 250, "ram": 512 * GiB, "dimm_size": 8 * GiB, "seed": 2026}


class _Qemu:
    """Slot bookkeeping as QEMU's ``KVMMemoryListener`` keeps it, per address space."""

    def __init__(self, rng):
        self.rng = rng
        self.slots = ({}, {})        # per as: id -> [gpa, size, hva, flags]
        self.calls = []

    def emit(self, as_id, id, flags, gpa, size, hva):
        self.calls.append(MemoryCall(len(self.calls) + 1, as_id, id, flags, gpa, size, hva, 0, -1, 0))

    def create(self, as_id, gpa, size, hva, flags=0):
        ids = self.slots[as_id]
        id = next(i for i in range(len(ids) + 1) if i not in ids)
        ids[id] = [gpa, size, hva, flags]
        self.emit(as_id, id, flags, gpa, size, hva)
        return id

    def delete(self, as_id, id):
        gpa, _, hva, _ = self.slots[as_id].pop(id)
        self.emit(as_id, id, 0, gpa, 0, hva)

    def set_flags(self, as_id, id, flags):
        slot = self.slots[as_id][id]
        slot[3] = flags
        self.emit(as_id, id, flags, slot[0], slot[1], slot[2])

    def find(self, as_id, gpa):
        return next(i for i, s in self.slots[as_id].items() if s[0] == gpa)


def _boot(q, ram, dimms, dimm_size):
    low = min(ram, 3 * GiB)
    layout = [(0, 0xa0000, RAM_HVA, 0), (0xc0000, 0x20000, ROM_HVA, READONLY),
              (0xe0000, 0x20000, ROM_HVA + 0x20000, READONLY), (0x100000, low - 0x100000, RAM_HVA + 0x100000, 0),
              (0xfffc0000, 0x40000, ROM_HVA + 0x40000, READONLY), (0xfd000000, 0x1000000, ROM_HVA + 0x1000000, 0)]
    if ram > low:
        layout.append((4 * GiB, ram - low, RAM_HVA + low, 0))
    plugs = [(4 * GiB + ram - low + i * dimm_size, dimm_size, DIMM_HVA + i * dimm_size) for i in range(dimms)]
    for as_id in (0, 1):
        for gpa, size, hva, flags in layout + [p + (0,) for p in plugs]:
            q.create(as_id, gpa, size, hva, flags)
    return plugs


def _vga(q):
    for as_id in (0, 1):
        q.delete(as_id, q.find(as_id, 0xfd000000))
    flags = q.rng.choice((0, LOG_DIRTY))
    for as_id in (0, 1):
        q.create(as_id, 0xfd000000, 0x1000000, ROM_HVA + 0x1000000, flags)


def _dimm(q, dimms, unplugged):
    rng = q.rng
    if unplugged and (rng.random() < 0.5 or len(unplugged) == len(dimms)):
        gpa, size, hva = unplugged.pop(rng.randrange(len(unplugged)))
        for as_id in (0, 1):
            q.create(as_id, gpa, size, hva)
        return
    plugged = [d for d in dimms if d not in unplugged]
    gpa, size, hva = plugged[rng.randrange(len(plugged))]
    unplugged.append((gpa, size, hva))
    for as_id in (0, 1):
        q.delete(as_id, q.find(as_id, gpa))


def _rom(q):
    gpa = 0xfeb80000 + 0x40000 * q.rng.randrange(4)
    ids = [q.create(as_id, gpa, 0x40000, ROM_HVA + 0x2000000, READONLY) for as_id in (0, 1)]
    for as_id, id in enumerate(ids):
        q.delete(as_id, id)


def _migrate(q, on):
    for as_id in (0, 1):
        for id, (_, _, _, flags) in sorted(q.slots[as_id].items()):
            if not flags & READONLY and bool(flags & LOG_DIRTY) != on:
                q.set_flags(as_id, id, flags ^ LOG_DIRTY)


def generate(ncalls, *, dimms=SHIPPED["dimms"], ram=SHIPPED["ram"], dimm_size=SHIPPED["dimm_size"],
             seed=SHIPPED["seed"]):
    """``ncalls`` QEMU-like ``MemoryCall``s of a large VM (see the module doc).

    >>> c = generate(3, dimms=0)[2]
    >>> (c.as_id, c.id, hex(c.guest_phys_addr), c.flags)
    (0, 2, '0xe0000', 2)
    """
    q = _Qemu(random.Random(seed))
    plugs = _boot(q, ram, dimms, dimm_size)
    unplugged, migrating = [], False
    while len(q.calls) < ncalls:
        event = q.rng.random()
        if event < 0.02:
            migrating = not migrating
            _migrate(q, migrating)
        elif event < 0.45:
            _vga(q)
        elif event < 0.8 and plugs:
            _dimm(q, plugs, unplugged)
        else:
            _rom(q)
    return q.calls[:ncalls]


def text(calls, *, seed=SHIPPED["seed"], header=()):
    """The log QEMU's log backend would print for ``calls`` (2024+ format, with prefix)."""
    rng = random.Random(seed)
    clock = 1_700_000_000.0
    lines = [f"# {line}" for line in header]
    for call in calls:
        clock += rng.randrange(20, 2000) / 1e6
        lines.append(format_qemu(call, "guest_memfd", f"4242@{clock:.6f}:"))
    return "\n".join(lines) + "\n"


def shipped_text():
    """Text of the shipped ``large-vm-generated.log``."""
    p = SHIPPED
    header = ("Generated by kvmviz, not a real log: `python -m kvmviz.trace.generate --calls "
              f"{p['ncalls']}` (seed {p['seed']}).",
              f"A large PC guest: {p['ram'] // GiB} GiB of RAM, SMM on, {p['dimms']} hot-plugged DIMMs of "
              f"{p['dimm_size'] // GiB} GiB;",
              "then VGA dirty-log toggles, DIMM unplug/replug, option ROMs and live migration, as",
              "described in kvmviz/trace/generate.py. QEMU 2024+ trace format with the log backend prefix.")
    return text(generate(p["ncalls"], dimms=p["dimms"], ram=p["ram"], dimm_size=p["dimm_size"],
                         seed=p["seed"]), seed=p["seed"], header=header)


def main(argv=None):
    """Print a generated trace: ``--calls N`` (default: the shipped one)."""
    parser = argparse.ArgumentParser(prog="python -m kvmviz.trace.generate", description=main.__doc__)
    parser.add_argument("--calls", type=int, default=SHIPPED["ncalls"])
    parser.add_argument("--seed", type=int, default=SHIPPED["seed"])
    args = parser.parse_args(argv)
    if (args.calls, args.seed) == (SHIPPED["ncalls"], SHIPPED["seed"]):
        print(shipped_text(), end="")
    else:
        print(text(generate(args.calls, seed=args.seed), seed=args.seed), end="")


if __name__ == "__main__":
    main()
