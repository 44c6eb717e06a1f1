"""Plain-text and Markdown renderings of traces and states, trace diffs, recipes.

Kernel patches are reviewed by e-mail: ``text`` renders a trace (stage,
kernel function, the generations of both sets and the locks per step) or a VM
state (a table per memslot set) in ASCII no wider than 78 columns;
``markdown`` renders the same for issue trackers; ``diff`` aligns two traces
of the same call (two variants, say) and shows where they part; a *recipe* is
a few lines of text that re-run a scenario to the same trace.

>>> from kvmviz import VM
>>> vm = VM()
>>> steps = vm.set_user_memory_region(1, 0, 0x100000, 0x10000, 0x7f0000000000)
>>> print(text(steps).splitlines()[0])
  # stage      function                       as0 set0    as0 set1    lk
>>> print(text(vm).splitlines()[4])
slot   id    base_gfn         npages userspace_addr   flags          data
"""

import difflib
import errno
import re
import shlex
import textwrap
from typing import NamedTuple

from .engine.kernels import KERNELS, kernel_for
from .engine.numbers import parse_number
from .engine.tree.memslots import ModelBug
from .engine.constants import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID
from .engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP

WIDTH = 78
_LOCKS = (("slots_lock", "S"), ("slots_arch_lock", "A"), ("mn_invalidate_lock", "M"))
_SHORT_FLAGS = ((KVM_MEM_LOG_DIRTY_PAGES, "LOG"), (KVM_MEM_READONLY, "RO"), (KVM_MEMSLOT_INVALID, "INVALID"))
_STEP_COLS = (("#", 3, ">"), ("stage", 10, "<"), ("function", 30, "<"), ("set0", 11, "<"),
              ("set1", 11, "<"), ("lk", 3, "<"))
_SLOT_COLS = (("slot", 6, "<"), ("id", 5, "<"), ("base_gfn", 12, "<"), ("npages", 10, ">"),
              ("userspace_addr", 16, "<"), ("flags", 14, "<"), ("data", 9, "<"))


# -- small formatting helpers -------------------------------------------------------
def gen_text(g):
    """A generation as the kernel would print it, with ``|IP`` for bit 63.

    >>> gen_text(2), gen_text(2 | 1 << 63)
    ('0x2', '0x2|IP')
    """
    return f"{g & ~IP:#x}|IP" if g & IP else f"{g:#x}"


def _cell(value, width, align):
    value = str(value)
    if len(value) > width:
        value = value[:width - 1] + "~"
    return f"{value:{align}{width}}"


def _row(cols, values):
    return " ".join(_cell(v, w, a) for (_, w, a), v in zip(cols, values)).rstrip()


def _wrap(body, indent=4):
    return textwrap.wrap(body, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * indent,
                         break_on_hyphens=False) or [""]


def _flags(flags):
    names = [n for bit, n in _SHORT_FLAGS if flags & bit]
    rest = flags & ~sum(bit for bit, _ in _SHORT_FLAGS)
    return "|".join(names + ([hex(rest)] if rest else [])) or "-"


def _locks(locks):
    return "".join(c if name in locks else "-" for name, c in _LOCKS)


def model_label(vm):
    """The version a VM models, for headers and titles: ``"Linux 6.12 model"``.

    The variant and the number of address spaces are added when they are not
    the version's usual ones (``merged``; ``kvm_arch_nr_memslot_as_ids``).

    >>> from kvmviz import VM
    >>> model_label(VM(kernel="5.17")), model_label(VM(kernel="6.12", variant="seed", address_spaces=1))
    ('Linux 5.17 model', 'Linux 6.12 model (variant seed, 1 address space)')
    """
    extra = [f"variant {vm.variant}"] if vm.variant != "merged" else []
    if vm.address_spaces != KERNELS[vm.kernel].address_spaces:
        extra.append(f"{vm.address_spaces} address space{'s' if vm.address_spaces > 1 else ''}")
    return f"Linux {vm.kernel} model" + (f" ({', '.join(extra)})" if extra else "")


