"""Explore every interleaving of a memslot update with its readers (``kvmviz check``).

A model checker in the style of TLA+'s TLC, on the model a learner steps
through: from the state a setup recipe leaves, the writer runs one or more
``KVM_SET_USER_MEMORY_REGION`` calls step by step, and at every point each
of ``readers`` vCPUs may enter an SRCU read-side section (``srcu_read_lock``),
access a gfn of the changing slot (``kvm_mmu_page_fault``) or leave
(``srcu_read_unlock``), any number of times; with ``mmu=N`` up to N
MMU-notifier invalidations of the slot's hva range may start and end
anywhere too. ``explore`` tries every one of these actions from every state,
breadth first, keeps each distinct state once (``engine.statekey``: the sets,
slots, generations, locks, readers' pins and caches, notifier count and the
update's position, not the history that led there) and runs
``check_invariants`` in each. The first state that breaks an invariant is
therefore reached by a shortest interleaving: it comes back as a
``Counterexample``, with a trace and a recipe that ``kvmviz recipe run``
replays to the same violation.

Deterministic and clock-free, like the engine: ``stop`` (a callable, asked
now and then) is how a caller with a clock sets a time budget.

>>> r = explore([(1, 0, 0, 0, 0)], setup="call slot=1 gpa=0 size=0x1000 hva=0x100000", readers=1)
>>> r.verdict, r.states > 40, r.bound
('no violation within the bound', True, None)
>>> r = explore([(1, 0, 0, 0x1000, 0x100000)], variant="no-srcu-wait", readers=1)
>>> r.counterexample.summary()
'13 actions (12 writer steps, 1 reader actions), rule grace-period'
>>> r.counterexample.violations[0].split(":")[0]
'a swap finished (no in-progress generation) while vcpu0, inside since before its publish, may still use the old set'
"""

from collections import deque

from . import __version__, export
from .engine.constants import PAGE_SHIFT
from .engine.invariants import check_invariants
from .engine.kernels import check_model
from .engine.rules import RULES
from .engine.scenario import call_words, check_call
from .engine.statekey import state_key
from .variants.load import is_spec, load, raised, variant_name

WRITER = ("writer",)
#: How many states ``explore`` keeps at most unless told otherwise.
MAX_STATES = 2_000_000
_STOP_EVERY = 256


def explore(calls, setup=None, *, variant="merged", kernel=None, address_spaces=None, readers=1, mmu=0,
            gfns=None, max_states=MAX_STATES, stop=None):
    """Explore every interleaving of ``calls`` with the readers; returns an ``Exploration``.

    ``calls``: ``(slot, flags, guest_phys_addr, memory_size, userspace_addr
    [, fail_prepare errno])`` tuples, run one after the other; ``setup``: a
    recipe (text) run first, on the same model; ``variant``: a name, a
    ``path/file.py:Class`` (the file is run, see ``kvmviz.variants.load``)
    or a ``MergedProtocol`` subclass. ``readers``: vCPUs; ``gfns``: what
    they access (default: the first gfn of the changing slot, as it was
    or as created; readers run in SMM when the first call changes address
    space 1); ``mmu``: MMU-notifier invalidations of the slot's hva range that
    may run at once. Bounds: ``max_states`` distinct states, and ``stop()``
    returning a reason (a string) to end early; ``Exploration.bound`` then
    says which bound was hit.
    """
    return _Explorer(calls, setup, variant, kernel, address_spaces, readers, mmu, gfns).run(max_states, stop)


