"""One scenario language: the calls, readers and knobs of a run, as lines of text or as method calls.

Not a kernel function: a scenario is what userspace and the guest do to a VM
(``KVM_SET_USER_MEMORY_REGION`` calls, vCPUs inside SRCU read sections,
MMU-notifier invalidations; reference §1.5, §3.4, §5.3), written so that it
replays exactly. A ``Scenario`` runs each action at once on ``scenario.vm``
and remembers it: ``to_recipe()`` gives the text that ``replay_recipe`` turns
back into the same trace. ``Schedule`` scripts, recipes, ``kvmviz recipe
run``/``--setup`` and the exercises' situations all use this one grammar.

One action per line (``;`` also ends a line, ``#`` starts a comment; numbers
in decimal or ``0x`` hex, read by ``kvmviz.engine.numbers``):

============  ========================================  =======================================
line          words after it                            what it does
============  ========================================  =======================================
``call``      ``slot= [flags=] [gpa=] size= [hva=]``    a whole ``KVM_SET_USER_MEMORY_REGION``
              ``[fail-prepare=ERRNO]``
``begin``     the same                                  start the call, run no step yet
``step``      ``[N]``                                   N writer steps (default 1)
``run``                                                 the writer runs until it ends or waits
``finish``                                              run to the end (an error if it waits)
``vcpu``      ``N lock|unlock|lookup GFN|``             vCPU N (made on first use) as an SRCU
              ``access GFN [write]|smm on|off``         reader (reference §5.1)
``mn``        ``start|end HVA END``                     MMU-notifier invalidation of [HVA, END)
============  ========================================  =======================================

A recipe may start with header lines, the VM's knobs: ``kvmviz-recipe 1``,
``version V`` (of kvmviz), ``kernel 5.15|5.17|6.12``, ``address-spaces 1|2``,
``variant NAME``. Older spellings (``OLD_SPELLINGS``, the ``Schedule``
script before the two grammars became one) read the same: ``vcpu0 lock``,
``mmu start HVA END``, ``writer``, ``writer run``.

>>> sc = Scenario(kernel="6.12")
>>> sc.play("call slot=1 gpa=0x100000 size=0x1000 hva=0x7f0000000000; vcpu 0 lock; begin slot=1 size=0; run")
>>> sc.vm.update.blocked
'SRCU readers still inside: vcpu0'
>>> sc.play("vcpu0 unlock; writer run"); sc.results
[0, 0]
>>> print(sc.to_recipe())
kvmviz-recipe 1
version 0.1.0
kernel 6.12
address-spaces 2
variant merged
call slot=0x1 flags=0x0 gpa=0x100000 size=0x1000 hva=0x7f0000000000
vcpu 0 lock
begin slot=0x1 flags=0x0 gpa=0x0 size=0x0 hva=0x0
run
vcpu 0 unlock
run
"""

import errno
import re
import shlex
from typing import NamedTuple

from . import __version__
from .invariants import Checker
from .kernels import KERNELS, check_model
from .numbers import parse_errno, parse_number
from .validate import make_region
from .vm import VM, fail_errno

RECIPE_MAGIC = "kvmviz-recipe 1"
#: The kernel a recipe written by ``recipe()`` means when it has no ``kernel`` line: the only
#: tree version kvmviz modelled before recipes named one.
LEGACY_KERNEL = "5.17"
#: x86 ``KVM_MAX_VCPUS``: a scenario names vCPUs 0..1023.
MAX_VCPUS = 1024
#: The largest count a ``step N`` line may ask for.
MAX_STEPS = 1 << 20
CALL_KEYS = ("slot", "flags", "gpa", "size", "hva")
_CALL_LIMITS = {"slot": 1 << 32, "flags": 1 << 32, "gpa": 1 << 64, "size": 1 << 64, "hva": 1 << 64}
#: vCPU actions and the words each takes after the action name.
VCPU_ACTIONS = {"lock": (), "unlock": (), "lookup": ("gfn",), "access": ("gfn", "[write]"), "smm": ("on|off",)}