def check_model(kernel=None, variant="merged"):
    """The version name ``VM(kernel=kernel, variant=variant)`` runs; ``ValueError`` if they do not fit.

    Variants are changes to the tree protocol (5.17 and later); the 5.15
    array design has no inactive set to edit, so they do not apply there.

    >>> check_model(None, "seed") in KERNELS, check_model("6.12", "no-catch-up")
    (True, '6.12')
    >>> check_model("5.15", "seed")
    Traceback (most recent call last):
    ...
    ValueError: variant 'seed' changes the tree protocol of 5.17 and later; kernel 5.15 is the array design (one sorted array copied whole), where it does not apply: choose kernel 5.17 or 6.12, or variant merged
    """
    k = kernel_for(kernel)
    if variant != "merged" and k.implementation != "tree":
        trees = " or ".join(n for n, kk in KERNELS.items() if kk.implementation == "tree")
        raise ValueError(f"variant {variant!r} changes the tree protocol of 5.17 and later; kernel {k.name} "
                         "is the array design (one sorted array copied whole), where it does not apply: "
                         f"choose kernel {trees}, or variant merged")
    return k.name


def result_text(r):
    """An update's result as text: ``0``, ``-EINVAL`` style, ``BUG``/``WARN``, or "" while running.

    >>> result_text(0), result_text(-22), result_text("BUG"), result_text(None)
    ('0', '-EINVAL', 'BUG', '')
    """
    if r is None:
        return ""
    if isinstance(r, int) and r < 0:
        return f"-{errno.errorcode.get(-r, -r)}"
    return str(r)


# -- what a trace step looks like -------------------------------------------------------
def _as_of(steps):
    for s in steps:
        for t in s.touched:
            return t[0]
    return 0


def _gen_cells(step, as_id):
    gens = step.gens
    if len(gens) <= as_id:
        return "", ""
    g0, g1, active = gens[as_id]
    return tuple(("*" if active == j else " ") + gen_text(g) for j, g in enumerate((g0, g1)))


def _edits(step):
    return "; ".join(f"as{a}/set{j} {o} -> {n}" for a, j, o, n in step.touched if o != "gen")


def _step_body(step):
    parts = []
    if step.reader:
        parts.append(f"{step.actor}:")
    edits = _edits(step)
    if edits:
        parts.append(f"[edit {edits}]")
    if step.waiting:
        parts.append("(waiting)")
    parts.append(step.text)
    result = result_text(step.result)
    if result and not step.reader and result not in step.text:
        parts.append(f"=> result {result}")
    return " ".join(parts)


def _steps_of(obj):
    """The step list behind ``obj`` (a list, an ``Update``, a ``Scenario``), or None for a VM."""
    if hasattr(obj, "sets") and hasattr(obj, "history"):
        return None
    steps = getattr(obj, "steps", obj)
    return list(steps)


def _trace_title(obj, steps):
    """The header line of a trace whose VM is known (an ``Update`` or a ``Scenario``), else None."""
    vm = getattr(obj, "vm", None)
    if vm is None:
        return None
    return f"{model_label(vm)}, variant {vm.variant}: {len(steps)} steps"


# -- text -------------------------------------------------------------------------------
def text(steps_or_vm, notes=None):
    """ASCII rendering (<= 78 columns) of a trace or of a VM's state.

    A trace (a list of ``Step``s, an ``Update`` or a ``Scenario``; the last
    two start with a line naming the modelled version) gives one row per
    step: number, stage, kernel function, the generation of each set of the
    address space being changed (``*`` marks the active set, ``|IP``
    the in-progress bit) and the locks held (S = slots_lock, A =
    slots_arch_lock, M = mn_invalidate_lock), then the step's text. ``notes``
    maps a step's position to extra lines (e.g. invariant violations). A VM
    gives a table per memslot set.

    >>> from kvmviz import VM
    >>> vm = VM(); steps = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> print("\\n".join(text(steps[-4:]).splitlines()[2:4]))
      1 activate   kvm_swap_active_memslots        0x0        *0x2        S--
        store the final generation 0x2 (= 0x0 + 2) in as0/set1; as0/set0 is now
    """
    steps = _steps_of(steps_or_vm)
    if steps is None:
        return _state_text(steps_or_vm)
    as_id = _as_of(steps)
    header = [f"{n if n in ('#', 'stage', 'function', 'lk') else f'as{as_id} {n}'}" for n, _, _ in _STEP_COLS]
    title = _trace_title(steps_or_vm, steps)
    lines = (_wrap(title, 0) if title else []) + [_row(_STEP_COLS, header),
                                                  _row(_STEP_COLS, ["-" * w for _, w, _ in _STEP_COLS])]
    for i, step in enumerate(steps, 1):
        g0, g1 = _gen_cells(step, as_id)
        lines.append(_row(_STEP_COLS, (i, step.stage, step.function, g0, g1, _locks(step.locks))))
        lines += _wrap(_step_body(step))
        for note in (notes or {}).get(i - 1, ()):
            lines += _wrap(f"!! {note}", 6)
    return "\n".join(lines)


