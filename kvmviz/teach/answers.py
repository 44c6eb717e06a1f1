"""The kinds of exercise and how an answer is checked against the engine.

Each exercise builds its situation with the engine and computes the right
answer *from the engine* when it checks an answer, so the key can never drift
from the model. A wrong answer gets a hint computed from the same run (which
check fired, which set the object sits in, what was true at the step you
picked). Kinds, as in the lessons:

* ``PredictState``: run the situation one more step (or to the end) and read a
  value: which set is active, a generation, which object a set holds, a count.
* ``PickStep``: the step number (1-based, as ``numbered`` prints it) at which
  something becomes true.
* ``SpotInvariant``: which invariant (reference §1.7, §3.1) a broken run breaks.
* ``ChooseErrno``: what ``KVM_SET_USER_MEMORY_REGION`` returns for a call.

The catalogue of the course's exercises is ``kvmviz.teach.curriculum``; the learner's
entry point is ``kvmviz.exercises`` (``get``, ``check``, ``Progress``).

>>> ex = PredictState("x.1", "generation of as0 after one CREATE?",
...                   situation([(1, 0, 0x100000, 0x1000, HVA)]), lambda sit: sit.vm.generation(0))
>>> ex.check(2).correct, ex.check("0x2").correct
(True, True)
"""

import errno as _errno
from dataclasses import dataclass

from ..engine.constants import KVM_ADDRESS_SPACE_NUM as N
from ..engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from ..engine.errors import KvmError
from ..engine.fmt import gen_text
from ..engine.invariants import RULES, check_invariants
from ..engine.numbers import parse_number
from ..engine.scenario import Scenario
from ..engine.vm import VM

HVA = 0x7F0000000000

# -- answers: parse what a learner typed --------------------------------------


class AnswerError(ValueError):
    """The answer could not be read (the message says what is expected)."""


def _text(answer):
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise AnswerError("no answer yet: type one and check again.")
    return str(answer).strip()


def parse_int(answer):
    """Read an integer written in decimal or ``0x`` hex, ``-1`` too (``kvmviz.engine.numbers``).

    >>> parse_int("0x10"), parse_int(" 16 "), parse_int(3), parse_int("-1")
    (16, 16, 3, -1)
    """
    text = answer if isinstance(answer, int) else _text(answer)
    try:
        return parse_number(text, "answer", signed=True)
    except (TypeError, ValueError):
        raise AnswerError(f"{answer!r} is not a number (write 12 or 0xc).") from None


def parse_generation(answer):
    """Read a generation such as ``4``, ``0x4`` or ``0x4|IP`` (bit 63 set).

    >>> parse_generation("0x4|IP") == 4 | IP, parse_generation("6")
    (True, 6)
    """
    if isinstance(answer, int) and not isinstance(answer, bool):
        return answer
    parts = [p.strip() for p in _text(answer).upper().replace("+", "|").split("|")]
    ip = IP if "IP" in parts else 0
    nums = [p for p in parts if p != "IP"]
    if len(nums) != 1:
        raise AnswerError(f"{answer!r}: write a generation as 4, 0x4 or 0x4|IP.")
    return parse_int(nums[0]) | ip


def parse_set(answer):
    """Read a set: ``1``, ``set1``, ``as0/set1`` -> its ``node_idx``.

    >>> parse_set("as0/set1"), parse_set(0), parse_set("Set 1")
    (1, 0, 1)
    """
    text = _text(answer).lower().replace(" ", "").split("/")[-1].removeprefix("set")
    if text not in ("0", "1"):
        raise AnswerError(f"{answer!r}: name a set as set0 or set1 (its node_idx).")
    return int(text)


def parse_label(answer):
    """Read a slot object label: ``#3``, ``3`` or ``NULL``.

    >>> parse_label("3"), parse_label("#12"), parse_label("none")
    ('#3', '#12', 'NULL')
    """
    text = _text(answer)
    if text.upper() in ("NULL", "NONE", "-"):
        return "NULL"
    return f"#{parse_int(text.lstrip('#'))}"


