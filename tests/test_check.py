"""kvmviz check / review: every interleaving explored, shortest counterexamples, a reviewer's own variants."""

import io
import subprocess
import sys
from pathlib import Path

import pytest

from kvmviz import VM, check_invariants, variants
from kvmviz.check import WRITER, explore, first_violation, replay
from kvmviz.cli import main
from kvmviz.engine.statekey import state_key
from kvmviz.review import review
from kvmviz.variants.load import is_spec

HERE = Path(__file__).parent
ROOT = HERE.parent
#: A reviewer's own variant (not shipped), named as on the command line from the repository's root.
WRONG_SRCU = "tests/variants/wrong_srcu.py:WrongSrcu"
HVA = 0x7F0000000000
SETUP = f"call slot=1 gpa=0x100000 size=0x10000 hva={HVA:#x}"
CREATE = (1, 0, 0x100000, 0x10000, HVA)
DELETE = (1, 0, 0x100000, 0, 0)
MOVE = (1, 0, 0x200000, 0x10000, HVA)


@pytest.fixture(autouse=True)
def _at_the_root(monkeypatch):
    """Run from the repository's root, and forget the variant files a test loaded."""
    monkeypatch.chdir(ROOT)
    yield
    for name in variants.names():
        if is_spec(name):
            variants.unregister(name)


def run(*argv):
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()


# -- the explorer ----------------------------------------------------------------------------------
def test_merged_delete_with_one_reader_explores_every_state_and_finds_nothing():
    r = explore([DELETE], SETUP, readers=1)
    assert (r.states, r.transitions, r.bound, r.counterexample) == (273, 712, None, None)
    assert r.verdict == "no violation within the bound"
    assert r.gfns == (0x100,) and r.changes == ("DELETE",)


def test_readers_and_notifiers_grow_the_state_space():
    alone = explore([DELETE], SETUP, readers=0)
    assert (alone.states, alone.depth) == (27, 26)          # the writer's 26 steps, one line
    with_mmu = explore([DELETE], SETUP, readers=1, mmu=1)
    assert with_mmu.counterexample is None and with_mmu.states > 273
    assert with_mmu.hva == (HVA, HVA + 0x10000)


def test_the_state_key_forgets_history_but_not_pins():
    a, b = VM(), VM()
    for vm in (a, b):
        vm.set_user_memory_region(*CREATE)
        vm.add_vcpu()
    b.vcpus[0].srcu_read_lock()
    b.vcpus[0].srcu_read_unlock()
    assert state_key(a) == state_key(b)
    b.vcpus[0].srcu_read_lock()
    assert state_key(a) != state_key(b)
    a.add_vcpu().srcu_read_lock()               # vcpu1 of a mirrors vcpu0 of b: one state
    assert state_key(a, vcpus=2) == state_key(b, vcpus=2)


def test_rewind_keeps_the_running_update():
    vm = VM()
    v = vm.add_vcpu()
    upd = vm.begin_set_user_memory_region(*CREATE)
    next(upd)
    mark = len(vm.history)
    v.srcu_read_lock()
    vm.rewind(mark)
    assert vm.update is upd and not v.inside
    assert next(upd).function == "__kvm_set_memory_region"


#: The shortest counterexample of each shipped broken variant: scenario, readers, length, rule, violation.
SHORTEST = {
    "seed-as-posted": ([CREATE], None, 0, 16, "accounting", "nr_memslot_pages is 0x0 but the slots hold 0x10"),
    "invalid-in-place": ([DELETE], SETUP, 0, 3, "in-place", "as0: #1.flags changed in place (0x0 -> 0x10000)"),
    "no-srcu-wait": ([CREATE], None, 1, 13, "grace-period", "a swap finished (no in-progress generation) while"),
    "gen-before-publish": ([CREATE], None, 0, 12, "generation", "as0: active generation 0x4 after 1 swap(s)"),
    "no-catch-up": ([CREATE], None, 0, 14, "same-at-rest", "as0: at rest both sets must hold the same slot"),
}


@pytest.mark.parametrize("name", sorted(SHORTEST))
def test_each_broken_variant_has_a_pinned_shortest_counterexample_that_replays(name):
    calls, setup, readers, length, rule, message = SHORTEST[name]
    cx = explore(calls, setup, variant=name, readers=readers).counterexample
    assert (cx.length, cx.rule) == (length, rule) and rule == variants.describe(name).violates
    assert cx.violations[0].startswith(message)
    sc, start = replay(cx.recipe)                              # the recipe replays to the same violation
    assert first_violation(sc, start)[1] == [v for v in cx.violations if not v.startswith("the kernel hits BUG")]
    assert first_violation(sc, start)[0] == len(sc.events) - 1   # and only at its last event
    assert cx.events[-1].index == len(cx.scenario.events) - 1