def _slot_row(slot):
    data = " ".join(a.label for a in (slot.dirty_bitmap, slot.arch) if a is not None) or "-"
    return (slot.label, slot.id, f"{slot.base_gfn:#x}", f"{slot.npages:#x}", f"{slot.userspace_addr:#x}",
            _flags(slot.flags), data)


def _last_used(s):
    """The set's ``last_used_slot``: a slot (trees), or an array index (5.15, ``lru_slot``)."""
    last = s.last_used_slot
    if isinstance(last, int):
        entries = s.entries()
        return f"index {last}" + (f" ({entries[last].label})" if last < len(entries) else "")
    return last.label if last is not None else "-"


def _set_rows(vm, as_id):
    out = []
    for s in dict.fromkeys(vm.sets[as_id]):      # the 5.15 array at rest: one structure, shown once
        active = vm.active_idx[as_id] == s.node_idx
        last = _last_used(s)
        title = (f"{s.name} ({'ACTIVE' if active else 'inactive'}), generation {gen_text(s.generation)}, "
                 f"last_used_slot {last}")
        out.append((title, [_slot_row(slot) for slot in s.slots()]))
    return out


def _shown_address_spaces(vm):
    shown = [a for a in range(len(vm.sets)) if any(len(s) for s in vm.sets[a])]
    return shown or [0]


def _vm_summary(vm):
    upd = vm.update
    running = f"update {upd.call} running ({upd.change})" if upd is not None else "no update running"
    locks = ", ".join(sorted(vm.locks)) or "none"
    pages = f"nr_memslot_pages {vm.nr_memslot_pages:#x}, " if vm.implementation == "tree" else ""   # 5.17+
    return (f"VM on the Linux {vm.kernel} model, variant {vm.variant}, {vm.address_spaces} address space(s)",
            f"{pages}locks held: {locks}, {running}")


def _state_text(vm):
    title, summary = _vm_summary(vm)
    lines = _wrap(title, 0) + _wrap(summary, 0)
    for as_id in _shown_address_spaces(vm):
        for title, rows in _set_rows(vm, as_id):
            lines += ["", title, _row(_SLOT_COLS, [n for n, _, _ in _SLOT_COLS]),
                      _row(_SLOT_COLS, ["-" * w for _, w, _ in _SLOT_COLS])]
            lines += [_row(_SLOT_COLS, r) for r in rows] or ["(empty)"]
    return "\n".join(lines)


# -- markdown ------------------------------------------------------------------------------
def _md(value):
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(v) for v in r) + " |" for r in rows]
    return lines


def markdown(steps_or_vm, notes=None):
    """Markdown rendering of a trace or a VM state (GitHub-style tables).

    >>> from kvmviz import VM
    >>> vm = VM(); steps = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> print(markdown(steps).splitlines()[0])
    | # | stage | function | as0 set0 | as0 set1 | locks | what happens |
    >>> print(markdown(VM(kernel="6.12").begin_set_user_memory_region(1, 0, 0, 0, 0)).splitlines()[0])
    **Linux 6.12 model, variant merged: 0 steps**
    """
    steps = _steps_of(steps_or_vm)
    if steps is None:
        vm = steps_or_vm
        lines = ["**{}**: {}".format(*_vm_summary(vm))]
        for as_id in _shown_address_spaces(vm):
            for title, rows in _set_rows(vm, as_id):
                lines += ["", f"**{title}**", ""] + _md_table([n for n, _, _ in _SLOT_COLS], rows)
        return "\n".join(lines)
    as_id = _as_of(steps)
    rows = []
    for i, step in enumerate(steps, 1):
        g0, g1 = _gen_cells(step, as_id)
        body = " ".join([_step_body(step)] + [f"**{n}**" for n in (notes or {}).get(i - 1, ())])
        g0, g1 = (g[1:] + " (active)" if g.startswith("*") else g.strip() for g in (g0, g1))
        rows.append((i, step.stage, f"`{step.function}`", g0, g1,
                     _locks(step.locks), body))
    title = _trace_title(steps_or_vm, steps)
    return "\n".join(([f"**{title}**", ""] if title else []) +
                     _md_table(["#", "stage", "function", f"as{as_id} set0", f"as{as_id} set1", "locks",
                                "what happens"], rows))


