"""Steps of a memslot update, and the ``Update`` iterator that yields them.

A ``Step`` is one observable point of ``KVM_SET_USER_MEMORY_REGION``: its
``stage`` (validate, invalidate, prepare, replace, activate, commit), the
kernel ``function`` it models, a ``text`` for learners, the locks held, the
generations of every set and which set was edited.

>>> from kvmviz import VM
>>> upd = VM().begin_set_user_memory_region(0, 0, 0, 0x1000, 0x100000)
>>> s = next(upd); s.stage, s.function, upd.result
('validate', '__kvm_set_memory_region', None)
>>> steps = list(upd); upd.result, steps[-1].stage
(0, 'commit')
"""

from types import MappingProxyType

from .events import NO_COST, EventList, EventSource, HistoryEvent
from .history import StateError
from .errors import ModelBug

STAGES = ("validate", "invalidate", "prepare", "replace", "activate", "commit")
#: The template of a step whose text needs no filling (the text is its one argument).
PLAIN = "{}"


class Step(HistoryEvent):
    """One step of an update (see module doc): a ``HistoryEvent`` whose actor is the writer.

    ``text`` is a template filled from ``args`` when read (``kvmviz.engine.events``).
    An ``Update`` keeps its steps as compact records and builds a ``Step`` the
    first time one is read.

    >>> s = Step("activate", "rcu_assign_pointer", "publish {}", ("as0/set1",), gens=((0, 2, 1),))
    >>> str(s), s.generation(0), s.actor, s.call
    ('[activate] rcu_assign_pointer: publish as0/set1', 2, 'writer', 0)
    """

    __slots__ = ("stage", "locks", "touched", "waiting", "error", "change", "call", "cost")

    def __init__(self, stage, function, text, args=(), *, locks=frozenset(), gens=(), touched=(), waiting=False,
                 result=None, error=None):
        HistoryEvent.__init__(self, function, text, args, result, gens)
        self.stage = stage
        self.locks = locks
        self.touched = touched
        self.waiting = waiting
        self.error = error
        self.change = None
        self.call = 0
        self.cost = NO_COST

    def generation(self, as_id=0):
        """Active set's generation of ``as_id`` right after this step."""
        g0, g1, active = self.gens[as_id]
        return (g0, g1)[active]

    def __repr__(self):
        return f"Step({self.stage!r}, {self.function!r}, {self.text!r}, result={self.result!r})"

    def __str__(self):
        wait = " (waiting)" if self.waiting else ""
        return f"[{self.stage}] {self.function}{wait}: {self.text}"


class Outcome:
    """A step that waits (``waiting``) or ends the update (``result``, ``error``), in its record."""

    __slots__ = ("waiting", "result", "error")

    def __init__(self, waiting=False, result=None, error=None):
        self.waiting, self.result, self.error = waiting, result, error


WAITING = Outcome(waiting=True)
#: The last step of a call that returned 0 (shared: most calls end so).
DONE = Outcome(result=0)
#: ``detail`` of a step that edited a set named by its first four text arguments:
#: ``touched`` is ``((as_id, node_idx, old label, new label),)``, kept once.
TOUCHES = object()
#: Fixed fields of a step record (``Update.push``): site, locks, gens, cost, detail; the text's arguments follow.
RECORD = 5
#: ``(stage, function, template) -> site`` (see ``Update.push``).
SITES = {}
_COSTS = {}


def new_site(stage, function, template, nargs):
    """The shared ``(stage, function, template, number of args)`` of a step record (``SITES`` caches them)."""
    if len(SITES) > 4096:
        SITES.clear()
    site = SITES[stage, function, template] = (stage, function, template, nargs)
    return site


def moved_counters(before, after):
    """``(counter, increase)`` of each counter of ``vm.cost`` that moved between two snapshots.

    >>> moved_counters({"hash_ops": 2}, {"hash_ops": 5, "slots_copied": 1})
    [('hash_ops', 3), ('slots_copied', 1)]
    """
    get = before.get
    return [(k, v - get(k, 0)) for k, v in after.items() if v != get(k, 0)]