def parse_errno(answer):
    """Read an ioctl result: ``EINVAL``, ``-EINVAL``, ``22`` or ``0``.

    >>> parse_errno("-einval"), parse_errno(17), parse_errno("0 (success)")
    ('EINVAL', 'EEXIST', '0')
    """
    text = _text(answer).upper().split()[0].lstrip("-")
    if text in ("0", "SUCCESS", "OK"):
        return "0"
    if text.isdigit():
        text = _errno.errorcode.get(int(text), text)
    if not hasattr(_errno, text):
        raise AnswerError(f"{answer!r} is not an errno name (EINVAL, EEXIST, ...) or 0.")
    return text


# -- situations ------------------------------------------------------------------


@dataclass
class Situation:
    """A VM stopped somewhere: after ``calls``, inside ``upd`` after ``steps``.

    ``old`` is the slot the update's id named in the active set when it began.
    """

    vm: VM
    upd: object = None
    steps: tuple = ()
    old: object = None


def situation(calls=(), begin=None, run=0, fail_prepare=False, before=None, **vm_args):
    """Return a function that builds a fresh ``Situation`` each time it is called.

    A ``Scenario`` (``kvmviz.engine.scenario``) on ``VM(**vm_args)`` makes
    the ``calls`` (argument tuples, run to the end); ``before`` then acts:
    scenario lines (``"vcpu 0 lock"``, ``"mn start HVA END"``) or a function
    of the VM (to break it on purpose); ``begin`` starts one more call and
    ``run`` says how far it goes (``"end"``, or ``Update.run_until``'s
    step count, function name or ``(function, n)``).

    >>> sit = situation([(1, 0, 0x100000, 0x10000, HVA)], before="vcpu 0 lock", begin=(1, 0, 0, 0, 0),
    ...                 run="end")()
    >>> sit.upd.change, sit.upd.blocked, gen_text(sit.vm.generation(0))
    ('DELETE', 'SRCU readers still inside: vcpu0', '0x2|IP')
    """
    def build():
        sc = Scenario(VM(**vm_args))
        for call in calls:
            sc.call(*call)
        if callable(before):
            before(sc.vm)
        elif before:
            sc.play(before)
        vm = sc.vm
        if begin is None:
            return Situation(vm)
        old = vm.id_to_memslot(begin[0] & 0xFFFF, begin[0] >> 16) if begin[0] >> 16 < vm.address_spaces else None
        upd = sc.begin(*begin, fail_prepare=fail_prepare)
        return Situation(vm, upd, tuple(upd.run_until(None if run == "end" else run)), old)
    return build


def numbered(steps, start=1):
    """The steps as numbered lines, the numbering ``PickStep`` answers use.

    >>> print(numbered(situation(begin=(1, 0, 0, 0x1000, HVA), run="end")().steps[:2]))
     1 [validate] __kvm_set_memory_region: all checks passed: CREATE slot 1 of as0 at gfn 0x0..0x0.
     2 [validate] __kvm_set_memory_region: allocate #1 and fill it with the new values; no set links it yet.
    """
    return "\n".join(f"{i:2d} {s}" for i, s in enumerate(steps, start))


def _label(slot):
    return slot.label if slot is not None else "NULL"


def slot_in(which, as_id=0, id=1):
    """A probe: the label of slot ``id`` in the active or inactive set.

    >>> slot_in("inactive")(situation([(1, 0, 0, 0x1000, HVA)])())
    '#1'
    """
    def probe(sit):
        s = (sit.vm.active_set if which == "active" else sit.vm.inactive_set)(as_id)
        return _label(s.id_to_memslot(id))
    return probe


def where_is(vm, label, as_id=0):
    """Which sets of ``as_id`` hold the object ``label`` (for hints).

    >>> where_is(situation([(1, 0, 0, 0x1000, HVA)])().vm, "#1")
    'both sets'
    """
    held = [("active" if s is vm.active_set(as_id) else "inactive")
            for s in vm.sets[as_id] if any(x.label == label for x in s.slots())]
    if len(held) == 1:
        return f"only the {held[0]} set"
    return "both sets" if held else "no set"


# -- exercises -------------------------------------------------------------------


@dataclass(frozen=True)
class Feedback:
    """The result of checking an answer: ``correct`` and a message for the learner."""

    correct: bool
    message: str

    def __bool__(self):
        return self.correct

    def __str__(self):
        return ("Correct. " if self.correct else "") + self.message