# -- diff --------------------------------------------------------------------------------------
_LABEL = re.compile(r"#\d+|`new`")


def _key(step):
    return (step.stage, step.function, step.locks)


def _differences(a, b, texts=False):
    out = []
    if _key(a) != _key(b):
        out.append(("function", f"{a.stage} {a.function}", f"{b.stage} {b.function}"))
    ta, tb = a.touched, b.touched
    if [t[:2] for t in ta] != [t[:2] for t in tb]:
        out.append(("sets", _edits(a) or "-", _edits(b) or "-"))
    elif [t[2:] for t in ta] != [t[2:] for t in tb]:
        out.append(("slots", _edits(a) or "-", _edits(b) or "-"))
    elif not out and _LABEL.findall(a.text) != _LABEL.findall(b.text):
        out.append(("objects", a.text, b.text))
    if texts and a.text != b.text and not any(kind == "objects" for kind, _, _ in out):
        out.append(("text", a.text, b.text))
    if a.gens != b.gens:
        out.append(("gens", _gens_line(a), _gens_line(b)))
    if a.locks != b.locks:
        out.append(("locks", _locks(a.locks), _locks(b.locks)))
    if a.result != b.result:
        out.append(("result", result_text(a.result) or "-", result_text(b.result) or "-"))
    return out


def _gens_line(step):
    return "; ".join(f"as{i} " + " ".join(("*" if act == j else "") + gen_text(g) for j, g in enumerate((g0, g1)))
                     for i, (g0, g1, act) in enumerate(step.gens))