def cost_delta(before, after):
    """The counters that moved between two snapshots of ``vm.cost``, as a shared read-only mapping."""
    key = tuple(moved_counters(before, after))
    if not key:
        return NO_COST
    cost = _COSTS.get(key)
    if cost is None:
        if len(_COSTS) > 4096:
            _COSTS.clear()
        cost = _COSTS[key] = MappingProxyType(dict(key))
    return cost


class Steps(EventList):
    """The steps of an update so far, as a read-only list built on access.

    >>> from kvmviz import VM
    >>> steps = VM().set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> len(steps), steps[0].stage, [s.function for s in steps[-2:]]
    (15, 'validate', ['kvm_arch_commit_memory_region', 'kvm_set_memory_region'])
    """

    __slots__ = ("_upd",)

    def __init__(self, upd):
        self._upd = upd

    def __len__(self):
        return self._upd.count

    def item(self, j):
        """Step ``j``."""
        return self._upd.step_at(j)


class Update(EventSource):
    """An update in flight: iterate to run it one ``Step`` at a time.

    ``result`` is None while running, then 0 or ``-errno``; ``blocked`` is a
    reason string while the writer waits (grace period, MMU notifier).
    ``steps`` lists the steps so far. They are kept as records (``push``)
    in one flat list and built into ``Step``s when read, each once: a call
    run to its end (``run``) formats no text and builds no ``Step``.
    """

    __slots__ = ("vm", "region", "checked", "result", "error", "change", "call", "abandoned", "wait_reason",
                 "_gen", "_before", "_before_total", "_log", "count", "_first", "_built", "_change_at", "_waiting")

    def __init__(self, vm, region, run, checked=None):
        self.vm = vm
        self.region = region
        self.checked = checked       # the checks passed before it began (``vm._refuse_early``), until used
        self.result = None
        self.error = None
        self.change = None
        self.call = vm.next_call()
        self.abandoned = False
        self.wait_reason = None      # set by the protocol while it waits
        self._log = []               # the step records, one after the other
        self.count = 0               # steps so far
        self._first = None           # history index of the first step
        self._built = None           # step number -> Step, for steps read so far
        self._change_at = None       # first step that knew the change type
        self._waiting = False        # the last step waits
        self._before = None          # vm.cost after the last step (``push``)
        self._before_total = 0       # and the sum of its counters
        self._gen = run(self)

    @property
    def steps(self):
        """The steps so far (a read-only list; ``Steps``)."""
        return Steps(self)

    def __iter__(self):
        """The steps until the update ends or waits for a reader (then ``blocked`` says why).

        >>> from kvmviz import VM
        >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
        >>> v = vm.add_vcpu(); v.srcu_read_lock()
        >>> upd = vm.begin_set_user_memory_region(1, 0, 0, 0, 0)
        >>> steps = list(upd); steps[-1].waiting, upd.blocked
        (True, 'SRCU readers still inside: vcpu0')
        >>> next(upd) is steps[-1], len(vm.history) == steps[-1].index + 1     # waiting records nothing
        (True, True)
        """
        while self.result is None:
            step = next(self)
            yield step
            if step.waiting and self.blocked:
                return

    def __next__(self):
        if self.result is not None:
            raise StopIteration
        self._check_runnable()
        if self._waiting and self.blocked:
            return self.step_at(self.count - 1)     # still waiting: the same step, no new event
        return self.step_at(self._advance(one=True))

    def run(self):
        """Run to the end; returns the steps. ``StateError`` if a reader blocks it."""
        if self.result is None:
            self._check_runnable()
            if not (self._waiting and self.blocked):
                self._advance(one=False)
        if self.result is None:
            raise StateError(f"update {self.call} is blocked: {self.blocked}; let the readers go on, "
                             "then run it again")
        return self.steps

    def _check_runnable(self):
        if self.abandoned:
            raise StateError("this update was abandoned: its future steps were discarded when the "
                             "VM went back in time and something new happened")
        if not self.vm.history.at_frontier:
            raise StateError("the VM was stepped back; use vm.history.forward() to replay recorded "
                             "steps before running new ones")

    def _advance(self, one):
        """Run the protocol one step (``one``) or until the update ends or waits while blocked.

        The protocol records each step as it takes it (``push``); returns the
        number of the last one. Nothing outside this loop runs between the
        steps, so the history cannot move under it.
        """
        vm = self.vm
        vm.protocol.upd = self              # whose steps the protocol records (``push``)
        self._before, self._before_total = dict(vm.cost), sum(vm.cost.values())
        gen, count = self._gen, self.count
        try:
            if one:
                next(gen)
            else:
                for _ in gen:
                    if self.result is not None or self._waiting and self.blocked:
                        break
        except ModelBug as e:
            self._crash(e)
        except StopIteration:
            pass
        except Exception as e:
            self._crash(e)
            raise
        if self.count == count or self.result is None and not one and not (self._waiting and self.blocked):
            # a variant's protocol returned without its last, result-bearing step (or yielded no step)
            self._crash(ModelBug("BUG: the update's steps ended without a last step that returns a "
                                 "result (the variant's protocol returned early)"))
        return self.count - 1

    def push(self, site, detail, args):
        """Record the step the protocol just took; returns its record for the protocol to yield.

        ``site`` is the shared ``(stage, function, template, number of
        args)``, ``detail`` the ``touched`` tuple, ``TOUCHES`` or an
        ``Outcome``; the locks, the generations and the work counted since
        the last step are read here. ``MergedProtocol.step`` calls it: a step
        is recorded when it is taken, so a call run to its end has no loop
        around each step.
        """
        vm = self.vm
        cost = vm.cost
        total = sum(cost.values())          # counters only grow while an update runs: equal sums, no new work
        if total == self._before_total:
            rec = (site, vm.locks, vm.generations(), NO_COST, detail, *args)
        else:
            rec = (site, vm.locks, vm.generations(), cost_delta(self._before, cost), detail, *args)
            self._before, self._before_total = dict(cost), total
        self._log += rec
        j = self.count
        self.count = j + 1
        if self._change_at is None and self.change is not None:
            self._change_at = j
        k = vm.history.record(self)
        if self._first is None:
            self._first = k
        if detail.__class__ is Outcome:
            self._waiting = detail.waiting
            if detail.result is not None:
                self.result, self.error = detail.result, detail.error
                self._gen = self.wait_reason = self._before = None
                self._log = tuple(self._log)        # no more records: no spare room
                vm.end_update(self)
        else:
            self._waiting = False
        return rec

    def _crash(self, e):
        """Record the kernel ``BUG()``/``WARN()`` a broken variant hit as the update's last step.

        The locks are released and the update ends, so the VM stays explorable
        (a real kernel would oops with ``slots_lock`` held); ``result`` is
        ``"BUG"`` or ``"WARN"`` and ``error`` the exception.
        """
        vm = self.vm
        kind = "WARN" if str(e).startswith("WARN") else "BUG"
        held = ", ".join(sorted(vm.locks)) or "no lock"
        vm.locks = frozenset()
        vm.changing = None
        site = new_site(vm.protocol.stage, kind, "the model hit a kernel {}: {}. The kernel would oops here with {} "
                                                 "held and the ioctl would never return; kvmviz ends the update and "
                                                 "releases the locks so you can keep exploring.", 3)
        self.push(site, Outcome(result=kind, error=e), (kind, str(e), held))

    # -- steps from their records ------------------------------------------------
    def _records(self):
        """``(number, start)`` of each record in ``_log``."""
        log, at = self._log, 0
        for j in range(self.count):
            yield j, at
            at += RECORD + log[at][3]

    def step_at(self, j, index=None):
        """Step number ``j`` (built on first read); ``index``: its history position if known."""
        built = self._built
        if built is None:
            built = self._built = {}
        step = built.get(j)
        if step is None:
            step = built[j] = self._build(j, index)
        return step

    def _build(self, j, index):
        log = self._log
        at = next(a for k, a in self._records() if k == j)
        (stage, function, template, nargs), locks, gens, cost, detail = log[at:at + RECORD]
        args = tuple(log[at + RECORD:at + RECORD + nargs])
        text, args = (args[0], ()) if template is PLAIN else (template, args)
        if detail.__class__ is Outcome:
            step = Step(stage, function, text, args, locks=locks, gens=gens, waiting=detail.waiting,
                        result=detail.result, error=detail.error)
        else:
            touched = (args[:4],) if detail is TOUCHES else detail
            step = Step(stage, function, text, args, locks=locks, gens=gens, touched=touched)
        step.call, step.cost = self.call, cost
        step.change = self.change if self._change_at is not None and j >= self._change_at else None
        step.index = self._index_of(j) if index is None else index
        return step

    def _index_of(self, j):
        if self._first is None:
            return None
        raw, k = self.vm.history.raw, self._first
        for _ in range(j):
            k = raw.index(self, k + 1)
        return k

    def history_event(self, k):
        """The step recorded at history position ``k``."""
        raw = self.vm.history.raw
        return self.step_at(raw[self._first:k].count(self), k)

    def freeze(self):
        """Build every step now (the history is about to forget where some of them were)."""
        for j in range(self.count):
            self.step_at(j)

    @property
    def blocked(self):
        """Why the writer cannot go on now, or None."""
        return self.wait_reason() if self.wait_reason else None

    @property
    def cost(self):
        """Abstract work of the steps so far: the sum of their ``Step.cost``.

        >>> from kvmviz import VM
        >>> vm = VM(implementation="array"); upd = vm.begin_set_user_memory_region(0, 0, 0, 0x1000, 0x100000)
        >>> _ = upd.run(); upd.cost["arrays_allocated"], upd.cost["bytes_copied"]
        (1, 65640)
        """
        total, log = {}, self._log
        for _, at in self._records():
            for name, value in log[at + 3].items():
                total[name] = total.get(name, 0) + value
        return total

    def run_until(self, until=None):
        """Take steps until ``until`` holds, the update ends or it waits for a reader; returns the steps taken.

        ``until`` is a predicate on the step just taken (that step is the
        last one returned), a kernel function name (up to its first step),
        ``(function, n)`` (up to its ``n``-th step), or a number of steps;
        None runs to the end or the wait. A writer that waits yields its
        waiting step once and stops here (``blocked`` says why).

        >>> from kvmviz import VM
        >>> upd = VM().begin_set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
        >>> [s.function for s in upd.run_until(("kvm_swap_active_memslots", 2))][-3:]
        ['kvm_swap_active_memslots', 'rcu_assign_pointer', 'kvm_swap_active_memslots']
        >>> len(upd.run_until(2)), upd.run_until(lambda s: s.stage == "commit")[-1].function
        (2, 'kvm_arch_commit_memory_region')
        """
        stop = _stop_rule(until)
        steps = []
        if until == 0 and not isinstance(until, bool):
            return steps
        for step in self:
            steps.append(step)
            if stop(steps):
                break
        return steps



def _stop_rule(until):
    """``Update.run_until``'s ``until`` as a test on the steps taken so far."""
    if until is None:
        return lambda steps: False
    if isinstance(until, int) and not isinstance(until, bool):
        return lambda steps: len(steps) >= until
    if isinstance(until, str):
        until = (until, 1)
    if isinstance(until, tuple):
        function, n = until
        return lambda steps: steps[-1].function == function and sum(s.function == function for s in steps) >= n
    if callable(until):
        return lambda steps: until(steps[-1])
    raise TypeError(f"run_until takes a predicate, a function name, (function, n) or a step count, not {until!r}")
