"""``kvmviz review FILE.py:Class``: a variant against ``merged``, as one section to paste under a patch.

For each change type (CREATE, DELETE, MOVE, FLAGS_ONLY, and a MOVE whose
prepare fails) it runs the call on ``merged`` and on the variant, from the
same setup, and gives the summary line of the step diff
(``export.diff``), then the exhaustive check (``kvmviz.check.explore``)
with one vCPU reader and, where a time budget allows, two. Plain text, no
wider than 78 columns.

Clock-free like the engine: a caller with a clock passes ``clock`` (for the
seconds shown) and ``budget`` (seconds each two-reader check may take).

>>> print(review("merged", readers=(1,)).splitlines()[5])
CREATE: slot=0x1 flags=0x0 gpa=0x100000 size=0x10000 hva=0x7f0000000000
"""

import errno

from . import __version__, export
from .check import explore
from .engine.kernels import check_model
from .engine.scenario import call_words
from .variants.load import variant_name

_HVA = 0x7F0000000000
#: The setup every case but CREATE starts from: one 64 KiB slot.
SETUP = f"call slot=1 gpa=0x100000 size=0x10000 hva={_HVA:#x}"
#: ``(title, setup, call)`` of each case a review runs.
CASES = (
    ("CREATE", "", (1, 0, 0x100000, 0x10000, _HVA, 0)),
    ("DELETE", SETUP, (1, 0, 0x100000, 0, 0, 0)),
    ("MOVE", SETUP, (1, 0, 0x200000, 0x10000, _HVA, 0)),
    ("FLAGS_ONLY", SETUP, (1, 1, 0x100000, 0x10000, _HVA, 0)),
    ("MOVE with failing prepare", SETUP, (1, 0, 0x200000, 0x10000, _HVA, errno.ENOMEM)),
)


def review(variant, kernel=None, readers=(1, 2), clock=None, budget=None):
    """The review section of ``variant`` (a name, ``FILE.py:Class`` or a class) as text.

    ``readers``: the reader counts to check each case with, until one finds
    a violation; a count after the first stops at ``budget`` seconds (needs
    ``clock``) and says so.
    """
    name = variant_name(variant)
    kernel = check_model(kernel, name)
    lines = _wrap(f"kvmviz {__version__} review: variant {name} against merged, Linux {kernel} model")
    lines += _wrap(f"checks: every interleaving of the call with N vCPU readers (srcu_read_lock, access the "
                   "slot's first gfn, srcu_read_unlock, any number of times, anywhere); invariants in every state")
    for title, setup, call in CASES:
        lines += [""] + _wrap(f"{title}: {call_words(call)}") + _wrap(f"setup: {setup or 'none'}", 2)
        lines += _wrap(f"steps vs merged: {_diff_summary(name, kernel, setup, call)}", 2)
        for i, n in enumerate(readers):
            line, found = _check_line(name, kernel, setup, call, n, clock, budget if i else None)
            lines += _wrap(line, 2)
            if found:
                lines += _wrap(f"trace and recipe: {_command(name, setup, call, n)}", 2)
                break
    return "\n".join(lines)


def _diff_summary(name, kernel, setup, call):
    runs = []
    for variant in ("merged", name):
        sc = export.replay_recipe(setup, variant=variant, kernel=kernel) if setup else \
            export.Scenario(variant=variant, kernel=kernel)
        runs.append(sc.begin(*call))
        sc.run()
    text = export.diff(*runs, labels=("merged", name))
    return " ".join(text[text.rindex("summary:"):].split()).removeprefix("summary: ")


def _check_line(name, kernel, setup, call, readers, clock, budget):
    """One line on the exhaustive check with ``readers`` vCPUs, and whether it found a violation."""
    start = clock() if clock else None
    stop = (lambda: f"time budget {budget:g} s" if clock() - start > budget else None) if budget and clock else None
    r = explore([call], setup or None, variant=name, kernel=kernel, readers=readers, stop=stop)
    took = f", {clock() - start:.1f} s" if clock else ""
    figures = f"{r.states:,} states, {r.transitions:,} transitions{took}"
    head = f"check, {readers} reader{'s' * (readers != 1)}: "
    cx = r.counterexample
    if cx is None:
        return head + f"{r.verdict} ({figures})", False
    if not cx.length:
        return head + f"VIOLATION before the call: the setup already breaks an invariant: {cx.violations[0]}", True
    return head + f"VIOLATION, shortest interleaving {cx.summary()} ({figures}): {cx.violations[0]}", True


def _command(name, setup, call, readers):
    slot, flags, gpa, size, hva, fail = call
    return (f"kvmviz check --variant {name} --slot {slot} --flags {flags:#x} --gpa {gpa:#x} --size {size:#x} "
            f"--hva {hva:#x}" + (f" --fail-prepare {errno.errorcode[fail]}" if fail else "")
            + (f" --setup '{setup}'" if setup else "") + f" --readers {readers}")


def _wrap(line, indent=0):
    return export.wrap(line, indent)
