"""The ``kvmviz`` command (also ``python -m kvmviz``): explain, diff, recipes.

- ``kvmviz explain --slot N --gpa X --size X --hva X [--flags X] [--as N]
  [--kernel K] [--address-spaces N] [--variant V] [--fail-prepare [ERRNO]]
  [--setup RECIPE]`` prints the plain-text trace of one
  ``KVM_SET_USER_MEMORY_REGION`` on the model of Linux ``K``, the invariant
  violations each step introduces, and the memslot sets afterwards.
- ``kvmviz diff --variant A --variant B ...`` or ``kvmviz diff --kernel 5.17
  --kernel 6.12 ...`` (same call options) runs the call on two models and
  prints ``export.diff`` of the two traces. One ``--kernel`` (or ``--variant``)
  applies to both sides; two of each pair up in order.
- ``kvmviz recipe run FILE [--kernel K] [--address-spaces N]`` re-runs a
  scenario recipe (``kvmviz.engine.scenario``), optionally on another model.
- ``kvmviz replay FILE [--step N]`` replays a QEMU ``kvm_set_user_memory`` trace
  (``kvmviz.trace.cli``).

``RECIPE`` is a file or the recipe text itself, lines separated by ``;``.
Exit status: 0 on success, 1 when the call fails in the kernel (the errno is
printed) or hits a kernel ``BUG()``, 2 for bad arguments or a bad recipe.

Each subcommand is a function ``add_parser(subparsers)`` in ``SUBCOMMANDS``
that registers its parser with ``set_defaults(func=run)``, where
``run(args, out)`` returns the exit status; another module adds a subcommand
by appending its own ``add_parser`` to the list.

>>> import io; out = io.StringIO()
>>> main(["explain", "--slot", "1", "--gpa", "0x1000", "--size", "0x1000", "--hva", "0x7f0000000000"], out)
0
>>> out.getvalue().splitlines()[0].replace(kernels.DEFAULT_KERNEL, "K")
'kvmviz 0.1.0, Linux K model, variant merged: KVM_SET_USER_MEMORY_REGION'
"""

import argparse
import errno
import os
import sys
import time
import traceback

from . import __version__, check, export, review, variants
from .engine import kernels
from .engine.errors import ModelBug
from .engine.fmt import result_text
from .engine.kernels import KERNELS, check_model
from .engine.numbers import check_number, parse_errno, parse_number
from .engine.scenario import RECIPE_WORDS, RecipeError, Scenario, parse_recipe, recipe_kernel, replay_recipe
from .host.cli import add_parser as add_host_check
from .inputs import RECIPE_LIMIT, read_text
from .trace.capture_cli import add_parser as add_capture
from .trace.cli import add_parser as add_replay
from .variants.load import VariantError, is_spec, raised, user_frame, variant_name


class UsageError(Exception):
    """Bad input from the command line or a recipe: exit status 2.

    >>> main(["recipe", "run", "/no/such/recipe"])
    2
    """


