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

from .events import NO_COST, HistoryEvent
from .history import StateError
from .errors import ModelBug

STAGES = ("validate", "invalidate", "prepare", "replace", "activate", "commit")


class Step(HistoryEvent):
    """One step of an update (see module doc): a ``HistoryEvent`` whose actor is the writer.

    ``text`` is a template filled from ``args`` when read (``kvmviz.engine.events``).

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


class Update:
    """An update in flight: iterate to run it one ``Step`` at a time.

    ``result`` is None while running, then 0 or ``-errno``; ``blocked`` is a
    reason string while the writer waits (grace period, MMU notifier).
    """

    def __init__(self, vm, region, run):
        self.vm = vm
        self.region = region
        self.steps = []
        self.result = None
        self.error = None
        self.change = None
        self.call = vm.next_call()
        self.abandoned = False
        self.wait_reason = None      # set by the protocol while it waits
        self._gen = run(self)

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
        if self.steps and self.steps[-1].waiting and self.blocked:
            return self.steps[-1]           # still waiting: the same step, no new event
        before = dict(self.vm.cost)
        try:
            step = next(self._gen)
        except ModelBug as e:
            step = self._crash(e)
        except StopIteration:          # a variant's protocol returned without its last, result-bearing step
            step = self._crash(ModelBug("BUG: the update's steps ended without a last step that returns a "
                                        "result (the variant's protocol returned early)"))
        except Exception as e:
            self._finish_step(self._crash(e), before)
            raise
        return self._finish_step(step, before)

    def _check_runnable(self):
        if self.abandoned:
            raise StateError("this update was abandoned: its future steps were discarded when the "
                             "VM went back in time and something new happened")
        if not self.vm.history.at_frontier:
            raise StateError("the VM was stepped back; use vm.history.forward() to replay recorded "
                             "steps before running new ones")

    def _finish_step(self, step, before):
        step.call = self.call
        step.change = self.change
        step.cost = {k: v - before.get(k, 0) for k, v in self.vm.cost.items() if v != before.get(k, 0)} or NO_COST
        self.steps.append(step)
        self.vm.record(step)
        if step.result is not None:
            self.result, self.error = step.result, step.error
            self.vm.end_update(self)
        return step

    def _crash(self, e):
        """The kernel ``BUG()``/``WARN()`` a broken variant hit, as the update's last step.

        The locks are released and the update ends, so the VM stays explorable
        (a real kernel would oops with ``slots_lock`` held); ``result`` is
        ``"BUG"`` or ``"WARN"`` and ``error`` the exception.
        """
        vm = self.vm
        kind = "WARN" if str(e).startswith("WARN") else "BUG"
        held = ", ".join(sorted(vm.locks)) or "no lock"
        vm.locks = frozenset()
        vm.changing = None
        stage = getattr(vm.protocol, "stage", "validate")
        return Step(stage, kind, f"the model hit a kernel {kind}: {e}. The kernel would oops here with {held} "
                                 "held and the ioctl would never return; kvmviz ends the update and releases the "
                                 "locks so you can keep exploring.", locks=vm.locks, gens=vm.generations(),
                    result=kind, error=e)

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
        total = {}
        for step in self.steps:
            for name, value in step.cost.items():
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

    def run(self):
        """Run to the end; returns the steps. ``StateError`` if a reader blocks it."""
        for _ in self:
            pass
        if self.result is None:
            raise StateError(f"update {self.call} is blocked: {self.blocked}; let the readers go on, then run it again")
        return self.steps


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
