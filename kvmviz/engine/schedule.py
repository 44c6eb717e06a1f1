"""A deterministic scheduler: writer steps and reader actions in one interleaving.

Not a kernel function: the kernel's scheduler decides when vCPUs run. Here a
script (or a seeded ``random.Random``) decides, so an interleaving can be
replayed exactly: same VM, same writes, same script or seed, same timeline.
Readers are the VM's vCPUs and the MMU notifier; the writer is the running
``KVM_SET_USER_MEMORY_REGION`` (reference §1.5, §3.4).

A ``Schedule`` is a ``Scenario`` (``kvmviz.engine.scenario``) with queued
writes, driven by a script or a seed. The script is in the scenario
language: ``step`` (one writer step; the next queued write begins when none
runs), ``run`` (steps until the writer waits or its call ends), ``vcpu N
lock|unlock|lookup GFN|access GFN [write]|smm on|off``, ``mn start|end HVA
END`` (and ``call``/``begin`` for calls beyond the queue). Lines are strings
or tuples of the same words; the old spellings ``vcpu0 lock``, ``mmu
start``, ``writer`` and ``writer run`` still read.

>>> import kvmviz
>>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0x7f0000000000)
>>> sched = Schedule(vm, writes=[(1, 0, 0x100000, 0, 0)], vcpus=1,
...                  script=["vcpu 0 lock", "run", "vcpu 0 access 0x100", "vcpu 0 unlock"])
>>> tl = sched.run()
>>> tl.finished, [t.actor for t in tl][-3:]
(True, ['writer', 'writer', 'writer'])
>>> print(tl[10])
  10 vcpu0        kvm_mmu_page_fault: vcpu0 read gfn 0x100 (as0, gen 0x2): ok (#1) hva 0x7f0000000000
>>> sched.scenario.to_recipe().splitlines()[5:]
['vcpu 0 lock', 'begin slot=0x1 flags=0x0 gpa=0x100000 size=0x0 hva=0x0', 'run', 'vcpu 0 access 0x100', 'vcpu 0 unlock', 'run']
"""

import random
from typing import NamedTuple

from .scenario import Scenario, parse_recipe


class Tick(NamedTuple):
    """One entry of a timeline: who acted (``writer``, ``vcpuN``, ``mmu_notifier``) and the event."""

    n: int
    actor: str
    event: object

    def __str__(self):
        e = self.event
        wait = " (waiting)" if e.waiting else ""
        first = e.text.split(". ")[0].rstrip(".")
        return f"{self.n:4d} {self.actor:<12} {e.function}{wait}: {first}"


class Timeline(list):
    """The combined timeline of a ``Schedule`` run: a list of ``Tick``s.

    ``updates`` are the writer's ``Update``s in order; ``finished`` is True
    when all of them ended; ``blocked`` says why the last one waits otherwise.
    """

    def __init__(self):
        super().__init__()
        self.updates = []
        self.blocked = None

    @property
    def finished(self):
        """True when every update of the run has ended."""
        return all(u.result is not None for u in self.updates)

    def text(self):
        """One line per tick."""
        return "\n".join(map(str, self))