class Exploration:
    """What ``explore`` found: figures, the bound hit (None when complete), a counterexample or None."""

    def __init__(self, explorer, states, transitions, depth, bound, counterexample):
        self.model = export.model_label(explorer.vm)
        self.variant = explorer.variant
        self.calls, self.setup = explorer.calls, explorer.setup
        self.readers, self.mmu, self.gfns, self.hva = explorer.readers, explorer.mmu, explorer.gfns, explorer.hva
        self.changes = explorer.changes
        self.states, self.transitions, self.depth = states, transitions, depth
        self.bound = bound
        self.counterexample = counterexample

    @property
    def verdict(self):
        """``"no violation within the bound"``, ``"VIOLATION"`` or, cut short, what was hit."""
        if self.counterexample is not None:
            return "VIOLATION"
        if self.bound is not None:
            return f"no violation found before the bound was hit ({self.bound}); the exploration is incomplete"
        return "no violation within the bound"

    def bound_text(self):
        """The readers and notifiers explored, in words."""
        gfns = ", ".join(f"{g:#x}" for g in self.gfns)
        who = (f"{self.readers} vCPU reader(s) (each: srcu_read_lock, access gfn {gfns}, srcu_read_unlock, any "
               "number of times, before or after any writer step)") if self.readers else "no vCPU reader"
        if self.mmu:
            who += (f"; up to {self.mmu} MMU-notifier invalidation(s) of hva {self.hva[0]:#x}..{self.hva[1] - 1:#x} "
                    "at once, starting and ending anywhere")
        return who

    def text(self, seconds=None, markdown=False):
        """The report: scenario, bound, figures, verdict and any counterexample (<= 78 columns)."""
        wrap = (lambda line: [f"- {line}"]) if markdown else (lambda line: export.wrap(line, 0))
        calls = "; ".join(f"{c} {call_words(call)}" for c, call in zip(self.changes, self.calls))
        rate = f", {seconds:.1f} s ({self.states / seconds:,.0f} states/s)" if seconds else ""
        model = self.model if "variant" in self.model else f"{self.model}, variant {self.variant}"
        title = f"kvmviz {__version__} check: {model}"
        lines = [f"**{title}**", ""] if markdown else export.wrap(title, 0)
        for line in (f"scenario: {'setup ' + repr(self.setup) + ', then ' if self.setup else ''}{calls}",
                     f"bound: {self.bound_text()}",
                     f"explored: {self.states:,} distinct states, {self.transitions:,} transitions (writer steps "
                     f"and reader actions tried), longest interleaving {self.depth} actions{rate}",
                     f"verdict: {self.verdict}"):
            lines += wrap(line)
        if self.counterexample is not None:
            lines += [""] + self.counterexample.text(markdown).splitlines()
        return "\n".join(lines)


class Counterexample:
    """A shortest interleaving that breaks an invariant, replayed as a recipe.

    ``actions``: the interleaving (``("writer",)``, ``("vcpu", n, verb[, gfn])``,
    ``("mn", "start"|"end", hva_start, hva_end)``); ``violations``: what broke,
    as ``check_invariants`` says it (``rule``: the first one's rule, when the
    checker names it); ``scenario``: the ``export.Scenario`` that replayed it;
    ``recipe``: its text; ``events``: what happened after the setup.
    """

    def __init__(self, explorer, actions, violations):
        self.actions = tuple(actions)
        self.violations = [str(v) for v in violations]
        self.rule = getattr(violations[0], "rule", None)        # a key of ``engine.rules.RULES``
        self.scenario, self.start = explorer.replay(self.actions)
        self.recipe = export.recipe(self.scenario)
        self.events = self.scenario.events[self.start:]

    @property
    def length(self):
        """Actions in the interleaving (writer steps and reader actions)."""
        return len(self.actions)

    def summary(self):
        """One line: length, writer steps, reader actions, rule."""
        w = sum(a == WRITER for a in self.actions)
        rule = f", rule {self.rule}" if self.rule else ""
        return f"{self.length} actions ({w} writer steps, {self.length - w} reader actions){rule}"

    def trace(self, markdown=False):
        """The interleaving after the setup, one row per step or reader action, ``!!`` at the violation."""
        notes = {i - self.start: n for i, n in self.scenario.notes.items() if i >= self.start}
        return (export.markdown if markdown else export.text)(self.events, notes=notes)

    def text(self, markdown=False):
        """Summary, violations, trace and recipe, for a mail (plain) or a web review (``markdown``)."""
        head = [f"shortest counterexample: {self.summary()}"]
        if self.rule in RULES:
            head.append(f"rule {self.rule}: {RULES[self.rule]}")
        head += [f"!! {v}" for v in self.violations]
        recipe = ["", "recipe (`kvmviz recipe run FILE` replays it):", ""]
        if markdown:
            return "\n".join([f"**{head[0]}**", ""] + [f"- {v}" for v in head[1:]] + ["", self.trace(True)]
                             + recipe + ["```"] + self.recipe.splitlines() + ["```"])
        lines = []
        for line in head:
            lines += export.wrap(line, 0)
        return "\n".join(lines + [""] + self.trace().splitlines() + recipe + self.recipe.splitlines())


def violations_of(vm, step=None):
    """``check_invariants(vm)``, plus the kernel ``BUG``/``WARN`` that ``step`` (if given) ended in.

    >>> from kvmviz import VM
    >>> violations_of(VM())
    []
    """
    found = list(check_invariants(vm))
    if step is not None and step.result in ("BUG", "WARN"):
        found.append(f"the kernel hits {step.result}(): {step.error}")
    return found


def first_violation(scenario, start=0):
    """``(history index, violations)``: the first violations a checked ``Scenario`` noted at or after ``start``.

    >>> sc = export.replay_recipe("variant no-catch-up; call slot=1 size=0x1000 hva=0x100000", check=True)
    >>> index, found = first_violation(sc); index, found[0][:40]
    (13, 'as0: at rest both sets must hold the sam')
    """
    for i in sorted(scenario.notes):
        if i >= start:
            return i, scenario.notes[i]
    return None, []