class Exercise:
    """Base class: a question whose answer the engine computes.

    Subclasses define ``parse`` (read an answer), ``solve`` (compute the right
    one), ``hint`` (say why a wrong one is wrong) and ``evidence`` (what the
    engine did to get the right one, for the worked answer). ``explain`` is the
    one-line why shown with a correct answer and in the worked answer.
    """

    kind = "exercise"
    choices = None

    def __init__(self, key, question, setup, hint="", explain="", show=None):
        self.key, self.question, self.setup = key, question, setup
        self.static_hint, self.explain, self.show = hint, explain, show

    @property
    def lesson(self):
        """Lesson number, from the key (``"02.1"`` -> 2)."""
        return int(self.key.split(".")[0])

    def situation(self):
        """A fresh copy of the situation the question is about, to inspect."""
        return self.setup()

    def answer(self):
        """The right answer, computed from the engine now."""
        return self.format(self.solve(self.setup()))

    def worked(self):
        """The right answer and how the engine got it: ``Worked(answer, why, evidence)``.

        Computed from a fresh run, like ``answer``; ``evidence`` is a list of
        lines (steps, the error, the first violation) that show it.
        """
        sit = self.setup()
        before = len(sit.steps)
        right = self.solve(sit)
        lines = self.show(sit) if self.show is not None else self.evidence(sit, before)
        return Worked(self.format(right), self.why(right), tuple(lines))

    def why(self, right):
        """The one-line reason a right answer is right."""
        return self.explain

    def evidence(self, sit, before):
        """Lines showing the right answer in the engine's run (``sit`` after ``solve``).

        The steps ``solve`` took; of a long run only those that changed a set
        or a generation, and the last.
        """
        taken = list(enumerate(sit.steps[before:], before + 1))
        if len(taken) > 6:
            keep = {id(s) for _, s in taken if s.touched} | {id(taken[-1][1])}
            keep |= {id(s) for (_, p), (_, s) in zip(taken, taken[1:]) if s.gens != p.gens}
            taken = [(i, s) for i, s in taken if id(s) in keep]
        return [f"{i:2d} {s}" for i, s in taken]

    def format(self, value):
        """How a parsed answer is shown."""
        return str(value)

    def check(self, answer):
        """Check ``answer``; returns a ``Feedback`` (never raises on bad input)."""
        try:
            given = self.parse(answer)
        except AnswerError as e:
            return Feedback(False, f"Cannot read that: {e}")
        sit = self.setup()
        right = self.solve(sit)
        if given == right:
            why = self.why(right)
            return Feedback(True, f"{self.format(right)} is right{': ' + why if why else '.'}")
        tail = f" {self.static_hint}" if self.static_hint else ""
        return Feedback(False, f"Not {self.format(given)}. {self.hint(given, right, sit)}{tail}")

    def __repr__(self):
        return f"<{self.kind} {self.key}: {self.question}>"


@dataclass(frozen=True)
class Worked:
    """A worked answer: the right ``answer``, the one-line ``why``, and the engine's ``evidence`` lines."""

    answer: str
    why: str
    evidence: tuple