def test_a_reader_finds_a_shorter_interleaving_under_another_rule():
    cx = explore([CREATE], variant="gen-before-publish", readers=1).counterexample
    assert (cx.length, cx.rule, cx.actions[0]) == (9, "grace-period", ("vcpu", 0, "lock"))


def test_a_setup_that_already_breaks_gives_an_empty_counterexample():
    cx = explore([DELETE], SETUP, variant="no-catch-up", readers=1).counterexample
    assert cx.length == 0 and cx.events == [] and cx.trace().count("\n") == 1


def test_a_users_own_variant_not_shipped_is_found_broken():
    clean = explore([DELETE], SETUP, variant=WRONG_SRCU, readers=0)
    assert clean.counterexample is None                 # without a reader nothing shows
    cx = explore([DELETE], SETUP, variant=WRONG_SRCU, readers=1).counterexample
    assert cx.length == 11 and cx.actions[0] == ("vcpu", 0, "lock") and cx.actions[1:] == (WRITER,) * 10
    assert cx.rule == "grace-period" and "synchronize_srcu_expedited skipped" in cx.violations[0]
    assert f"variant {WRONG_SRCU}" in cx.recipe


def test_a_class_passed_directly_is_named_by_its_file():
    sys.path.insert(0, str(HERE / "variants"))
    try:
        from wrong_srcu import WrongSrcu
    finally:
        sys.path.pop(0)
    cx = explore([DELETE], SETUP, variant=WrongSrcu, readers=1).counterexample
    assert cx.length == 11 and "wrong_srcu.py:WrongSrcu" in cx.recipe


def test_the_array_design_and_smm_readers():
    r = explore([DELETE], SETUP, kernel="5.15", readers=1)
    assert (r.states, r.counterexample) == (135, None)           # call serials restored: a finite space
    setup = SETUP.replace("slot=1", "slot=0x10001")
    cx = explore([(0x10001,) + DELETE[1:]], setup, variant=WRONG_SRCU, readers=1).counterexample
    assert cx.length == 11 and "vcpu 0 smm on" in cx.recipe   # readers of as1 run in SMM


def test_bounds_stop_with_the_figures_so_far():
    r = explore([MOVE], SETUP, readers=2, max_states=50)
    assert r.states == 50 and r.counterexample is None and "max_states=50" in r.bound
    assert r.verdict.startswith("no violation found before the bound was hit")
    calls = iter(range(10))
    r = explore([MOVE], SETUP, readers=2, stop=lambda: "out of patience" if next(calls, 9) > 1 else None)
    assert r.bound == "out of patience" and 0 < r.states < 2000


def test_bad_calls_and_bounds_are_refused():
    with pytest.raises(ValueError, match="at least one call"):
        explore([])
    with pytest.raises(ValueError, match="readers must be a whole number"):
        explore([CREATE], readers=-1)
    with pytest.raises(ValueError, match="does not fit"):
        explore([(1, 0, 0, 0, 1 << 64)])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["merged", "seed"])
@pytest.mark.parametrize("call", [DELETE, MOVE], ids=["DELETE", "MOVE"])
def test_two_readers_delete_and_move_find_no_violation(variant, call):
    r = explore([call], SETUP, variant=variant, readers=2)
    assert r.counterexample is None and r.bound is None
    assert r.states > 1500


# -- the counterexample as trace, recipe, Stepper ---------------------------------------------------
def test_the_trace_is_78_columns_with_reader_rows_and_the_violation():
    cx = explore([DELETE], SETUP, variant=WRONG_SRCU, readers=1).counterexample
    text = cx.text()
    assert max(map(len, text.splitlines())) <= 78
    assert "  2 reader     srcu_read_lock" in text and "!! a swap finished" in text
    assert "recipe (`kvmviz recipe run FILE` replays it):" in text
    md = cx.text(markdown=True)
    assert md.startswith("**shortest counterexample: 11 actions") and "| 2 | reader | `srcu_read_lock`" in md


def test_the_counterexample_opens_in_the_stepper():
    pytest.importorskip("ipywidgets")
    from kvmviz.viz import Stepper
    cx = explore([DELETE], SETUP, variant=WRONG_SRCU, readers=1).counterexample
    st = Stepper.from_recipe(cx.recipe)
    assert st.position.value == "step 12 of 12 so far"
    st.first()
    st.step()
    st.step()
    assert st.current.function == "srcu_read_lock"