class Schedule:
    """Interleave writer updates with reader actions, reproducibly.

    ``writes``: ``(slot, flags, guest_phys_addr, memory_size, userspace_addr
    [, fail_prepare])`` tuples, run one after another (an update already
    running on the VM goes first). ``script``: the actions in order (see the
    module doc); without one, ``seed`` drives a ``random.Random`` that picks
    writer steps and reader actions until every update has ended.
    ``vcpus``: make sure the VM has this many vCPUs. ``gfns``/``hvas``: where
    random readers look and notifiers invalidate (default: taken from the
    writes and the VM's slots). ``observer(tick)`` is called after each event.
    ``finish``: after the script, let the writer run on until every update
    has ended or it waits for a reader. ``scenario`` is the ``Scenario`` that
    ran it all (``scenario.to_recipe()`` saves the run).
    """

    def __init__(self, vm, writes=(), script=None, seed=0, vcpus=0, gfns=None, hvas=None,
                 max_reader_actions=200, writer_weight=0.35, observer=None, finish=True):
        if not vm.history.enabled:
            raise ValueError("Schedule records a timeline from vm.history: create the VM with history=True")
        self.vm = vm
        self.scenario = Scenario(vm, writes=writes)
        self.nvcpus = max(vcpus, len(vm.vcpus))
        self.script = None if script is None else parse_recipe(script, "script", self.nvcpus, header=False).actions
        self.rng = random.Random(seed)
        self.gfns = list(gfns) if gfns is not None else self._default_gfns()
        self.hvas = list(hvas) if hvas is not None else self._default_hvas()
        self.max_reader_actions = max_reader_actions
        self.writer_weight = writer_weight
        self.observer = observer
        self.finish = finish
        self.timeline = Timeline()

    # -- defaults for random readers ---------------------------------------------------
    def _default_gfns(self):
        gfns = {0}
        for w in self.scenario.pending:
            base, npages = w[2] >> 12, w[3] >> 12
            gfns.update((base, base + max(npages, 1) - 1, base + max(npages, 1)))
        for as_sets in self.vm.sets:
            for slot in as_sets[0].slots()[:8]:
                gfns.update((slot.base_gfn, slot.end_gfn - 1))
        return sorted(gfns)

    def _default_hvas(self):
        hvas = {w[4] for w in self.scenario.pending if w[3]}
        hvas.update(s.userspace_addr for s in self.vm.memslots(0)[:8])
        return sorted(hvas) or [0]

    # -- running -------------------------------------------------------------------------
    def run(self):
        """Run the script (or the seeded random schedule); returns the ``Timeline``."""
        vm, sc = self.vm, self.scenario
        while len(vm.vcpus) < self.nvcpus:
            self._observe(vm.add_vcpu)
        if self.script is not None:
            for verb, args in self.script:
                self._do(verb, args)
            while self.finish and self._current() is not None and not vm.update.blocked:
                self._do("run", ())
        else:
            self._run_random()
        upd = self._current()
        self.timeline.blocked = upd.blocked if upd is not None else None
        self.timeline.updates = sc.updates
        return self.timeline

    def _current(self):
        """The running update, starting the next queued write if none runs."""
        return self._observe(self.scenario.current)

    def _observe(self, action, *args):
        """Do ``action``; turn the events it recorded into ticks."""
        start = len(self.vm.history)
        result = action(*args)
        for event in self.vm.history.events[start:]:
            tick = Tick(len(self.timeline), event.actor, event)
            self.timeline.append(tick)
            if self.observer is not None:
                self.observer(tick)
        return result

    def _do(self, verb, args):
        self._observe(self.scenario.do, verb, args)

    # -- the seeded random schedule -------------------------------------------------------
    def _run_random(self):
        rng, budget = self.rng, self.max_reader_actions
        while self._current() is not None:
            if budget <= 0:
                self._drain()
                continue
            if rng.random() < self.writer_weight:
                self._do("step", (1,))
                continue
            budget -= 1
            self._do(*self._random_reader_action())

    def _random_reader_action(self):
        rng, vm = self.rng, self.vm
        if not vm.vcpus or rng.random() < 0.15:
            if vm.mn_ranges and rng.random() < 0.6:
                return "mn", ("end",) + vm.mn_ranges[rng.randrange(len(vm.mn_ranges))]
            start = rng.choice(self.hvas) + (rng.randrange(4) << 12)
            return "mn", ("start", start, start + (rng.randrange(1, 4) << 12))
        n = rng.randrange(len(vm.vcpus))
        vcpu = vm.vcpus[n]
        if not vcpu.inside:
            if rng.random() < 0.1:
                return "vcpu", (n, "smm", "off" if vcpu.smm else "on")
            return "vcpu", (n, "lock")
        r = rng.random()
        if r < 0.3:
            return "vcpu", (n, "unlock")
        gfn = rng.choice(self.gfns)
        if r < 0.5:
            return "vcpu", (n, "lookup", gfn)
        return "vcpu", (n, "access", gfn, "write") if r > 0.9 else (n, "access", gfn)

    def _drain(self):
        """Budget spent: readers leave, notifiers end, the writer finishes."""
        vm = self.vm
        for n, vcpu in enumerate(vm.vcpus):
            if vcpu.inside:
                self._do("vcpu", (n, "unlock"))
        for rng_ in vm.mn_ranges:
            self._do("mn", ("end",) + rng_)
        self._do("run", ())