class PredictState(Exercise):
    """Predict a value after the situation advances ``advance`` steps ("end": to the end).

    ``probe(situation)`` reads the value; ``answer_type`` is one of "set",
    "generation", "label", "count" (a number, shown in decimal), "address"
    (a number, shown in hex), or "choice" (one of ``choices``).
    """

    kind = "predict the state"
    _parsers = {"set": parse_set, "generation": parse_generation, "label": parse_label, "count": parse_int,
                "address": parse_int}

    def __init__(self, key, question, setup, probe, answer_type="count", advance=1, choices=None, **kw):
        super().__init__(key, question, setup, **kw)
        self.probe, self.answer_type, self.advance = probe, answer_type, advance
        self.choices = tuple(choices) if choices else None
        self.parse = self._parsers.get(answer_type, self._parse_choice)

    def _parse_choice(self, answer):
        text = _text(answer).lower()
        if text not in self.choices:
            raise AnswerError(f"{answer!r}: choose one of {', '.join(self.choices)}.")
        return text

    def solve(self, sit):
        """Advance the situation and probe it."""
        if sit.upd is not None:
            sit.steps += tuple(sit.upd.run_until(None if self.advance == "end" else self.advance))
        return self.probe(sit)

    def format(self, value):
        """Generations as the steps print them, sets as ``set1``."""
        if self.answer_type == "generation":
            return gen_text(value)
        if self.answer_type == "set":
            return f"set{value}"
        if self.answer_type == "address":
            return f"{value:#x}"
        return str(value)

    def evidence(self, sit, before):
        """The steps that moved what the question asks about.

        Generations: the steps that changed the active generation; sets and
        objects: the replaces and publishes; other values: the steps taken.
        """
        taken = list(enumerate(sit.steps[before:], before + 1))
        if self.answer_type == "generation":
            prev = [sit.steps[before - 1] if before else taken[0][1]] + [s for _, s in taken]
            taken = [(i, s) for (i, s), p in zip(taken, prev) if s.gens != p.gens]
        elif self.answer_type in ("set", "label"):
            taken = [(i, s) for i, s in taken if s.touched or s.function == "rcu_assign_pointer"] or taken[-1:]
        else:
            return super().evidence(sit, before)
        return [f"{i:2d} {s}" for i, s in taken]

    def hint(self, given, right, sit):
        """A hint specific to the kind of value."""
        nxt = f"`{sit.steps[-1].function}`" if sit.steps else "the last step"
        if self.answer_type == "set":
            return (f"The active pointer moves only at `rcu_assign_pointer` (reference §2.1, swap step 5); "
                    f"the step you are predicting is {nxt}.")
        if self.answer_type == "generation":
            return _generation_hint(given, right, sit.vm.address_spaces)
        if self.answer_type == "label":
            return f"After that step, {given} is in {where_is(sit.vm, given)}."
        if self.answer_type == "choice":
            return "Think about which set that reader uses at this moment."
        return f"{self.format(given)} is too {'high' if given > right else 'low'}."


def _generation_hint(given, right, n=N):
    """Why ``given`` is not the generation ``right`` on a VM with ``n`` address spaces."""
    as_id = (right & ~IP) % n
    if (given & ~IP) % n != as_id:
        return (f"Generations of as{as_id} are always {as_id} mod {n}: they start at {as_id} and each "
                f"swap adds {n}, the VM's number of address spaces (reference §3.1).")
    if right & IP and not given & IP:
        return ("At this moment a swap is under way: from its 'mark in progress' step until its final store "
                "after the grace period, the active set's generation is the old value with bit 63 set "
                f"(IP, printed |IP), and the +{n} comes only with the final store (reference §3.2, §3.4).")
    if given & IP and not right & IP:
        return ("No swap is under way at that moment: the final store of each swap clears bit 63 "
                "(IP) again (reference §3.4).")
    swaps = ((given & ~IP) - (right & ~IP)) // n
    return (f"That counts {abs(swaps)} swap(s) too {'many' if swaps > 0 else 'few'}: each completed swap adds "
            f"{n}; CREATE and FLAGS_ONLY swap once, DELETE and MOVE twice, and a failed prepare after the "
            f"INVALID copy went live still swaps twice (reference §3.1, §3.3).")


class PickStep(Exercise):
    """The step number (1-based) of an update at which ``predicate(situation)`` becomes true.

    "Becomes true": true after that step and false just before it.
    """

    kind = "pick the step"

    def __init__(self, key, question, setup, predicate, **kw):
        super().__init__(key, question, setup, **kw)
        self.predicate = predicate

    parse = staticmethod(parse_int)

    def solve(self, sit):
        """Step through the update, watching for the predicate to turn true."""
        self._steps = []
        before = self.predicate(sit)
        for step in sit.upd:
            self._steps.append(step)
            sit.steps = sit.steps + (step,)
            now = self.predicate(sit)
            if now and not before:
                return len(self._steps)
            before = now
        raise RuntimeError(f"exercise {self.key}: the predicate never becomes true")

    def evidence(self, sit, before):
        """The step before (still false) and the step that made the predicate true."""
        return [f"{i:2d} {self._steps[i - 1]}" + ("  <- now true" if i == len(self._steps) else "")
                for i in range(max(1, len(self._steps) - 1), len(self._steps) + 1)]

    def hint(self, given, right, sit):
        """Say what is true after the step the learner picked."""
        if given < 1:
            return "Steps are numbered from 1 (print them with `numbered(steps)`)."
        if given > right:
            return f"Too late: it is already true before step {given}; look earlier."
        return f"Too early: after step {given} (`{self._steps[given - 1].function}`) it is not true yet."


