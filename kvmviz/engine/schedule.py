"""A deterministic scheduler: writer steps and reader actions in one interleaving.

Not a kernel function: the kernel's scheduler decides when vCPUs run. Here a
script (or a seeded ``random.Random``) decides, so an interleaving can be
replayed exactly: same VM, same writes, same script or seed, same timeline.
Readers are the VM's vCPUs (``vcpu0``, ``vcpu1``, ...) and the MMU notifier
(``mmu``); the writer is the running ``KVM_SET_USER_MEMORY_REGION``
(reference §1.5, §3.4).

Script lines (strings or tuples of the same words; numbers in hex or decimal):

- ``writer`` - one writer step; ``writer run`` - steps until it waits or the update ends
- ``vcpuN lock`` / ``vcpuN unlock`` - ``srcu_read_lock`` / ``srcu_read_unlock``
- ``vcpuN access GFN`` (append ``write`` for a write) / ``vcpuN lookup GFN``
- ``vcpuN smm on`` / ``vcpuN smm off``
- ``mmu start HVA END`` / ``mmu end HVA END`` - an MMU-notifier invalidation of [HVA, END)

>>> import kvmviz
>>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0x7f0000000000)
>>> tl = Schedule(vm, writes=[(1, 0, 0x100000, 0, 0)], vcpus=1,
...               script=["vcpu0 lock", "writer run", "vcpu0 access 0x100", "vcpu0 unlock"]).run()
>>> tl.finished, [t.actor for t in tl][-3:]
(True, ['writer', 'writer', 'writer'])
>>> print(tl[10])
  10 vcpu0        kvm_mmu_page_fault: vcpu0 read gfn 0x100 (as0, gen 0x2): ok (#1) hva 0x7f0000000000
"""

import random
from typing import NamedTuple

from .validate import make_region

