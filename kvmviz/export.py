"""Plain-text and Markdown renderings of traces and states, trace diffs, recipes.

Kernel patches are reviewed by e-mail: ``text`` renders a trace (stage,
kernel function, the generations of both sets and the locks per step) or a VM
state (a table per memslot set) in ASCII no wider than 78 columns;
``markdown`` renders the same for issue trackers; ``diff`` aligns two traces
of the same call (two variants, say) and shows where they part. A *recipe*
(a few lines of text that re-run a scenario to the same trace: ``Scenario``,
``recipe``, ``replay_recipe``) is the engine's scenario language,
``kvmviz.engine.scenario``; its names are importable from here too.

>>> from kvmviz import VM
>>> vm = VM()
>>> steps = vm.set_user_memory_region(1, 0, 0x100000, 0x10000, 0x7f0000000000)
>>> print(text(steps).splitlines()[0])
  # stage      function                       as0 set0    as0 set1    lk
>>> print(text(vm).splitlines()[4])
slot   id    base_gfn         npages userspace_addr   flags          data
"""

import difflib
import re
import textwrap

from .engine.constants import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID
from .engine.fmt import gen_text, result_text
from .engine.kernels import KERNELS
from .engine.scenario import (LEGACY_KERNEL, RECIPE_WORDS, Recipe, RecipeError, Scenario, parse_recipe, recipe,
                              recipe_kernel, replay_recipe)

WIDTH = 78
_LOCKS = (("slots_lock", "S"), ("slots_arch_lock", "A"), ("mn_invalidate_lock", "M"))
_SHORT_FLAGS = ((KVM_MEM_LOG_DIRTY_PAGES, "LOG"), (KVM_MEM_READONLY, "RO"), (KVM_MEMSLOT_INVALID, "INVALID"))
_STEP_COLS = (("#", 3, ">"), ("stage", 10, "<"), ("function", 30, "<"), ("set0", 11, "<"),
              ("set1", 11, "<"), ("lk", 3, "<"))
_SLOT_COLS = (("slot", 6, "<"), ("id", 5, "<"), ("base_gfn", 12, "<"), ("npages", 10, ">"),
              ("userspace_addr", 16, "<"), ("flags", 14, "<"), ("data", 9, "<"))


# -- small formatting helpers -------------------------------------------------------
def _cell(value, width, align):
    value = str(value)
    if len(value) > width:
        value = value[:width - 1] + "~"
    return f"{value:{align}{width}}"


def _row(cols, values):
    return " ".join(_cell(v, w, a) for (_, w, a), v in zip(cols, values)).rstrip()


def wrap(body, indent=4):
    """``body`` as lines of at most 78 columns (``WIDTH``), each indented by ``indent`` spaces.

    >>> wrap("a " * 50, 2)[1]
    '  a a a a a a a a a a a a'
    """
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
    lines = (wrap(title, 0) if title else []) + [_row(_STEP_COLS, header),
                                                  _row(_STEP_COLS, ["-" * w for _, w, _ in _STEP_COLS])]
    for i, step in enumerate(steps, 1):
        g0, g1 = _gen_cells(step, as_id)
        lines.append(_row(_STEP_COLS, (i, step.stage, step.function, g0, g1, _locks(step.locks))))
        lines += wrap(_step_body(step))
        for note in (notes or {}).get(i - 1, ()):
            lines += wrap(f"!! {note}", 6)
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
    lines = wrap(title, 0) + wrap(summary, 0)
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
            lines += wrap(_step_body(step), 12)
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
    lines += [""] + wrap(f"summary: {counts['equal'] + counts['differ']} aligned ({counts['equal']} equal, "
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


__all__ = ["text", "markdown", "diff", "diff_labels", "wrap", "model_label", "WIDTH",
           # the scenario language lives in the engine (kvmviz.engine.scenario); export keeps its names
           "recipe", "replay_recipe", "parse_recipe", "recipe_kernel", "Recipe", "Scenario", "RecipeError",
           "LEGACY_KERNEL", "RECIPE_WORDS"]