class SpotInvariant(Exercise):
    """Which invariant does a broken run break first? (choose a key of ``RULES``).

    ``setup`` returns a situation whose update is stepped until the checker
    first complains (or a VM already broken); the answer is the ``rule`` of
    the first ``Violation``.

    >>> ex = SpotInvariant("x.2", "?", situation(begin=(1, 0, 0, 0x1000, HVA), variant="no-catch-up"))
    >>> ex.answer()
    '2. at rest both sets hold the same slot objects; 5.15 keeps no scratch copy (§1.7.2, §6.3)'
    """

    kind = "spot the invariant"
    choices = tuple(RULES)

    def parse(self, answer):
        """Accept a key of ``RULES``, its sentence, or the number 1-5 of §1.7."""
        sentences = {v.lower(): k for k, v in RULES.items()}
        if _text(answer).lower() in sentences:
            return sentences[_text(answer).lower()]
        text = _text(answer).split(".")[0].strip().lower()
        keys = list(RULES)
        if text.isdigit() and 1 <= int(text) <= 5:
            return keys[int(text) - 1]
        if text not in RULES:
            raise AnswerError(f"{answer!r}: choose one of {', '.join(keys)}.")
        return text

    def solve(self, sit):
        """Step until ``check_invariants`` reports; the rule of its first violation."""
        if sit.upd is not None and not check_invariants(sit.vm):
            sit.steps += tuple(sit.upd.run_until(lambda step: check_invariants(sit.vm)))
        self._violations = check_invariants(sit.vm)
        if not self._violations:
            raise RuntimeError(f"exercise {self.key}: no invariant is broken")
        return self._violations[0].rule

    def format(self, value):
        """The invariant as a sentence."""
        return RULES[value]

    def hint(self, given, right, sit):
        """Say how many complaints there are and that none is about the guess."""
        if given in {v.rule for v in self._violations}:
            return ("That one is broken too, but later: check_invariants lists it after the first "
                    "complaint. Which rule does the bug break directly?")
        return (f"check_invariants(vm) reports {len(self._violations)} problem(s), none about that rule. "
                f"Rebuild the situation with `kvmviz.exercises.get(\"{self.key}\").situation()`, step its "
                f"update until `kvmviz.check_invariants(sit.vm)` is not empty, and read the first message.")

    def evidence(self, sit, before):
        """The step after which the checker first complained, and its first complaint."""
        where = (f"after step {len(sit.steps)}: {sit.steps[-1]}" if sit.steps else "before any step of an update")
        return [where, f"check_invariants: {self._violations[0]}"]


class ChooseErrno(Exercise):
    """What does ``KVM_SET_USER_MEMORY_REGION`` return for ``call`` (0 or an errno)?"""

    kind = "choose the errno"
    choices = ("0", "EINVAL", "EEXIST", "EIO", "ENOMEM", "EFAULT", "EPERM")
    parse = staticmethod(parse_errno)

    def __init__(self, key, question, setup, call, fail_prepare=False, **kw):
        super().__init__(key, question, setup, **kw)
        self.call, self.fail_prepare = call, fail_prepare

    def solve(self, sit):
        """Make the call on a fresh VM; remember the error for the hint."""
        self._error, self._steps = None, ()
        try:
            self._steps = sit.vm.set_user_memory_region(*self.call, fail_prepare=self.fail_prepare)
        except KvmError as e:
            self._error = e
            return e.errname
        return "0"

    def why(self, right):
        """The static explanation, else the rule that refused the call (from the run of ``solve``)."""
        if self.explain or self._error is None:
            return self.explain
        return f"{self._error.message} (reference §{self._error.rule})."

    def evidence(self, sit, before):
        """What the call returned and, on success, what it did."""
        if self._error is not None:
            return [f"returns -{self._error.errname}: {self._error.message} (check §{self._error.rule})"]
        change = self._steps[-1].change
        if change == "NONE":
            return ["returns 0 at once: nothing to change, no swap"]
        swaps = sum(s.function == "rcu_assign_pointer" for s in self._steps)
        return [f"returns 0: {change}, {len(self._steps)} steps, {swaps} swap(s)"]

    def hint(self, given, right, sit):
        """Name the rule that decides, or say that the call succeeds."""
        if self._error is None:
            return "The call passes every check of reference §4.2: walk them in order once more."
        if given == "0":
            return f"The call fails: some check of reference §{self._error.rule} refuses it."
        return f"The check that fires first is reference §{self._error.rule}; what does it return?"