# -- command line ----------------------------------------------------------------------------------
def test_check_exit_0_without_a_violation():
    code, out = run("check", "--slot", "1", "--size", "0", "--setup", SETUP)
    assert code == 0 and "273 distinct states" in out and "verdict: no violation within the bound" in out


def test_check_exit_1_writes_a_recipe_that_recipe_run_replays(tmp_path):
    path = tmp_path / "cx.recipe"
    code, out = run("check", "--variant", WRONG_SRCU, "--slot", "1", "--size", "0", "--setup", SETUP,
                    "--recipe", str(path))
    assert code == 1 and "verdict: VIOLATION" in out and "shortest counterexample: 11 actions" in out
    code, replayed = run("recipe", "run", str(path))
    assert code == 0 and "invariants: 1 violation(s)" in replayed and "!! a swap finished" in replayed


def test_check_markdown_and_then_and_bounds():
    code, out = run("check", "--slot", "1", "--size", "0x10000", "--gpa", "0x100000", "--hva", hex(HVA),
                    "--then", "slot=1 size=0", "--readers", "0", "--markdown")
    assert code == 0 and "CREATE slot=0x1" in out and "then slot=0x1" in out
    assert out.startswith("**kvmviz 0.1.0 check: Linux") and "\n- verdict: no violation within the bound" in out
    code, out = run("check", "--slot", "1", "--size", "0", "--setup", SETUP, "--readers", "2",
                    "--max-states", "20")
    assert code == 0 and "the exploration is incomplete" in out and "max_states=20" in out


@pytest.mark.parametrize("spec, message", [
    ("tests/variants/does_not_import.py:X", "does_not_import.py does not import: ImportError: cannot import name "
                                            "'MergedProtocl'"),
    ("tests/variants/wrong_srcu.py:NotAProtocol", "NotAProtocol is not a protocol: make it a subclass of "
                                                  "kvmviz.MergedProtocol"),
    ("tests/variants/wrong_srcu.py:Nope", "has no class Nope (it defines: WrongSrcu, NotAProtocol, Raises)"),
    ("tests/variants/wrong_srcu.py:Raises", "in kvm_delete_memslot (tests/variants/wrong_srcu.py line 30) raised "
                                            "AttributeError"),
    ("tests/variants/nothing.py:X", "no such file tests/variants/nothing.py"),
])
def test_bad_variants_give_one_line_and_exit_2(spec, message):
    proc = subprocess.run([sys.executable, "-m", "kvmviz", "check", "--variant", spec, "--slot", "1", "--size",
                           "0", "--setup", SETUP], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_debug_shows_the_traceback():
    proc = subprocess.run([sys.executable, "-m", "kvmviz", "check", "--debug", "--variant",
                           "tests/variants/wrong_srcu.py:Raises", "--slot", "1", "--size", "0", "--setup", SETUP],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("kvmviz check: variant tests/variants/wrong_srcu.py")


def test_explain_and_diff_run_a_users_file():
    code, out = run("diff", "--variant", "merged", "--variant", WRONG_SRCU, "--slot", "1", "--size", "0",
                    "--setup", SETUP)
    summary = " ".join(out.split("summary:")[1].split())
    assert code == 0 and summary.startswith("26 aligned (26 equal, 0 differ)"), summary   # only texts differ
    code, out = run("explain", "--variant", WRONG_SRCU, "--slot", "1", "--size", "0", "--setup", SETUP)
    assert code == 0 and "wait for kvm->irq_srcu (the wrong struct)" in out


def test_a_bad_variant_name_is_a_usage_error():
    code, _ = run("check", "--variant", "nope", "--slot", "1")
    assert code == 2


# -- review ------------------------------------------------------------------------------------------
def test_review_of_merged_is_clean_with_one_reader():
    text = review("merged", readers=(1,))
    assert max(map(len, text.splitlines())) <= 78
    assert text.count("check, 1 reader: no violation within the bound") == 5
    assert "MOVE with failing prepare: slot=0x1" in text and "results -ENOMEM / -ENOMEM" in " ".join(text.split())


def test_review_of_a_users_variant_flags_the_cases_it_breaks():
    code, out = run("review", WRONG_SRCU, "--budget", "30")
    assert code == 1
    flat = " ".join(out.split())
    assert flat.count("VIOLATION, shortest interleaving") == 5       # every case swaps at least once
    assert "trace and recipe: kvmviz check --variant" in flat


def test_shipped_variants_are_unchanged_by_loading_a_file():
    before = variants.names()
    assert before[:7] == ["merged", "seed", "seed-as-posted", "invalid-in-place", "no-srcu-wait",
                          "gen-before-publish", "no-catch-up"]
    assert check_invariants(VM(variant="merged")) == []