def _number(text):
    """argparse type: a non-negative integer (``kvmviz.engine.numbers``: decimal, or hex with 0x).

    A sign is read only to say that the value is negative.
    """
    try:
        return check_number(parse_number(text, None, signed=True), None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _errno_name(text):
    """argparse type for ``--fail-prepare``: an errno name or number (``numbers.parse_errno``)."""
    try:
        return parse_errno(text, None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_call_options(p):
    p.add_argument("--slot", type=_number, required=True, help="slot id (bits 16..31 may carry the address space)")
    p.add_argument("--gpa", type=_number, default=0, help="guest_phys_addr")
    p.add_argument("--size", type=_number, default=0, help="memory_size (0 deletes the slot)")
    p.add_argument("--hva", type=_number, default=0, help="userspace_addr")
    p.add_argument("--flags", type=_number, default=0, help="1 = LOG_DIRTY_PAGES, 2 = READONLY")
    p.add_argument("--as", dest="as_id", type=_number, default=0, help="address space (1 = SMM on x86)")
    p.add_argument("--fail-prepare", nargs="?", const=errno.ENOMEM, default=0, type=_errno_name,
                   metavar="ERRNO", help="make kvm_arch_prepare_memory_region fail (default ENOMEM)")
    p.add_argument("--setup", metavar="RECIPE", help="a recipe (file, or text with ';' between lines) "
                                                    "run first")


def _slot(args):
    if args.as_id and args.slot > 0xFFFF:
        raise UsageError(f"--slot {args.slot:#x} already carries an address space; drop --as")
    return args.as_id << 16 | args.slot


def _recipe_text(spec):
    if os.path.exists(spec):
        return read_text(spec, RECIPE_LIMIT, "recipe")
    words = spec.replace(";", " ").split()
    if words and words[0] in RECIPE_WORDS:
        return spec
    raise UsageError(f"no such recipe file: {spec}")


VARIANT_HELP = ("a shipped variant (" + ", ".join(variants.names()) + ") or your own, path/to/file.py:ClassName "
                "(a kvmviz.MergedProtocol subclass; kvmviz runs that file as Python, as a test runner would, "
                "so only name files you would run); default: merged, or the setup recipe's")


def _variant_arg(text):
    """argparse type for ``--variant``: a registered name or ``FILE.py:Class`` (loaded when the command runs)."""
    if text in variants.names() or is_spec(text):
        return text
    raise argparse.ArgumentTypeError(f"unknown variant {text!r}: choose from {', '.join(variants.names())}, "
                                     "or name your own as path/to/file.py:ClassName")


def _load(variant):
    """``variant`` ready for ``VM(variant=...)``: a ``FILE.py:Class`` is imported and registered first."""
    return variant_name(variant) if variant else variant


def _add_debug(p):
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


def _add_model_options(p, twice=False):
    """``--kernel`` and ``--address-spaces`` (``--kernel`` may be given twice for ``diff``)."""
    p.add_argument("--kernel", choices=list(KERNELS), action="append" if twice else "store",
                   help="modelled Linux version (default: the setup recipe's, else "
                        f"{kernels.DEFAULT_KERNEL})" + ("; give it twice to compare versions" if twice else ""))
    p.add_argument("--address-spaces", type=int, choices=(1, 2), metavar="N",
                   help="memslot address spaces: 2 (x86 with SMM, the default) or 1 (no SMM: 6.x only)")


def _scenario(args, variant, kernel):
    """A checked ``Scenario`` after the ``--setup`` recipe, on the model of ``kernel`` under ``variant``."""
    variant = _load(variant)
    if not args.setup:
        variant = variant or "merged"
        return Scenario(variant=variant, check=True, kernel=check_model(kernel, variant),
                        address_spaces=args.address_spaces)
    text = _recipe_text(args.setup)
    parsed = parse_recipe(text)
    variant = variant or _load(parsed.variant)
    kernel = check_model(recipe_kernel(parsed, kernel), variant)
    sc = replay_recipe(text, variant=variant, kernel=kernel, address_spaces=args.address_spaces, check=True)
    if sc.vm.update is not None:
        raise UsageError("the --setup recipe leaves a call running; end it with 'finish'")
    return sc


def _run_call(sc, args):
    """Run the call of ``args`` on ``sc``; returns its ``Update`` (it may be blocked)."""
    upd = sc.begin(_slot(args), args.flags, args.gpa, args.size, args.hva, args.fail_prepare)
    sc.run()
    return upd


def _notes_for(sc, steps):
    return {i: sc.notes[s.index] for i, s in enumerate(steps) if s.index in sc.notes}


def _outcome(sc, upd, out):
    """Print how the call ended; returns the exit status."""
    if upd.result is None:
        print(f"kvmviz: the call is blocked: {upd.blocked}; readers must go on first "
              "(write a recipe with begin/step/vcpu actions)", file=sys.stderr)
        return 1
    if upd.result == 0:
        print("result: 0 (success)", file=out)
        return 0
    if isinstance(upd.error, ModelBug):
        print("result: BUG() (no errno: the ioctl never returns)", file=out)
        print(f"kvmviz: kernel BUG(): {upd.error}", file=sys.stderr)
        return 1
    err = upd.error
    print(f"result: -{err.errname} (errno {err.errno})", file=out)
    print(f"kvmviz: error: {err.errname} (errno {err.errno}): {err.message}", file=sys.stderr)
    return 1


def _vs(values):
    """``"a"`` when all values are ``a``, else ``"a vs b"``."""
    values = list(dict.fromkeys(values))
    return " vs ".join(map(str, values))


def model_text(vms):
    """The model(s) a header names: ``Linux 6.12 model, variant merged``; what differs as ``a vs b``.

    >>> from kvmviz import VM
    >>> model_text([VM(kernel="5.17"), VM(kernel="6.12")])
    'Linux 5.17 vs 6.12 models, variant merged'
    >>> model_text([VM(kernel="6.12", variant="seed", address_spaces=1)])
    'Linux 6.12 model, variant seed, 1 address space(s)'
    """
    kernel = _vs(vm.kernel for vm in vms)
    text = f"Linux {kernel} model{'s' if ' vs ' in kernel else ''}, variant {_vs(vm.variant for vm in vms)}"
    if any(vm.address_spaces != KERNELS[vm.kernel].address_spaces for vm in vms):
        text += f", {_vs(vm.address_spaces for vm in vms)} address space(s)"
    return text


def _header(args, model):
    return (f"kvmviz {__version__}, {model}: KVM_SET_USER_MEMORY_REGION slot={_slot(args):#x} "
            f"flags={args.flags:#x} gpa={args.gpa:#x} size={args.size:#x} hva={args.hva:#x}"
            + (f" (prepare fails: {errno.errorcode[args.fail_prepare]})" if args.fail_prepare else "")
            + (f", after setup {args.setup!r}" if args.setup else ""))


# -- explain ------------------------------------------------------------------------------
def add_explain(subparsers):
    """Register ``explain``."""
    p = subparsers.add_parser("explain", help="print the plain-text trace of one memslot update",
                              description="Run one KVM_SET_USER_MEMORY_REGION and explain every step.")
    _add_call_options(p)
    _add_model_options(p)
    p.add_argument("--variant", type=_variant_arg, help=VARIANT_HELP + "; 5.17 and later")
    _add_debug(p)
    p.add_argument("--markdown", action="store_true", help="Markdown tables instead of plain text")
    p.add_argument("--recipe", action="store_true", help="also print the recipe that re-runs all of this")
    p.add_argument("--html", metavar="FILE", help="also write the call as one self-contained HTML player "
                                                  "(SVG frames, no network; needs matplotlib)")
    p.set_defaults(func=run_explain)


def run_explain(args, out):
    """``kvmviz explain``: returns the exit status."""
    sc = _scenario(args, args.variant, args.kernel)
    upd = _run_call(sc, args)
    render = export.markdown if args.markdown else export.text
    print("\n".join(export.wrap(_header(args, model_text([sc.vm])), 0)), file=out)
    print(f"change: {upd.change or 'none (refused before classification)'}", file=out)
    print(file=out)
    print(render(upd.steps, notes=_notes_for(sc, upd.steps)), file=out)
    print(file=out)
    print(render(sc.vm), file=out)
    print(file=out)
    if args.recipe:
        print(sc.to_recipe() + "\n", file=out)
    if args.html and upd.steps:
        from .viz.widgets import player       # matplotlib only for --html: the engine never imports viz
        player(upd.steps, args.html, vm=sc.vm)
        print(f"HTML player of the call's {len(upd.steps)} steps written to {args.html}", file=out)
    return _outcome(sc, upd, out)


# -- diff -----------------------------------------------------------------------------------
def add_diff(subparsers):
    """Register ``diff``."""
    p = subparsers.add_parser("diff", help="run one call on two kernel versions or variants and diff the traces",
                              description="Run one KVM_SET_USER_MEMORY_REGION on two models (two kernel "
                                          "versions, two variants, or both) and align the traces step by "
                                          "step. One --kernel or --variant applies to both sides.")
    _add_call_options(p)
    _add_model_options(p, twice=True)
    p.add_argument("--variant", action="append", type=_variant_arg,
                   help="give it twice: --variant merged --variant seed (variants apply to 5.17 and later); "
                        + VARIANT_HELP)
    _add_debug(p)
    p.set_defaults(func=run_diff)


def _first_violation(sc, steps):
    before = [n for k, n in sorted(sc.notes.items()) if not steps or k < steps[0].index]
    if before:
        return f"already violated during --setup: {before[0][0]}"
    for i, step in enumerate(steps, 1):
        if step.index in sc.notes:
            return f"step {i} ({step.function}): {sc.notes[step.index][0]}"
    return "every invariant holds at every step"


def _sides(args):
    """The ``(kernel, variant)`` of each side of a diff; one value of an option serves both sides.

    >>> _sides(build_parser().parse_args(["diff", "--slot", "1", "--kernel", "5.17", "--kernel", "6.12"]))
    [('5.17', None), ('6.12', None)]
    """
    kernel, variant = args.kernel or [None], args.variant or [None]
    if max(len(kernel), len(variant)) != 2:
        raise UsageError("diff compares two runs: give exactly two --variant or exactly two --kernel options "
                         f"(got {len(args.variant or [])} --variant, {len(args.kernel or [])} --kernel)")
    return list(zip(kernel * (3 - len(kernel)), variant * (3 - len(variant))))


def run_diff(args, out):
    """``kvmviz diff``: returns the exit status (0 once both traces exist)."""
    runs = []
    for kernel, variant in _sides(args):
        sc = _scenario(args, variant, kernel)
        runs.append((sc, _run_call(sc, args)))
    (sa, ua), (sb, ub) = runs
    labels = export.diff_labels(*((sc.vm.kernel, sc.vm.variant, sc.vm.address_spaces) for sc, _ in runs))
    print("\n".join(export.wrap(_header(args, model_text([sa.vm, sb.vm])), 0)), file=out)
    print(file=out)
    print(export.diff(ua, ub, labels=labels), file=out)
    print(file=out)
    for label, (sc, upd) in zip(labels, runs):
        print("\n".join(export.wrap(f"invariants under {label}: {_first_violation(sc, upd.steps)}", 0)), file=out)
    return 0


# -- recipe ---------------------------------------------------------------------------------------
def add_recipe(subparsers):
    """Register ``recipe run``."""
    p = subparsers.add_parser("recipe", help="run a scenario recipe",
                              description="Scenario recipes: a few lines that re-run to the same trace.")
    sub = p.add_subparsers(dest="recipe_command", required=True)
    r = sub.add_parser("run", help="re-run a recipe file and print its trace")
    r.add_argument("file", help="recipe file ('-' for standard input)")
    r.add_argument("--markdown", action="store_true", help="Markdown tables instead of plain text")
    r.add_argument("--kernel", choices=list(KERNELS), help="run on this Linux version's model instead of "
                                                          "the recipe's 'kernel' line")
    r.add_argument("--address-spaces", type=int, choices=(1, 2), metavar="N",
                   help="override the recipe's 'address-spaces' line (1 or 2; 1 on 6.x only)")
    _add_debug(r)
    r.set_defaults(func=run_recipe)


def run_recipe(args, out):
    """``kvmviz recipe run FILE``: returns the exit status."""
    if args.file == "-":
        text = sys.stdin.read(RECIPE_LIMIT + 1)
        if len(text) > RECIPE_LIMIT:
            raise UsageError(f"the recipe on standard input is larger than {RECIPE_LIMIT >> 20} MiB")
    elif os.path.exists(args.file):
        text = read_text(args.file, RECIPE_LIMIT, "recipe")
    else:
        raise UsageError(f"no such recipe file: {args.file}")
    parsed = parse_recipe(text)
    _load(parsed.variant)
    check_model(recipe_kernel(parsed, args.kernel), parsed.variant)
    sc = replay_recipe(text, check=True, kernel=args.kernel, address_spaces=args.address_spaces)
    render = export.markdown if args.markdown else export.text
    print(f"kvmviz {__version__}, {model_text([sc.vm])}: recipe {args.file}", file=out)
    if sc.version_note:
        print(f"note: {sc.version_note}", file=out)
    print(file=out)
    print(render(sc.events, notes=sc.notes), file=out)
    print(file=out)
    print(render(sc.vm), file=out)
    print(file=out)
    print(f"results: {', '.join(result_text(r, none='running') for r in sc.results)}", file=out)
    print(f"invariants: {sum(map(len, sc.notes.values()))} violation(s)", file=out)
    return 0


# -- check and review ------------------------------------------------------------------------
def add_check(subparsers):
    """Register ``check``."""
    p = subparsers.add_parser("check", help="explore every interleaving of a call with vCPU readers",
                              description="Run KVM_SET_USER_MEMORY_REGION (after --setup) under every "
                                          "interleaving with --readers vCPUs (each: srcu_read_lock, access "
                                          "the changing slot's first gfn, srcu_read_unlock, any number of "
                                          "times, anywhere) and --mmu MMU-notifier invalidations of its hva "
                                          "range; check the invariants in every state. Exit 0: no violation "
                                          "(or a bound was hit first: the report says which), 1: a violation "
                                          "(its shortest interleaving is printed), 2: bad input.")
    _add_call_options(p)
    _add_model_options(p)
    p.add_argument("--variant", type=_variant_arg, help=VARIANT_HELP)
    p.add_argument("--then", action="append", metavar="CALL", default=[],
                   help="a further call after the first, in recipe words (e.g. 'slot=1 size=0'); repeatable")
    p.add_argument("--readers", type=_number, default=1, metavar="N", help="vCPU readers (default 1)")
    p.add_argument("--mmu", type=_number, default=0, metavar="N",
                   help="MMU-notifier invalidations of the slot's hva range that may run at once (default 0)")
    p.add_argument("--gfn", type=_number, action="append", metavar="GFN",
                   help="a gfn the readers access (default: the changing slot's first); repeatable")
    p.add_argument("--max-states", type=_number, default=check.MAX_STATES, metavar="N",
                   help=f"stop after N distinct states (default {check.MAX_STATES:,})")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="stop after this long (default 600)")
    p.add_argument("--recipe", metavar="FILE", help="write the counterexample's recipe to FILE")
    p.add_argument("--markdown", action="store_true", help="Markdown for a web review instead of plain text")
    _add_debug(p)
    p.set_defaults(func=run_check)


def _calls(args):
    first = (_slot(args), args.flags, args.gpa, args.size, args.hva, args.fail_prepare)
    more = []
    for words in args.then:
        actions = parse_recipe("call " + words).actions
        if len(actions) != 1:
            raise UsageError(f"--then {words!r}: give one call's words, e.g. 'slot=1 size=0'")
        more.append(actions[0][1])
    return [first] + more


def _stop_after(seconds):
    """A ``stop`` callable for ``kvmviz.check.explore``: the reason once ``seconds`` have passed."""
    start = time.perf_counter()
    return lambda: f"time limit {seconds:g} s (--timeout)" if time.perf_counter() - start > seconds else None


def run_check(args, out):
    """``kvmviz check``: returns 0 (no violation), 1 (a violation) or 2 (bad input)."""
    start = time.perf_counter()
    setup = _recipe_text(args.setup) if args.setup else None
    result = check.explore(_calls(args), setup, variant=_load(args.variant) or _setup_variant(setup),
                           kernel=args.kernel, address_spaces=args.address_spaces, readers=args.readers,
                           mmu=args.mmu, gfns=args.gfn, max_states=args.max_states, stop=_stop_after(args.timeout))
    print(result.text(seconds=time.perf_counter() - start, markdown=args.markdown), file=out)
    cx = result.counterexample
    if cx is None:
        return 0
    if args.recipe:
        with open(args.recipe, "w", encoding="utf-8") as f:
            f.write(cx.recipe + "\n")
        print(f"\nrecipe written to {args.recipe}: kvmviz recipe run {args.recipe}", file=out)
    return 1


def _setup_variant(setup):
    return _load(parse_recipe(setup).variant) if setup else "merged"


def add_review(subparsers):
    """Register ``review``."""
    p = subparsers.add_parser("review", help="check your own variant against merged, for a patch review",
                              description="Run your variant (path/to/file.py:ClassName, a kvmviz.MergedProtocol "
                                          "subclass; kvmviz runs the file as Python, as a test runner would) "
                                          "against merged for CREATE, DELETE, MOVE, FLAGS_ONLY and a failing "
                                          "prepare: the step diff summary of each, and the exhaustive check "
                                          "with 1 reader and, within --budget, 2. One plain-text section to "
                                          "paste under a patch. Exit 0: no violation, 1: a violation, 2: bad "
                                          "input.")
    p.add_argument("variant", type=_variant_arg, help="path/to/file.py:ClassName, or a shipped variant's name")
    p.add_argument("--kernel", choices=list(KERNELS), help=f"modelled Linux version (default {kernels.DEFAULT_KERNEL})")
    p.add_argument("--budget", type=float, default=60.0, metavar="SECONDS",
                   help="time each 2-reader check may take (default 60)")
    _add_debug(p)
    p.set_defaults(func=run_review)


def run_review(args, out):
    """``kvmviz review``: returns 0, or 1 when a check found a violation."""
    text = review.review(_load(args.variant), kernel=args.kernel, clock=time.perf_counter, budget=args.budget)
    print(text, file=out)
    return 1 if "VIOLATION" in text else 0


#: ``add_parser(subparsers)`` functions, one per subcommand (append to add one).
SUBCOMMANDS = [add_explain, add_diff, add_recipe, add_check, add_review, add_replay, add_capture, add_host_check]


def build_parser():
    """The ``kvmviz`` argument parser with every registered subcommand.

    >>> build_parser().parse_args(["diff", "--variant", "merged", "--variant", "seed", "--slot", "1"]).variant
    ['merged', 'seed']
    """
    parser = argparse.ArgumentParser(prog="kvmviz", description="Explain and compare KVM memslot updates.")
    parser.add_argument("--version", action="version", version=f"kvmviz {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv=None, out=None):
    """Entry point of ``kvmviz`` and ``python -m kvmviz``; returns the exit status."""
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code
    try:
        return args.func(args, out)
    except BrokenPipeError:          # `kvmviz explain ... | head`: the reader left early
        sys.stderr.close()
        return 0
    except (UsageError, RecipeError, ValueError, RuntimeError, OSError) as e:
        return _bad_input(args, e)
    except Exception as e:              # a reviewer's variant method raised: their bug, one line
        if user_frame(e) is None:
            raise
        return _bad_input(args, raised(e, getattr(args, "variant", None) or "?"))


def _bad_input(args, e):
    """One line on standard error (and the traceback with ``--debug``); exit status 2."""
    if getattr(args, "debug", False):
        traceback.print_exception(e.__cause__ if isinstance(e, VariantError) and e.__cause__ else e,
                                  file=sys.stderr)
    print(f"kvmviz {args.command}: {e}", file=sys.stderr)
    return 2