#: The verb table: every action line, the words after it, what it does.
VERBS = {
    "call": ("slot=N [flags=N] [gpa=N] size=N [hva=N] [fail-prepare=ERRNO]", "a whole KVM_SET_USER_MEMORY_REGION"),
    "begin": ("slot=N [flags=N] [gpa=N] size=N [hva=N] [fail-prepare=ERRNO]", "start a call; no step runs yet"),
    "step": ("[N]", "N writer steps (default 1); the next queued write begins if no call runs"),
    "run": ("", "the writer runs until its call ends or it waits for a reader"),
    "finish": ("", "run the call to its end; an error if it waits for a reader"),
    "vcpu": ("N lock|unlock|lookup GFN|access GFN [write]|smm on|off", "vCPU N (created on first use) acts"),
    "mn": ("start|end HVA END", "an MMU-notifier invalidation of [HVA, END) starts or ends"),
}
#: Header lines (the VM's knobs), before the actions of a recipe.
HEADERS = ("kvmviz-recipe", "version", "kernel", "address-spaces", "variant")
#: The words a recipe line may start with.
RECIPE_WORDS = HEADERS + tuple(VERBS)
#: Older spellings, read as the canonical line (the ``Schedule`` script's grammar).
OLD_SPELLINGS = {"vcpuN ACTION": "vcpu N ACTION", "mmu start|end HVA END": "mn start|end HVA END",
                 "writer": "step", "writer run": "run"}
_VCPU_N = re.compile(r"vcpu([0-9]+)")


class RecipeError(ValueError):
    """A recipe or script line that cannot be understood or run; names the line.

    >>> parse_recipe("call slot=1 size=x")
    Traceback (most recent call last):
    ...
    kvmviz.engine.scenario.RecipeError: recipe line 1: 'call slot=1 size=x': size: 'x' is not a number (decimal, or hex with 0x; ASCII digits, no sign)
    """


class Recipe(NamedTuple):
    """A parsed recipe: its header lines (None when absent) and its ``(verb, args)`` actions."""

    version: str
    variant: str
    actions: list
    kernel: str = None
    address_spaces: int = None
    written: bool = False       # has the ``kvmviz-recipe`` or ``version`` line that ``recipe()`` writes


# -- parsing ---------------------------------------------------------------------------------
def _canonical(words):
    """The words of a line in today's spelling (``OLD_SPELLINGS``)."""
    head = str(words[0])
    old = _VCPU_N.fullmatch(head)
    if old:
        return ["vcpu", old.group(1)] + words[1:]
    if head == "mmu":
        return ["mn"] + words[1:]
    if head == "writer":
        if [str(w) for w in words[1:]] not in ([], ["run"]):
            raise ValueError("use 'writer' or 'writer run' (today spelled step and run)")
        return ["run"] if len(words) > 1 else ["step"]
    return words