def replay(recipe):
    """Run a recipe (a ``FILE.py:Class`` variant is loaded first); returns ``(scenario, start)``.

    ``start`` is the history index where the setup ends: after the last call
    that ran to its end before the first ``begin`` line (0 without one). A
    ``kvmviz check`` counterexample is everything from there on.

    >>> sc, start = replay("call slot=1 size=0x1000 hva=0x100000; vcpu 0 lock; begin slot=1 size=0; step 3")
    >>> start, len(sc.events), sc.events[start].function
    (15, 20, 'kvm_vm_ioctl_create_vcpu')
    """
    parsed = export.parse_recipe(recipe)
    if is_spec(parsed.variant):
        load(parsed.variant)
    sc = export.replay_recipe(recipe, check=True)
    kinds = [kind for kind, _ in sc.actions if kind in ("call", "begin")]
    k = kinds.index("begin") if "begin" in kinds else len(kinds)
    done = [u for u in sc.updates[:k] if u.steps]
    return sc, (done[-1].steps[-1].index + 1 if done else 0)


class _Explorer:
    """The search: one VM, moved between states by rewinding reader actions or replaying from the setup."""

    def __init__(self, calls, setup, variant, kernel, address_spaces, readers, mmu, gfns):
        self.calls = tuple(check_call(c, f"call {i + 1}") for i, c in enumerate(calls))
        if not self.calls:
            raise ValueError("explore needs at least one call")
        for name, value, top in (("readers", readers, 64), ("mmu", mmu, 64)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ValueError(f"{name} must be a whole number 0..{top}, not {value!r}")
        self.variant = variant_name(variant)
        self.setup, self.kernel, self.address_spaces = setup or "", kernel, address_spaces
        self.readers, self.mmu = readers, mmu
        self.base = self._scenario(check=False)
        self.vm = vm = self.base.vm
        self.h0, self.calls_at_h0 = len(vm.history), vm.calls
        self.changes, self.gfns, self.hva = _targets(vm, self.calls)
        self.smm = self.calls[0][0] >> 16 == 1       # readers of address space 1 run in SMM
        if gfns is not None:
            self.gfns = tuple(gfns)
        self.path, self.marks, self.last_writer = [], [self.h0], -1
        self.next_call, self.done_steps = 0, 0

    def _scenario(self, check):
        if not self.setup:
            return export.Scenario(variant=self.variant, kernel=self.kernel, address_spaces=self.address_spaces,
                                   check=check)
        parsed = export.parse_recipe(self.setup)
        kernel = check_model(export.recipe_kernel(parsed, self.kernel), self.variant)
        sc = export.replay_recipe(self.setup, variant=self.variant, kernel=kernel,
                                  address_spaces=self.address_spaces, check=check)
        if sc.vm.update is not None:
            raise ValueError("the setup recipe leaves a call running; end it with 'finish'")
        return sc

    # -- moving the VM between states ---------------------------------------------------
    def _apply(self, action):
        vm = self.vm
        kind = action[0]
        step = None
        if kind == "writer":
            if vm.update is None:
                c = self.calls[self.next_call]
                vm.begin_set_user_memory_region(*c[:5], fail_prepare=c[5])
                self.next_call, self.done_steps = self.next_call + 1, 0
            try:
                step = next(vm.update)
            except Exception as e:
                raise raised(e, self.variant) from None
            self.done_steps += not step.waiting
            self.last_writer = len(self.path)
        elif kind == "vcpu":
            while len(vm.vcpus) <= action[1]:
                vcpu = vm.add_vcpu()
                if self.smm:
                    vcpu.set_smm(True)
            v = vm.vcpus[action[1]]
            {"lock": v.srcu_read_lock, "unlock": v.srcu_read_unlock, "access": v.access}[action[2]](*action[3:])
        else:
            (vm.mmu_notifier_invalidate_range_start if action[1] == "start"
             else vm.mmu_notifier_invalidate_range_end)(*action[2:])
        self.path.append(action)
        self.marks.append(len(vm.history))
        return step

    def _rewind(self, n):
        """Back to the first ``n`` actions of the path; only reader actions lie beyond them."""
        if n < len(self.path):
            self.vm.rewind(self.marks[n])
            del self.path[n:], self.marks[n + 1:]

    def _goto(self, target):
        c = 0
        for a, b in zip(self.path, target):
            if a != b:
                break
            c += 1
        if self.last_writer >= c:           # a writer step must be undone: replay from the setup
            h = self.vm.history
            h.goto(self.h0)
            h.truncate()                    # abandons the running update
            object.__setattr__(self.vm, "calls", self.calls_at_h0)     # call serials are not journaled
            self.path, self.marks, self.last_writer = [], [self.h0], -1
            self.next_call, self.done_steps = 0, 0
            c = 0
        self._rewind(c)
        for action in target[c:]:
            self._apply(action)

    # -- the state ---------------------------------------------------------------------------
    def _enabled(self):
        vm, upd = self.vm, self.vm.update
        out = []
        if self.readers or self.mmu:
            for i in range(self.readers):
                if i < len(vm.vcpus) and vm.vcpus[i].inside:
                    out += [("vcpu", i, "access", g) for g in self.gfns] + [("vcpu", i, "unlock")]
                else:
                    out.append(("vcpu", i, "lock"))
            if self.mmu:
                running = vm.mn_ranges.count(self.hva)
                out += [("mn", "start") + self.hva] * (running < self.mmu) + [("mn", "end") + self.hva] * (running > 0)
        if upd is not None:
            if not (upd.steps and upd.steps[-1].waiting and upd.blocked):
                out.append(WRITER)
        elif self.next_call < len(self.calls):
            out.append(WRITER)
        return out

    def _key(self):
        upd = self.vm.update
        waiting = upd is not None and bool(upd.steps) and upd.steps[-1].waiting and bool(upd.blocked)
        return state_key(self.vm, update=(self.next_call, self.done_steps, waiting), vcpus=self.readers)

    # -- the search ------------------------------------------------------------------------------
    def run(self, max_states, stop):
        found = violations_of(self.vm)
        if found:
            return Exploration(self, 1, 0, 0, None, Counterexample(self, (), found))
        seen = {self._key(): 0}
        parent, via = [None], [None]
        queue = deque([0])
        transitions = depth = 0
        bound = None
        expanded = 0
        while queue:
            expanded += 1
            if stop is not None and expanded % _STOP_EVERY == 0:
                bound = stop()
                if bound:
                    break
            sid = queue.popleft()
            path = _path(sid, parent, via)
            self._goto(path)
            n = len(path)
            depth = max(depth, n)
            for action in self._enabled():        # readers first, the writer (no way back) last
                step = self._apply(action)
                transitions += 1
                key = self._key()
                if key not in seen:
                    seen[key] = len(parent)
                    parent.append(sid)
                    via.append(action)
                    found = violations_of(self.vm, step)
                    if found:
                        return Exploration(self, len(seen), transitions, n + 1, None,
                                           Counterexample(self, path + [action], found))
                    queue.append(seen[key])
                    if len(seen) >= max_states:
                        bound = f"max_states={max_states:,} distinct states"
                        break
                if action != WRITER:
                    self._rewind(n)
            if bound:
                break
        return Exploration(self, len(seen), transitions, depth, bound, None)

    # -- the counterexample as a recipe ----------------------------------------------------------
    def replay(self, actions):
        """Run ``actions`` on a fresh checked ``Scenario``; returns it and where the setup ended.

        Consecutive writer steps of one call become one ``step N`` line (``Scenario.step``).
        """
        sc = self._scenario(check=True)
        start = len(sc.vm.history)
        calls = iter(self.calls)
        for action in actions:
            if action == WRITER:
                if sc.vm.update is None:
                    sc.begin(*next(calls))
                sc.step(1)
            elif action[0] == "vcpu":
                for n in range(len(sc.vm.vcpus), action[1] + 1) if self.smm else ():
                    sc.vcpu(n, "smm", "on")
                sc.vcpu(*action[1:])
            else:
                sc.mn(*action[1:])
        return sc, start


def _path(sid, parent, via):
    out = []
    while sid:
        out.append(via[sid])
        sid = parent[sid]
    out.reverse()
    return out


def _targets(vm, calls):
    """Change of the first call, the gfn readers access and the hva range notifiers invalidate.

    The changing slot's first gfn: of the slot as it was, or as created.
    """
    gfn = hva = None
    for slot, flags, gpa, size, addr, _ in calls:
        as_id, id = slot >> 16, slot & 0xFFFF
        old = vm.active_set(as_id).id_to_memslot(id) if as_id < vm.address_spaces else None
        if old is not None and hva is None:
            gfn, hva = old.base_gfn, (old.userspace_addr, old.userspace_addr + (old.npages << PAGE_SHIFT))
        elif size and hva is None:
            gfn, hva = gpa >> PAGE_SHIFT, (addr, addr + size)
    changes = (_change(vm, calls[0]),) + ("then",) * (len(calls) - 1)
    return changes, (gfn or 0,), hva or (0, 1 << PAGE_SHIFT)


def _change(vm, call):
    """CREATE, DELETE, MOVE, FLAGS_ONLY or NONE, as ``__kvm_set_memory_region`` would classify ``call`` now."""
    first = vm.dry_run(*call[:5], until=1)[0]
    return f"call (refused: {first.error.errname})" if first.error is not None else first.change