def _pairs(a, b):
    """Align two step lists on (stage, function); yields (i, j) with None for a gap."""
    matcher = difflib.SequenceMatcher(None, [_key(s) for s in a], [_key(s) for s in b], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal" or op == "replace":
            n = min(i2 - i1, j2 - j1)
            yield from ((i1 + k, j1 + k) for k in range(n))
            yield from ((i, None) for i in range(i1 + n, i2))
            yield from ((None, j) for j in range(j1 + n, j2))
        else:
            yield from ((i, None) for i in range(i1, i2))
            yield from ((None, j) for j in range(j1, j2))


def _model_of(obj):
    """``(kernel, variant, address spaces)`` of the VM behind an ``Update`` or ``Scenario``, else None."""
    vm = getattr(obj, "vm", None)
    return None if vm is None else (vm.kernel, vm.variant, vm.address_spaces)


def diff_labels(model_a, model_b):
    """Short names for two ``(kernel, variant, address spaces)`` models: only what differs.

    >>> diff_labels(("5.17", "merged", 2), ("6.12", "merged", 2))
    ('Linux 5.17', 'Linux 6.12')
    >>> diff_labels(("6.12", "merged", 2), ("6.12", "seed", 1))
    ('merged, 2 AS', 'seed, 1 AS')
    """
    names = ([f"Linux {m[0]}" for m in (model_a, model_b)], [m[1] for m in (model_a, model_b)],
             [f"{m[2]} AS" for m in (model_a, model_b)])
    parts = [n for n in names if n[0] != n[1]] or names[:1]
    return tuple(", ".join(p[i] for p in parts) for i in (0, 1))


def diff(steps_a, steps_b, labels=None, texts=None):
    """Align two traces step by step and show where they differ (<= 78 columns).

    Steps are matched on (stage, kernel function, locks held). Each line is ``=`` (same
    function, edits, slot objects, generations, locks and result), ``!``
    (matched but different; the differences follow), ``-`` (only in the first
    trace) or ``+`` (only in the second). A summary ends the diff.

    Traces given as ``Update``s or ``Scenario``s know their VM: ``labels``
    then default to what differs between the two models (``diff_labels``),
    else to ``("a", "b")``. ``texts=True`` also reports steps whose text alone
    differs, which is how two kernel versions usually part (a check or a hook
    that one version has); the default turns it on when the two traces come
    from different kernel versions.

    >>> from kvmviz import VM
    >>> a = VM().set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> b = VM(variant="seed").set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> print(diff(a, b, labels=("merged", "seed")).splitlines()[-1])
    in seed; results 0 / 0; final generations equal
    >>> ua, ub = (VM(kernel=k).begin_set_user_memory_region(1, 0, 1 << 52, 0x1000, 0x10000) for k in ("5.17", "6.12"))
    >>> runs = [list(u) for u in (ua, ub)]
    >>> out = " ".join(diff(ua, ub).split()); out[:out.index("(")], "results 0 / -EINVAL" in out
    ('a = Linux 5.17 ', True)
    """
    models = _model_of(steps_a), _model_of(steps_b)
    a, b = _steps_of(steps_a), _steps_of(steps_b)
    known = None not in models
    la, lb = labels or (diff_labels(*models) if known else ("a", "b"))
    if texts is None:
        texts = known and models[0][0] != models[1][0]
    lines = [f"a = {la} ({len(a)} steps), b = {lb} ({len(b)} steps)",
             "   a    b    stage      function", "---- ----  - ---------- " + "-" * 30]
    counts = {"equal": 0, "differ": 0, "a": 0, "b": 0}
    kinds = {}
    for i, j in _pairs(a, b):
        step = a[i] if i is not None else b[j]
        if i is None or j is None:
            mark, who = ("-", "a") if j is None else ("+", "b")
            counts[who] += 1
            lines.append(_diff_row(i, j, mark, step))
            lines += _wrap(_step_body(step), 12)
            continue
        found = _differences(a[i], b[j], texts)
        counts["differ" if found else "equal"] += 1
        lines.append(_diff_row(i, j, "!" if found else "=", step))
        for kind, va, vb in found:
            kinds[kind] = kinds.get(kind, 0) + 1
            lines += _wrap_pair(kind, va, vb)
    ra, rb = (result_text(s[-1].result) or "none" if s else "-" for s in (a, b))
    same = "equal" if a and b and a[-1].gens == b[-1].gens else "different"
    what = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    lines += [""] + _wrap(f"summary: {counts['equal'] + counts['differ']} aligned ({counts['equal']} equal, "
                          f"{counts['differ']} differ{': ' + what if what else ''}), {counts['a']} only in "
                          f"{la}, {counts['b']} only in {lb}; results {ra} / {rb}; final generations {same}", 0)
    return "\n".join(lines)


def _wrap_pair(kind, va, vb):
    out = []
    for head, value in ((f"{kind:<8} a: ", va), (f"{'':<8} b: ", vb)):
        out += textwrap.wrap(value, WIDTH, initial_indent=" " * 12 + head, subsequent_indent=" " * 23,
                             break_on_hyphens=False)
    return out


def _diff_row(i, j, mark, step):
    num = (lambda k: "-" if k is None else str(k + 1))
    return f"{num(i):>4} {num(j):>4}  {mark} {_cell(step.stage, 10, '<')} {_cell(step.function, 50, '<')}".rstrip()


# -- recipes -------------------------------------------------------------------------------------
RECIPE_MAGIC = "kvmviz-recipe 1"
_CALL_KEYS = ("slot", "flags", "gpa", "size", "hva")
#: the words a recipe line may start with
RECIPE_WORDS = ("kvmviz-recipe", "version", "kernel", "address-spaces", "variant", "call", "begin", "step", "finish",
                "vcpu", "mn")


class RecipeError(ValueError):
    """A recipe line that cannot be understood; names the line.

    >>> parse_recipe("call slot=1 size=x")
    Traceback (most recent call last):
    ...
    kvmviz.export.RecipeError: recipe line 1: 'call slot=1 size=x': size: 'x' is not a number (decimal, or hex with 0x; ASCII digits, no sign)
    """


class Scenario:
    """A scenario that runs as it is written and can be saved as a recipe.

    Every action runs on ``self.vm`` at once and is remembered, so
    ``recipe(scenario)`` gives the text that ``replay_recipe`` turns back into
    the same trace. ``steps`` are the writer's steps, ``events`` everything
    recorded (steps and reader actions), ``results`` each call's result.

    ``kernel`` and ``address_spaces`` pick the modelled version and its
    number of address spaces (``VM(kernel=..., address_spaces=...)``); a
    variant that does not apply to the version is a ``ValueError``
    (``check_model``).

    >>> sc = Scenario(variant="seed", kernel="6.12")
    >>> sc.call(1, 0, 0x100000, 0x1000, 0x7f0000000000).result
    0
    >>> print(recipe(sc))
    kvmviz-recipe 1
    version 0.1.0
    kernel 6.12
    address-spaces 2
    variant seed
    call slot=0x1 flags=0x0 gpa=0x100000 size=0x1000 hva=0x7f0000000000
    """

    def __init__(self, variant="merged", version=None, check=False, kernel=None, address_spaces=None):
        from . import VM, __version__
        self.variant = variant
        self.version = version or __version__
        self.vm = VM(kernel=check_model(kernel, variant), variant=variant, address_spaces=address_spaces)
        self.actions = []
        self.updates = []
        self.vcpus = {}
        self.check = check
        self.crash = None        # the ModelBug that stopped a call, if any
        self.notes = {}          # history index -> invariant violations that appeared there
        self._seen = []

    def _checked(self):
        """With ``check=True``: note the invariant violations new since the last event."""
        if not self.check:
            return
        from .engine.invariants import check_invariants
        now = check_invariants(self.vm)
        new = [v for v in now if v not in self._seen]
        self._seen = now
        if new:
            self.notes[len(self.vm.history.events) - 1] = new

    def _advance(self, upd):
        """Iterate ``upd``, checking after each step; stops if a broken variant wrecks the model."""
        while True:
            try:
                step = next(upd)
            except StopIteration:
                return
            except ModelBug as e:
                self.crash = e
                return
            self._checked()
            yield step

    @property
    def kernel(self):
        """The modelled kernel version (``vm.kernel``)."""
        return self.vm.kernel

    # -- writer --------------------------------------------------------------------
    def begin(self, slot, flags, gpa, size, hva, fail_prepare=0):
        """Start a call without running it (``vm.begin_set_user_memory_region``).

        >>> sc = Scenario(); upd = sc.begin(1, 0, 0, 0x1000, 0x7f0000000000)
        >>> sc.step(3).steps[-1].function, sc.finish().result
        ('kvm_set_memslot', 0)
        """
        upd = self.vm.begin_set_user_memory_region(slot, flags, gpa, size, hva, fail_prepare=fail_prepare)
        self.actions.append(("begin", (slot, flags, gpa, size, hva, _errno_of(fail_prepare))))
        self.updates.append(upd)
        return upd

    def step(self, n=1):
        """Run ``n`` steps of the running call (fewer if it ends)."""
        upd = self._running()
        for _, _step in zip(range(n), self._advance(upd)):
            pass
        self.actions.append(("step", (n,)))
        return upd

    def finish(self):
        """Run the running call to its end; ``RuntimeError`` if it stays blocked."""
        upd = self._running()
        for step in self._advance(upd):
            if step.waiting:
                raise RuntimeError(f"call {upd.call} is blocked ({upd.blocked}); let the readers go on first")
        self.actions.append(("finish", ()))
        return upd

    def call(self, slot, flags, gpa, size, hva, fail_prepare=0):
        """A whole call: begin and finish; returns its ``Update`` (errors are results)."""
        upd = self.begin(slot, flags, gpa, size, hva, fail_prepare)
        self.actions[-1] = ("call", self.actions[-1][1])
        for step in self._advance(upd):
            if step.waiting:
                raise RuntimeError(f"call {upd.call} is blocked ({upd.blocked}); use begin/step and let "
                                   "the readers go on")
        return upd

    def _running(self):
        upd = self.vm.update
        if upd is None:
            raise RuntimeError("no call is running: begin one first")
        return upd

    # -- readers -------------------------------------------------------------------
    def vcpu(self, n, action, *args):
        """A vCPU action: ``lock``, ``unlock``, ``lookup GFN``, ``access GFN [write]``, ``smm on|off``.

        vCPU ``n`` (and any before it) is created on first use.

        >>> sc = Scenario(); _ = sc.call(1, 0, 0, 0x1000, 0x7f0000000000)
        >>> sc.vcpu(0, "access", 0).reason, sc.vcpu(0, "access", 1).reason
        ('ok', 'no-slot')
        """
        while len(self.vcpus) <= n:
            self.vcpus[len(self.vcpus)] = self.vm.add_vcpu()
        v = self.vcpus[n]
        run = {"lock": lambda: v.srcu_read_lock(), "unlock": lambda: v.srcu_read_unlock(),
               "lookup": lambda gfn: v.gfn_to_memslot(gfn),
               "access": lambda gfn, write=False: v.access(gfn, write=bool(write)),
               "smm": lambda on="on": v.set_smm(on not in ("off", 0))}
        if action not in run:
            raise RecipeError(f"unknown vcpu action {action!r}; use {', '.join(run)}")
        out = run[action](*args)
        self.actions.append(("vcpu", (n, action) + tuple(args)))
        self._checked()
        return out

    def mn(self, which, hva_start, hva_end):
        """An MMU-notifier invalidation: ``start`` or ``end`` of ``[hva_start, hva_end)``.

        >>> sc = Scenario(); _ = sc.call(1, 0, 0, 0x1000, 0x7f0000000000)
        >>> [(s.label, g0, g1) for _, s, g0, g1 in sc.mn("start", 0x7f0000000000, 0x7f0000000800)]
        [('#1', 0, 1)]
        """
        fn = {"start": self.vm.mmu_notifier_invalidate_range_start,
              "end": self.vm.mmu_notifier_invalidate_range_end}.get(which)
        if fn is None:
            raise RecipeError(f"mn takes start or end, not {which!r}")
        out = fn(hva_start, hva_end)
        self.actions.append(("mn", (which, hva_start, hva_end)))
        self._checked()
        return out

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


def _errno_of(fail):
    if fail is True:
        return errno.ENOMEM
    return int(fail or 0)


def _num(v):
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def recipe(scenario):
    """The recipe text of a ``Scenario``: versions, model and one action per line.

    Header lines: ``version`` (of kvmviz), ``kernel`` (the modelled Linux
    version), ``address-spaces``, ``variant``. Lines: ``call``/``begin`` with ``slot= flags= gpa= size= hva=`` and an
    optional ``fail-prepare=ERRNO``; ``step N``; ``finish``; ``vcpu N ACTION
    [ARGS]``; ``mn start|end HVA_START HVA_END``. ``#`` starts a comment.

    >>> sc = Scenario(); _ = sc.call(1, 0, 0, 0, 0)      # a failing DELETE is fine
    >>> recipe(sc).splitlines()[-1]
    'call slot=0x1 flags=0x0 gpa=0x0 size=0x0 hva=0x0'
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"recipe() takes a Scenario, not {type(scenario).__name__}: run the calls through "
                        "export.Scenario(variant=...) (it drives scenario.vm and remembers every action)")
    vm = scenario.vm
    lines = [RECIPE_MAGIC, f"version {scenario.version}", f"kernel {vm.kernel}",
             f"address-spaces {vm.address_spaces}", f"variant {scenario.variant}"]
    for kind, args in scenario.actions:
        if kind in ("call", "begin"):
            *region, fail = args
            words = [f"{k}={v:#x}" for k, v in zip(_CALL_KEYS, region)]
            if fail:
                words.append(f"fail-prepare={errno.errorcode.get(fail, fail)}")
            lines.append(" ".join([kind] + words))
        else:
            lines.append(" ".join([kind] + [_num(a) for a in args]))
    return "\n".join(lines)


#: The version a recipe written by ``recipe()`` means when it has no ``kernel`` line: the only
#: tree version kvmviz modelled before recipes named one.
LEGACY_KERNEL = "5.17"


class Recipe(NamedTuple):
    """A parsed recipe: its header lines (None when absent) and its actions."""

    version: str
    variant: str
    actions: list
    kernel: str = None
    address_spaces: int = None
    written: bool = False       # has the ``kvmviz-recipe`` or ``version`` line that ``recipe()`` writes


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


def parse_recipe(text):
    """Parse recipe text into a ``Recipe``; ``RecipeError`` names the bad line.

    >>> r = parse_recipe("kernel 6.12; variant seed\\ncall slot=1 gpa=0x1000 size=0x1000 hva=0x10000")
    >>> r.kernel, r.variant, r.actions, r.address_spaces, r.written
    ('6.12', 'seed', [('call', (1, 0, 4096, 4096, 65536, 0))], None, False)
    """
    head = {"version": None, "variant": "merged", "kernel": None, "address_spaces": None, "written": False}
    actions = []
    for n, raw in enumerate(text.replace(";", "\n").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            words = shlex.split(line)
            kind, rest = words[0], words[1:]
            head["written"] |= line == RECIPE_MAGIC or kind == "version"
            if line == RECIPE_MAGIC:
                continue
            if kind in _HEADER_WORDS:
                field, parse = _HEADER_WORDS[kind]
                head[field] = parse(rest)
            else:
                actions.append((kind, _parse_args(kind, rest)))
        except (ValueError, IndexError) as e:
            raise RecipeError(f"recipe line {n}: {raw.strip()!r}: {e}") from None
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


#: x86 ``KVM_MAX_VCPUS``: a recipe names vCPUs 0..1023.
MAX_VCPUS = 1024
#: The largest count a ``step N`` line may ask for.
MAX_STEPS = 1 << 20
_CALL_LIMITS = {"slot": 1 << 32, "flags": 1 << 32, "gpa": 1 << 64, "size": 1 << 64, "hva": 1 << 64}
#: vCPU actions and the words each takes after the action name.
_VCPU_ARGS = {"lock": (), "unlock": (), "lookup": ("gfn",), "access": ("gfn", "[write]"), "smm": ("on|off",)}


def _fail_prepare(word):
    if word[:1].isalpha():
        value = getattr(errno, word, None)
        if not isinstance(value, int) or not word.startswith("E"):
            raise ValueError(f"fail-prepare={word}: not an errno name (e.g. ENOMEM, EINVAL)")
        return value
    value = parse_number(word, "fail-prepare", 1 << 12)
    if value and value not in errno.errorcode:
        raise ValueError(f"fail-prepare={word}: {value} is no errno")
    return value


def _call_args(rest):
    pairs = [w.split("=", 1) for w in rest]
    bad = [w for w, p in zip(rest, pairs) if len(p) != 2]
    if bad:
        raise ValueError(f"{bad[0]!r} is not key=value")
    kv = dict(pairs)
    unknown = set(kv) - set(_CALL_KEYS) - {"fail-prepare"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; use {', '.join(_CALL_KEYS)}, "
                         "fail-prepare")
    missing = [k for k in ("slot", "size") if k not in kv]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    values = tuple(parse_number(kv.get(k, "0"), k, _CALL_LIMITS[k]) for k in _CALL_KEYS)
    return values + (_fail_prepare(kv.get("fail-prepare", "0")),)


def _vcpu_args(rest):
    if len(rest) < 2:
        raise ValueError("vcpu takes a vCPU number and an action: " + ", ".join(_VCPU_ARGS))
    n, action, args = parse_number(rest[0], "vcpu", MAX_VCPUS), rest[1], rest[2:]
    if action not in _VCPU_ARGS:
        raise ValueError(f"unknown vcpu action {action!r}; use {', '.join(_VCPU_ARGS)}")
    shape = _VCPU_ARGS[action]
    if not len([a for a in shape if not a.startswith("[")]) <= len(args) <= len(shape):
        raise ValueError(f"vcpu {action} takes {' '.join(shape) or 'nothing more'}, got {' '.join(args)!r}")
    if action == "smm":
        if args[0] not in ("on", "off"):
            raise ValueError(f"vcpu smm takes on or off, not {args[0]!r}")
        return (n, action, args[0])
    if action == "access" and len(args) == 2 and args[1] != "write":
        raise ValueError(f"vcpu access takes a gfn and optionally 'write', not {args[1]!r}")
    return (n, action) + tuple(parse_number(a, "gfn") if i == 0 else a for i, a in enumerate(args))


def _parse_args(kind, rest):
    if kind in ("call", "begin"):
        return _call_args(rest)
    if kind == "step":
        if len(rest) > 1:
            raise ValueError(f"step takes at most one count, got {' '.join(rest)!r}")
        return (parse_number(rest[0], "step count", MAX_STEPS) if rest else 1,)
    if kind == "finish":
        if rest:
            raise ValueError(f"finish takes nothing, got {' '.join(rest)!r}")
        return ()
    if kind == "vcpu":
        return _vcpu_args(rest)
    if kind == "mn":
        if len(rest) != 3 or rest[0] not in ("start", "end"):
            raise ValueError("mn takes start|end, then the hva range start and end (end exclusive)")
        return (rest[0], parse_number(rest[1], "hva start", 1 << 64), parse_number(rest[2], "hva end", 1 << 65))
    raise ValueError(f"unknown action {kind!r}; use {', '.join(RECIPE_WORDS[1:])}")


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
    from . import __version__
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
    runners = {"call": sc.call, "begin": sc.begin, "step": sc.step, "finish": sc.finish,
               "vcpu": sc.vcpu, "mn": sc.mn}
    for n, (kind, args) in enumerate(parsed.actions, 1):
        try:
            runners[kind](*args)
        except (TypeError, ValueError, RuntimeError) as e:
            words = " ".join(_num(a) for a in args)
            raise RecipeError(f"recipe action {n} ({kind} {words}): {e}") from None
    return sc


__all__ = ["text", "markdown", "diff", "diff_labels", "recipe", "replay_recipe", "parse_recipe",
           "recipe_kernel", "Recipe", "Scenario", "RecipeError", "gen_text", "model_label", "check_model",
           "LEGACY_KERNEL", "WIDTH"]