def _call_args(rest):
    pairs = [str(w).split("=", 1) for w in rest]
    bad = [w for w, p in zip(rest, pairs) if len(p) != 2]
    if bad:
        raise ValueError(f"{bad[0]!r} is not key=value")
    kv = dict(pairs)
    unknown = set(kv) - set(CALL_KEYS) - {"fail-prepare"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; use {', '.join(CALL_KEYS)}, fail-prepare")
    missing = [k for k in ("slot", "size") if k not in kv]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    values = tuple(parse_number(kv.get(k, "0"), k, _CALL_LIMITS[k]) for k in CALL_KEYS)
    return values + (parse_errno(kv.get("fail-prepare", "0"), "fail-prepare"),)


def _step_args(rest):
    if len(rest) > 1:
        raise ValueError(f"step takes at most one count, got {' '.join(map(str, rest))!r}")
    return (parse_number(rest[0], "step count", MAX_STEPS) if rest else 1,)


def _nothing(verb):
    def parse(rest):
        if rest:
            raise ValueError(f"{verb} takes nothing, got {' '.join(map(str, rest))!r}")
        return ()
    return parse


def vcpu_args(rest, vcpus=MAX_VCPUS):
    """The words after ``vcpu`` -> ``(n, action, *args)``; ``vcpus`` bounds ``n``.

    >>> vcpu_args(["0", "access", "0x100", "write"]), vcpu_args([1, "smm", "on"])
    ((0, 'access', 256, 'write'), (1, 'smm', 'on'))
    """
    if len(rest) < 2:
        raise ValueError("vcpu takes a vCPU number and an action: " + ", ".join(VCPU_ACTIONS))
    n = parse_number(rest[0], "vcpu", MAX_VCPUS)
    if n >= vcpus:
        raise ValueError(f"vcpu {n} does not exist (this run has {vcpus} vCPU(s); pass vcpus=N to create more)")
    action, args = str(rest[1]), list(rest[2:])
    if action not in VCPU_ACTIONS:
        raise ValueError(f"unknown vcpu action {action!r}; use {', '.join(VCPU_ACTIONS)}")
    shape = VCPU_ACTIONS[action]
    if not len([a for a in shape if not a.startswith("[")]) <= len(args) <= len(shape):
        raise ValueError(f"vcpu {action} takes {' '.join(shape) or 'nothing more'}, "
                         f"got {' '.join(map(str, args))!r}")
    if action == "smm":
        if args[0] not in ("on", "off"):
            raise ValueError(f"vcpu smm takes on or off, not {args[0]!r}")
        return (n, action, args[0])
    if action == "access" and len(args) == 2 and args[1] != "write":
        raise ValueError(f"vcpu access takes a gfn and optionally 'write', not {args[1]!r}")
    return (n, action) + tuple(parse_number(a, "gfn") if i == 0 else a for i, a in enumerate(args))


def mn_args(rest):
    """The words after ``mn`` -> ``(start|end, hva_start, hva_end)``, the range not empty.

    >>> mn_args(["start", "0x1000", "0x3000"])
    ('start', 4096, 12288)
    """
    if len(rest) != 3 or rest[0] not in ("start", "end"):
        raise ValueError("mn takes start|end, then the hva range start and end (end exclusive)")
    start, end = parse_number(rest[1], "hva start", 1 << 64), parse_number(rest[2], "hva end", (1 << 64) + 1)
    if end <= start:
        raise ValueError(f"END must be above HVA (got {start:#x} {end:#x})")
    return (rest[0], start, end)


_ARGS = {"call": _call_args, "begin": _call_args, "step": _step_args, "run": _nothing("run"),
         "finish": _nothing("finish"), "mn": mn_args}


def parse_action(line, vcpus=MAX_VCPUS):
    """One action line (text, or a tuple of words and ints) -> ``(verb, args)``; ``ValueError`` says why not.

    >>> parse_action("vcpu0 access 0x100 write"), parse_action(("mmu", "start", 0x1000, 0x2000))
    (('vcpu', (0, 'access', 256, 'write')), ('mn', ('start', 4096, 8192)))
    """
    words = shlex.split(line) if isinstance(line, str) else list(line)
    if not words:
        raise ValueError("empty")
    words = _canonical(words)
    verb, rest = str(words[0]), words[1:]
    if verb == "vcpu":
        return verb, vcpu_args(rest, vcpus)
    if verb not in _ARGS:
        raise ValueError(f"unknown action {verb!r}; use {', '.join(VERBS)}")
    return verb, _ARGS[verb](rest)


def _parse_kernel(rest):
    if rest[0] not in KERNELS:
        raise ValueError(f"unknown kernel {rest[0]!r}; modelled: {', '.join(KERNELS)}")
    return rest[0]


def _parse_address_spaces(rest):
    if rest[0] not in ("1", "2"):
        raise ValueError(f"address-spaces is 1 (no SMM) or 2 (x86 with SMM), not {rest[0]!r}")
    return int(rest[0])


def _one(what):
    """A header word's parser: exactly one value, named ``what`` in the error."""
    def parse(rest):
        if len(rest) != 1:
            raise ValueError(f"takes one {what}, got {len(rest)} word(s)")
        return rest[0]
    return parse


_HEADER_WORDS = {"version": ("version", _one("version")), "variant": ("variant", _one("variant name")),
                 "kernel": ("kernel", _parse_kernel), "address-spaces": ("address_spaces", _parse_address_spaces)}


def _lines(text_or_lines):
    """``(number, raw, line)`` of each line that holds an action: text is split at newlines and ``;``."""
    if isinstance(text_or_lines, str):
        for n, raw in enumerate(text_or_lines.replace(";", "\n").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if line:
                yield n, raw.strip(), line
    else:
        for n, line in enumerate(text_or_lines, 1):      # a list of lines: each must be an action
            yield n, line, line


def parse_recipe(text, what="recipe", vcpus=MAX_VCPUS, header=True):
    """Parse recipe text (or a list of lines) into a ``Recipe``; ``RecipeError`` names the bad line.

    ``header=False`` reads actions only (a script); ``vcpus`` bounds the vCPU numbers.

    >>> r = parse_recipe("kernel 6.12; variant seed\\ncall slot=1 gpa=0x1000 size=0x1000 hva=0x10000")
    >>> r.kernel, r.variant, r.actions, r.address_spaces, r.written
    ('6.12', 'seed', [('call', (1, 0, 4096, 4096, 65536, 0))], None, False)
    """
    head = {"version": None, "variant": "merged", "kernel": None, "address_spaces": None, "written": False}
    actions = []
    for n, raw, line in _lines(text):
        try:
            if header and isinstance(line, str) and line == RECIPE_MAGIC:
                head["written"] = True
                continue
            words = shlex.split(line) if isinstance(line, str) else list(line)
            if header and words and words[0] in _HEADER_WORDS:
                field, parse = _HEADER_WORDS[words[0]]
                head[field] = parse(words[1:])
                head["written"] |= words[0] == "version"
            else:
                actions.append(parse_action(words, vcpus))
        except (ValueError, IndexError) as e:
            raise RecipeError(f"{what} line {n}: {raw!r}: {e}") from None
    return Recipe(actions=actions, **head)


def recipe_kernel(parsed, kernel=None):
    """The kernel a parsed recipe runs on: ``kernel`` if given, its ``kernel`` line, else the default.

    A recipe that ``recipe()`` wrote before it had a ``kernel`` line (it has
    the ``kvmviz-recipe``/``version`` lines) means ``LEGACY_KERNEL``; a
    hand-written fragment without one means the default version (None).

    >>> old, fragment = "kvmviz-recipe 1; version 0.1.0; call slot=1 size=0", "call slot=1 size=0"
    >>> old, fragment = parse_recipe(old), parse_recipe(fragment)
    >>> recipe_kernel(old), recipe_kernel(fragment), recipe_kernel(old, "6.12")
    ('5.17', None, '6.12')
    """
    if kernel is not None:
        return kernel
    if parsed.kernel is not None:
        return parsed.kernel
    return LEGACY_KERNEL if parsed.written else None


def _words(verb, args):
    """An action as recipe words: vCPU numbers and step counts in decimal, addresses in hex."""
    def word(i, v):
        if not isinstance(v, int) or isinstance(v, bool):
            return str(v)
        return str(v) if i == 0 and verb in ("vcpu", "step") else f"{v:#x}"
    return " ".join([verb] + [word(i, a) for i, a in enumerate(args)])


def check_call(call, where="call"):
    """``(slot, flags, gpa, size, hva[, fail_prepare])`` checked (fields that fit the ioctl), with the errno.

    ``where`` names the call in the error (``"write 0"``, ``"call 1"``).

    >>> check_call((1, 0, 0, 0x1000, 0x10000, True))
    (1, 0, 0, 4096, 65536, 12)
    """
    call = tuple(call)
    if len(call) not in (5, 6):
        raise ValueError(f"{where}: expected (slot, flags, guest_phys_addr, memory_size, userspace_addr"
                         f"[, fail_prepare]), got {call!r}")
    make_region(*call[:5])
    return call[:5] + (fail_errno(call[5] if len(call) == 6 else 0),)


def call_words(call):
    """The words after ``call``/``begin`` for ``(slot, flags, gpa, size, hva[, fail errno])``.

    >>> call_words((1, 0, 0x100000, 0x1000, 0x7f0000000000, 12))
    'slot=0x1 flags=0x0 gpa=0x100000 size=0x1000 hva=0x7f0000000000 fail-prepare=ENOMEM'
    """
    words = [f"{k}={v:#x}" for k, v in zip(CALL_KEYS, call[:5])]
    fail = call[5] if len(call) > 5 else 0
    return " ".join(words + ([f"fail-prepare={errno.errorcode.get(fail, fail)}"] if fail else []))


# -- running ---------------------------------------------------------------------------------
class Scenario:
    """A scenario that runs as it is written and can be saved as a recipe.

    Every action runs on ``self.vm`` at once and is remembered (``actions``),
    so ``to_recipe()`` gives the text that ``replay_recipe`` turns back into
    the same trace. ``steps`` are the writer's steps, ``events`` everything
    recorded (steps and reader actions), ``results`` each call's result.

    ``vm`` drives an existing VM (its knobs then come from it); otherwise
    ``kernel``, ``variant`` and ``address_spaces`` make one (a variant that
    does not apply to the version is a ``ValueError``, ``check_model``).
    ``writes`` queues calls that ``step``/``run`` begin when no call runs.
    ``check=True`` runs ``check_invariants`` after every event and keeps
    the new violations in ``notes`` (history index -> messages).

    >>> sc = Scenario(variant="seed", kernel="6.12")
    >>> sc.call(1, 0, 0x100000, 0x1000, 0x7f0000000000).result
    0
    >>> sc.to_recipe().splitlines()[-1]
    'call slot=0x1 flags=0x0 gpa=0x100000 size=0x1000 hva=0x7f0000000000'
    """

    def __init__(self, vm=None, *, variant="merged", kernel=None, address_spaces=None, check=False,
                 version=None, writes=()):
        if vm is None:
            vm = VM(kernel=check_model(kernel, variant), variant=variant, address_spaces=address_spaces)
        self.vm = vm
        self.variant = vm.variant
        self.version = version or __version__
        self.pending = [check_call(w, f"write {i}") for i, w in enumerate(writes)]
        self.actions = []
        self.updates = [] if vm.update is None else [vm.update]
        self.check = check
        self.notes = {}          # history index -> invariant violations that appeared there
        self.version_note = ""
        self._seen = []
        self._checker = None     # invariants.Checker of self.vm, made at the first check
        self._stepped = None     # the update the last ``step`` action ran, while it is the last action

    @property
    def kernel(self):
        """The modelled kernel version (``vm.kernel``)."""
        return self.vm.kernel

    def _checked(self):
        """With ``check=True``: note the invariant violations new since the last event."""
        if not self.check:
            return
        if self._checker is None or self._checker.vm is not self.vm:
            self._checker = Checker(self.vm)
        now = self._checker()
        new = [v for v in now if v not in self._seen]
        self._seen = now
        if new:
            self.notes[len(self.vm.history.events) - 1] = new

    @property
    def first_violation(self):
        """The first invariant violation noted (``check=True``), or None.

        >>> sc = Scenario(variant="no-catch-up", check=True)
        >>> sc.call(1, 0, 0, 0x1000, 0x7f0000000000).result, sc.first_violation[:29]
        (0, 'as0: at rest both sets must h')
        """
        return next((found[0] for _, found in sorted(self.notes.items())), None)

    # -- writer --------------------------------------------------------------------
    def begin(self, slot, flags, gpa, size, hva, fail_prepare=0):
        """Start a call without running it (``vm.begin_set_user_memory_region``).

        >>> sc = Scenario(); upd = sc.begin(1, 0, 0, 0x1000, 0x7f0000000000)
        >>> sc.step(3).steps[-1].function, sc.finish().result
        ('kvm_set_memslot', 0)
        """
        upd = self.vm.begin_set_user_memory_region(slot, flags, gpa, size, hva, fail_prepare=fail_prepare)
        self.actions.append(("begin", (slot, flags, gpa, size, hva, fail_errno(fail_prepare))))
        self.updates.append(upd)
        return upd

    def current(self):
        """The running update (adopted if the VM runs one), else the next queued write begun, else None."""
        upd = self.vm.update
        if upd is None and self.pending:
            upd = self.begin(*self.pending.pop(0))
        if upd is not None and upd not in self.updates:
            self.updates.append(upd)
        return upd

    def _running(self):
        upd = self.current()
        if upd is None:
            raise RuntimeError("no call is running: begin one first")
        return upd

    def _writer(self, upd, n=None):
        """Up to ``n`` steps of ``upd`` (None: until it ends or waits), checking after each."""
        for taken, _ in enumerate(upd, 1):
            self._checked()
            if taken == n:
                break
        return upd

    def _ended(self, upd, verb):
        """Record ``verb``; a call that the previous action began and that has ended is recorded as ``call``."""
        if upd.result is not None and self.actions and self.actions[-1][0] == "begin" and self.updates[-1] is upd:
            self.actions[-1] = ("call", self.actions[-1][1])      # replays the same: the run is deterministic
        else:
            self.actions.append((verb, ()))

    def step(self, n=1):
        """Run ``n`` steps of the running call (fewer if it ends); the next queued write begins if none runs.

        Steps of one call that follow each other are recorded as one ``step N``.

        >>> sc = Scenario(); _ = sc.begin(1, 0, 0, 0x1000, 0x10000); _ = sc.step(); _ = sc.step(2); sc.actions[-1]
        ('step', (3,))
        """
        upd = self._running()
        self._writer(upd, _step_args([n])[0])
        if self._stepped is upd and self.actions[-1][0] == "step" and self.actions[-1][1][0] + n < MAX_STEPS:
            self.actions[-1] = ("step", (self.actions[-1][1][0] + n,))
        else:
            self.actions.append(("step", (n,)))
        self._stepped = upd
        return upd

    def run(self):
        """The writer runs until its call ends or it waits for a reader; None if no call runs or is queued."""
        upd = self.current()
        if upd is not None:
            self._ended(self._writer(upd), "run")
        return upd

    def finish(self):
        """Run the running call to its end; ``RuntimeError`` if it waits for a reader."""
        upd = self._writer(self._running())
        if upd.result is None:
            raise RuntimeError(f"call {upd.call} is blocked ({upd.blocked}); let the readers go on first")
        self._ended(upd, "finish")
        return upd

    def call(self, slot, flags, gpa, size, hva, fail_prepare=0):
        """A whole call: begin and finish; returns its ``Update`` (errors are results)."""
        upd = self.begin(slot, flags, gpa, size, hva, fail_prepare)
        self.actions[-1] = ("call", self.actions[-1][1])
        self._writer(upd)
        if upd.result is None:
            raise RuntimeError(f"call {upd.call} is blocked ({upd.blocked}); use begin/step and let "
                               "the readers go on")
        return upd

    # -- readers -------------------------------------------------------------------
    def vcpu(self, n, action, *args):
        """A vCPU action: ``lock``, ``unlock``, ``lookup GFN``, ``access GFN [write]``, ``smm on|off``.

        vCPU ``n`` (and any before it) is created on first use.

        >>> sc = Scenario(); _ = sc.call(1, 0, 0, 0x1000, 0x7f0000000000)
        >>> sc.vcpu(0, "access", 0).reason, sc.vcpu(0, "access", 1).reason
        ('ok', 'no-slot')
        """
        n, action, *args = vcpu_args([n, action, *args])
        while len(self.vm.vcpus) <= n:
            self.vm.add_vcpu()
        v = self.vm.vcpus[n]
        run = {"lock": v.srcu_read_lock, "unlock": v.srcu_read_unlock, "lookup": v.gfn_to_memslot,
               "access": lambda gfn, write=None: v.access(gfn, write=write is not None),
               "smm": lambda on: v.set_smm(on == "on")}
        out = run[action](*args)
        self.actions.append(("vcpu", (n, action, *args)))
        self._checked()
        return out

    def mn(self, which, hva_start, hva_end):
        """An MMU-notifier invalidation: ``start`` or ``end`` of ``[hva_start, hva_end)``.

        >>> sc = Scenario(); _ = sc.call(1, 0, 0, 0x1000, 0x7f0000000000)
        >>> [(s.label, g0, g1) for _, s, g0, g1 in sc.mn("start", 0x7f0000000000, 0x7f0000000800)]
        [('#1', 0, 1)]
        """
        which, start, end = mn_args([which, hva_start, hva_end])
        fn = self.vm.mmu_notifier_invalidate_range_start if which == "start" else \
            self.vm.mmu_notifier_invalidate_range_end
        out = fn(start, end)
        self.actions.append(("mn", (which, start, end)))
        self._checked()
        return out

    # -- text --------------------------------------------------------------------------
    def do(self, verb, args):
        """Run one parsed action ``(verb, args)`` (``parse_action``)."""
        return getattr(self, verb)(*args)

    def play(self, lines, what="script", vcpus=MAX_VCPUS):
        """Parse every line first (nothing runs if one is bad), then run them; ``RecipeError`` names the action.

        >>> sc = Scenario(); sc.play(["call slot=1 size=0x1000", "vcpu 0 access 0"]); sc.results
        [0]
        """
        self.play_actions(parse_recipe(lines, what, vcpus, header=False).actions, what)

    def play_actions(self, actions, what="recipe"):
        """Run parsed ``(verb, args)`` actions in order; a refusal becomes a ``RecipeError`` naming the action."""
        for n, (verb, args) in enumerate(actions, 1):
            try:
                self.do(verb, args)
            except (TypeError, ValueError, RuntimeError) as e:
                raise RecipeError(f"{what} action {n} ({_words(verb, args)}): {e}") from None

    def to_recipe(self):
        """The recipe text: versions, model and one action per line (see the module doc)."""
        vm = self.vm
        lines = [RECIPE_MAGIC, f"version {self.version}", f"kernel {vm.kernel}",
                 f"address-spaces {vm.address_spaces}", f"variant {self.variant}"]
        for verb, args in self.actions:
            if verb in ("call", "begin"):
                lines.append(f"{verb} {call_words(args)}")
            else:
                lines.append(_words(verb, args))
        return "\n".join(lines)

    # -- what happened -------------------------------------------------------------
    @property
    def steps(self):
        """All writer steps, in order."""
        return [s for u in self.updates for s in u.steps]

    @property
    def events(self):
        """Everything recorded in the VM's history (steps and reader actions)."""
        return list(self.vm.history.events)

    @property
    def results(self):
        """The result of each call (0, -errno, ``"BUG"``, or None while running)."""
        return [u.result for u in self.updates]


def recipe(scenario):
    """The recipe text of a ``Scenario`` (``scenario.to_recipe()``).

    >>> sc = Scenario(); _ = sc.call(1, 0, 0, 0, 0)      # a failing DELETE is fine
    >>> recipe(sc).splitlines()[-1]
    'call slot=0x1 flags=0x0 gpa=0x0 size=0x0 hva=0x0'
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"recipe() takes a Scenario, not {type(scenario).__name__}: run the calls through "
                        "export.Scenario(variant=...) (it drives scenario.vm and remembers every action)")
    return scenario.to_recipe()


def replay_recipe(text, variant=None, check=False, kernel=None, address_spaces=None):
    """Run a recipe; returns the ``Scenario`` (``.steps``, ``.vm``, ``.results``).

    ``variant``, ``kernel`` and ``address_spaces`` override the recipe's
    (``recipe_kernel`` says which kernel a recipe without a ``kernel`` line
    means); ``check=True`` runs the invariant checker after every event
    (``scenario.notes``). A recipe written by another kvmviz version still
    runs; ``scenario.version_note`` then says the trace may differ, and it
    says which kernel an old recipe without a ``kernel`` line ran on.

    >>> sc = replay_recipe("variant seed; call slot=1 gpa=0 size=0x1000 hva=0x7f0000000000", kernel="6.12")
    >>> sc.results, sc.variant, sc.kernel, sc.version_note
    ([0], 'seed', '6.12', '')
    """
    parsed = parse_recipe(text)
    try:
        sc = Scenario(variant=variant or parsed.variant, check=check, kernel=recipe_kernel(parsed, kernel),
                      address_spaces=address_spaces or parsed.address_spaces)
    except ValueError as e:
        raise RecipeError(f"recipe: {e}") from None
    notes = []
    if parsed.version and parsed.version != __version__:
        notes.append(f"recipe written by kvmviz {parsed.version}, replayed by {__version__}: the trace may differ")
    if kernel is None and parsed.kernel is None and parsed.written:
        notes.append(f"the recipe names no kernel (it predates the 'kernel' line): replayed on Linux "
                     f"{LEGACY_KERNEL}, the version it was written for")
    sc.version_note = "; ".join(notes)
    sc.play_actions(parsed.actions)
    return sc