_VERBS = {"lock": 0, "unlock": 0, "access": (1, 2), "lookup": 1, "smm": 1}


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
    has ended or it waits for a reader.
    """

    def __init__(self, vm, writes=(), script=None, seed=0, vcpus=0, gfns=None, hvas=None,
                 max_reader_actions=200, writer_weight=0.35, observer=None, finish=True):
        if not vm.history.enabled:
            raise ValueError("Schedule records a timeline from vm.history: create the VM with history=True")
        self.vm = vm
        self.writes = [_check_write(w, i) for i, w in enumerate(writes)]
        self.nvcpus = max(vcpus, len(vm.vcpus))
        self.script = None if script is None else [_parse(line, i, self.nvcpus) for i, line in enumerate(script)]
        self.rng = random.Random(seed)
        self.gfns = list(gfns) if gfns is not None else self._default_gfns()
        self.hvas = list(hvas) if hvas is not None else self._default_hvas()
        self.max_reader_actions = max_reader_actions
        self.writer_weight = writer_weight
        self.observer = observer
        self.finish = finish
        self.timeline = Timeline()
        self._pending = list(self.writes)

    # -- defaults for random readers ---------------------------------------------------
    def _default_gfns(self):
        gfns = {0}
        for w in self.writes:
            base, npages = w[2] >> 12, w[3] >> 12
            gfns.update((base, base + max(npages, 1) - 1, base + max(npages, 1)))
        for as_sets in self.vm.sets:
            for slot in as_sets[0].slots()[:8]:
                gfns.update((slot.base_gfn, slot.end_gfn - 1))
        return sorted(gfns)

    def _default_hvas(self):
        hvas = {w[4] for w in self.writes if w[3]}
        hvas.update(s.userspace_addr for s in self.vm.memslots(0)[:8])
        return sorted(hvas) or [0]

    # -- running -------------------------------------------------------------------------
    def run(self):
        """Run the script (or the seeded random schedule); returns the ``Timeline``."""
        vm = self.vm
        while len(vm.vcpus) < self.nvcpus:
            self._observe(vm.add_vcpu)
        if self.script is not None:
            for actor, verb, args in self.script:
                self._do(actor, verb, args)
            while self.finish and self._current() is not None and not self.vm.update.blocked:
                self._writer_run()
        else:
            self._run_random()
        upd = self._current()
        self.timeline.blocked = upd.blocked if upd is not None else None
        return self.timeline

    def _current(self):
        """The running update, starting the next pending write if none runs."""
        vm = self.vm
        if vm.update is None and self._pending:
            w = self._pending.pop(0)
            upd = vm.begin_set_user_memory_region(*w[:5], fail_prepare=w[5])
            self.timeline.updates.append(upd)
        if vm.update is not None and vm.update not in self.timeline.updates:
            self.timeline.updates.append(vm.update)
        return vm.update

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

    def writer_step(self):
        """One step of the writer (starting the next write if needed); False if none is left."""
        upd = self._current()
        if upd is None:
            return False
        self._observe(next, upd)
        return True

    def _writer_run(self):
        while self.writer_step():
            upd = self.vm.update
            if upd is None or upd.blocked:
                return

    def _do(self, actor, verb, args):
        vm = self.vm
        if actor == "writer":
            if verb == "run":
                self._writer_run()
            elif not self.writer_step():
                raise RuntimeError("script: 'writer' but no update is left to run")
        elif actor == "mmu":
            fn = vm.mmu_notifier_invalidate_range_start if verb == "start" else vm.mmu_notifier_invalidate_range_end
            self._observe(fn, *args)
        else:
            vcpu = vm.vcpus[int(actor[4:])]
            fn = {"lock": vcpu.srcu_read_lock, "unlock": vcpu.srcu_read_unlock, "lookup": vcpu.gfn_to_memslot,
                  "smm": vcpu.set_smm}.get(verb)
            if verb == "access":
                self._observe(vcpu.access, args[0], len(args) > 1)
            else:
                self._observe(fn, *args)

    # -- the seeded random schedule -------------------------------------------------------
    def _run_random(self):
        rng, budget = self.rng, self.max_reader_actions
        while self._current() is not None:
            if budget <= 0:
                self._drain()
                continue
            if rng.random() < self.writer_weight:
                self.writer_step()
                continue
            actor, verb, args = self._random_reader_action()
            budget -= 1
            self._do(actor, verb, args)

    def _random_reader_action(self):
        rng, vm = self.rng, self.vm
        if not vm.vcpus or rng.random() < 0.15:
            if vm.mn_ranges and rng.random() < 0.6:
                return "mmu", "end", vm.mn_ranges[rng.randrange(len(vm.mn_ranges))]
            start = rng.choice(self.hvas) + (rng.randrange(4) << 12)
            return "mmu", "start", (start, start + (rng.randrange(1, 4) << 12))
        vcpu = vm.vcpus[rng.randrange(len(vm.vcpus))]
        if not vcpu.inside:
            if rng.random() < 0.1:
                return vcpu.name, "smm", (not vcpu.smm,)
            return vcpu.name, "lock", ()
        r = rng.random()
        if r < 0.3:
            return vcpu.name, "unlock", ()
        gfn = rng.choice(self.gfns)
        if r < 0.5:
            return vcpu.name, "lookup", (gfn,)
        return vcpu.name, "access", (gfn, True) if r > 0.9 else (gfn,)

    def _drain(self):
        """Budget spent: readers leave, notifiers end, the writer finishes."""
        vm = self.vm
        for vcpu in vm.vcpus:
            if vcpu.inside:
                self._do(vcpu.name, "unlock", ())
        for rng_ in vm.mn_ranges:
            self._do("mmu", "end", rng_)
        while self.writer_step():
            pass


def _check_write(w, i):
    w = tuple(w)
    if len(w) not in (5, 6):
        raise ValueError(f"write {i}: expected (slot, flags, guest_phys_addr, memory_size, userspace_addr"
                         f"[, fail_prepare]), got {w!r}")
    make_region(*w[:5])
    return w[:5] + ((w[5] if len(w) == 6 else False),)


def _int(word, where):
    try:
        return int(word, 0) if isinstance(word, str) else int(word)
    except ValueError:
        raise ValueError(f"{where}: {word!r} is not a number") from None


def _parse(line, i, nvcpus):
    """One script line -> ``(actor, verb, args)``; raises ``ValueError`` with the line number."""
    words = line.split() if isinstance(line, str) else list(line)
    where = f"script line {i + 1} ({line!r})"
    if not words:
        raise ValueError(f"{where}: empty")
    actor, verb, rest = str(words[0]), (str(words[1]) if len(words) > 1 else ""), words[2:]
    if actor == "writer":
        if verb not in ("", "run") or rest:
            raise ValueError(f"{where}: use 'writer' or 'writer run'")
        return actor, verb, ()
    if actor == "mmu":
        if verb not in ("start", "end") or len(rest) != 2:
            raise ValueError(f"{where}: use 'mmu start HVA END' or 'mmu end HVA END'")
        start, end = (_int(x, where) for x in rest)
        if end <= start:
            raise ValueError(f"{where}: END must be above HVA")
        return actor, verb, (start, end)
    if not (actor.startswith("vcpu") and actor[4:].isdigit() and int(actor[4:]) < nvcpus):
        raise ValueError(f"{where}: unknown actor {actor!r}; use writer, mmu or vcpu0..vcpu{nvcpus - 1} "
                         "(pass vcpus=N to create them)")
    return actor, verb, _parse_vcpu_args(verb, rest, where)


def _parse_vcpu_args(verb, rest, where):
    if verb not in _VERBS:
        raise ValueError(f"{where}: unknown action {verb!r}; use one of {', '.join(_VERBS)}")
    if verb == "smm":
        if [str(x) for x in rest] not in (["on"], ["off"]):
            raise ValueError(f"{where}: use 'smm on' or 'smm off'")
        return (str(rest[0]) == "on",)
    if verb == "access" and len(rest) == 2:
        if str(rest[1]) != "write":
            raise ValueError(f"{where}: the optional last word of access is 'write'")
        return (_int(rest[0], where), True)
    want = _VERBS[verb]
    if len(rest) != (want if isinstance(want, int) else 1):
        raise ValueError(f"{where}: {verb} takes {'a gfn' if want else 'no argument'}")
    return tuple(_int(x, where) for x in rest)
