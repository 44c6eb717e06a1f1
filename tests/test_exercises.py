"""Every exercise accepts the right answer and rejects a wrong one with a hint.

The expected answers below are worked out by hand from the reference (the
sections are cited), independently of the engine: if the model drifts, the
exercise (which asks the engine) and this table disagree and the test fails.
"""

import pytest

import kvmviz
from kvmviz import exercises as ex
from kvmviz.engine.rules import RULES
from kvmviz.teach import answers
from kvmviz.teach.answers import IP, Feedback
from kvmviz.teach.exercises import Progress

# key: (right answer, a wrong answer, reference)
EXPECTED = {
    "01.1": (1, 2, "§5.1: gfn 0x12345 lies in slot 1 (gfns 0x100..0x3ffff)"),
    "01.2": ("0x7f0040003abc", "0x7f0000003abc", "§5.1: slot 2 starts at hva HVA+1GiB"),
    "01.3": ("#3", "#1", "§5.1: the last successful search is cached"),
    "01.4": ("0x3", "0x2", "§3.1: as1 starts at 1, +2 per swap"),
    "02.1": ("set1", "set0", "§2.1 swap step 5: publish the inactive set"),
    "02.2": ("0x0|IP", "0x2", "§3.1/§3.4: published with the in-progress bit"),
    "02.3": (13, 8, "§2.2 CREATE row 5: replace in Y after the swap"),
    "02.4": ("0x0", "0x2", "§3.1: the inactive set keeps a stale generation"),
    "02.5": ("0x6", "0x3", "§3.1: three swaps of +2"),
    "02.6": (9, 12, "§1.5, §3.4: slots_arch_lock is dropped after the publish, before the SRCU wait"),
    "02.7": ("same-at-rest", "in-place", "§1.7.2"),
    "03.1": ("#2", "#1", "§2.2 FLAGS_ONLY row 3: new replaces old in X"),
    "03.2": ("#1", "#2", "§2.2 FLAGS_ONLY: X is not published yet"),
    "03.3": (15, 13, "§2.2 FLAGS_ONLY row 6: commit frees the bitmap"),
    "03.4": (1, 2, "§2.2: FLAGS_ONLY swaps once"),
    "03.5": ("EINVAL", "0", "§4.2#15: READONLY cannot be toggled"),
    "04.1": (6, 5, "§2.2 DELETE row 3: swap #1 publishes the INVALID copy"),
    "04.2": ("retry", "no-slot", "§2.3: a fault on the INVALID copy is retried (5.13+), not MMIO"),
    "04.3": (1, 2, "§2.1: one kvm_arch_flush_shadow_memslot"),
    "04.4": ("#1", "#3", "§2.1: Y still holds old"),
    "04.5": ("0x6", "0x4", "§3.1: MOVE is +2N"),
    "04.6": ("EEXIST", "EINVAL", "§4.2#17"),
    "04.7": ("0", "EEXIST", "§4.2#17: the moving slot is exempt"),
    "05.1": ("0x2", "0x4", "§3.1: no swap"),
    "05.2": ("0x6", "0x2", "§3.3 row 6: +2N although nothing changed"),
    "05.3": ("ENOMEM", "0", "§4.4"),
    "05.4": (18, 6, "§2.2 DELETE 6F: swap #2 publishes Y; 6.12 adds kvm_arch_guest_memory_reclaimed"),
    "05.5": ("#1", "#3", "§2.2 6F: old is restored"),
    "05.6": ("0x6", "0x2", "docs/kernel-6.12.md: the max-gfn check is in prepare, after swap #1: a real revert"),
    "06.1": (10, 8, "§3.4 step 5: synchronize_srcu waits for old readers"),
    "06.2": ("set1", "set0", "§3.4: the pointer is published before the grace period"),
    "06.3": ("0x0|IP", "0x2", "§3.4 step 3"),
    "06.4": (8, 10, "§3.4 step 2: wait for notifiers before publishing"),
    "06.5": ("ok", "retry", "§2.3: an old reader keeps the set it loaded"),
    "06.6": ("retry", "no-slot", "§2.3: swap #1 -> swap #2 window: RET_PF_RETRY, not MMIO (5.13+)"),
    "07.1": ("EINVAL", "EEXIST", "§4.1"),
    "07.2": ("EINVAL", "0", "§4.2#3"),
    "07.3": ("EINVAL", "0", "§4.2#6"),
    "07.4": ("EEXIST", "0", "§4.2#17"),
    "07.5": ("EINVAL", "ENOENT", "§4.2#10"),
    "07.6": ("0", "EEXIST", "§4.2#16"),
    "07.7": ("EINVAL", "0", "§4.2#15"),
    "07.8": ("EINVAL", "EFAULT", "§4.2#5"),
    "07.9": (1, 4, "§4.2: check 1 (flags) runs before check 4"),
    "08.1": (2, 3, "§6.2 example: [A, B, D, C]"),
    "08.2": ("0x6", "0x4", "§6.5: same generation arithmetic"),
    "08.3": (201, 100, "§6.3: dup (100) + second copy (100) + old's value copy (1)"),
    "08.4": (2, 1, "§2.4: new and invalid_slot"),
    "09.1": ("#1", "#2", "§7.2: the seed MOVE reuses old"),
    "09.2": (1, 2, "§7.2: one working slot, up front"),
    "09.3": ("accounting", "locks", "§7.2: BUG() before commit, nr_memslot_pages never updated"),
    "09.4": ("same-at-rest", "differ-by-one", "§1.7.2: the catch-up replace is what restores agreement"),
    "09.5": ("in-place", "free-after-gp", "§1.7.1: the live slot's flags change"),
    "09.6": ("generation", "in-place", "§3.1: +N per swap, in-progress mark first"),
    "09.7": ("grace-period", "generation", "§3.4 step 5"),
    "10.1": ("DELETE", "MOVE", "§4.3: memory_size 0"),
    "10.2": (6, 4, "§3.1: DELETE +4 then CREATE +2"),
    "10.3": ("EINVAL", "0", "§4.2#10"),
    "10.4": (0, 15, "every call is a DELETE (size 0) or a CREATE with flags 0x1: nothing toggles a live slot"),
    "10.5": ("FLAGS_ONLY", "CREATE", "dirty logging toggled on every slot"),
    "11.1": ("0x1", "0x2", "docs/kernel-6.12.md §4.6: one address space, +1 per swap"),
    "11.2": ("readonly", "ok", "docs/kernel-6.12.md §4.7 step 6: the write is emulated as MMIO"),
    "11.3": (0, 2, "docs/kernel-6.12.md §5: KVM_GET_DIRTY_LOG returns and clears"),
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_right_answer_accepted_wrong_rejected(key):
    right, wrong, _ = EXPECTED[key]
    exercise = ex.get(key)
    ok = exercise.check(right)
    assert ok.correct, (key, ok.message)
    bad = exercise.check(wrong)
    assert not bad.correct
    assert bad.message.startswith("Not ") and len(bad.message) > 30, bad.message


def test_every_exercise_has_an_expected_answer():
    assert set(ex.catalogue()) == set(EXPECTED)


def test_three_exercises_per_lesson_from_02():
    for n in range(2, 12):
        assert len(ex.lesson(n)) >= 3, n


def test_answers_are_read_leniently():
    assert ex.check("02.2", f"{IP:#x}").correct
    assert ex.check("02.1", "as0/set1").correct
    assert ex.check("07.4", "-eexist").correct
    assert ex.check("07.4", 17).correct
    assert ex.check("02.7", 2).correct          # §1.7 numbering


@pytest.mark.parametrize("answer", [None, "", "banana", "0x"])
def test_unreadable_answers_get_a_message_not_an_exception(answer):
    fb = ex.check("02.4", answer)
    assert isinstance(fb, Feedback) and not fb.correct
    assert fb.message.startswith("Cannot read that")


def test_hints_are_specific():
    assert "0 mod 2" in ex.check("02.5", 5).message
    assert "bit 63" in ex.check("02.2", "0x0").message
    assert "swap" in ex.check("04.5", "0x4").message
    assert "Too early" in ex.check("02.3", 8).message
    assert "Too late" in ex.check("02.3", 14).message
    assert "§4.2#15" in ex.check("03.5", "EEXIST").message
    # after swap #1 of the MOVE the active set holds the INVALID copy #3; #2 (the moved slot) is not linked yet
    assert ex.check("04.4", "#3").message == "Not #3. After that step, #3 is in only the active set."
    assert ex.check("04.4", "#2").message == "Not #2. After that step, #2 is in no set."


def test_generation_hints_name_the_point():
    # 02.2 and 06.3: the point is the in-progress bit, not a swap count
    for key in ("02.2", "06.3"):
        message = ex.check(key, "0x2").message
        assert "bit 63" in message and "swap(s)" not in message and "short" not in message, message
    assert "1 swap(s) too many" in ex.check("02.5", "0x8").message
    assert "2 swap(s) too few" in ex.check("02.5", "0x2").message
    assert "1 swap(s) too many" in ex.check("05.1", "0x4").message
    # a one-address-space VM counts in steps of 1
    assert "always 1 mod 1" not in ex.check("11.1", "0x2").message
    assert "1 swap(s) too many" in ex.check("11.1", "0x2").message


def test_counts_are_echoed_in_decimal_addresses_in_hex():
    assert ex.check("08.3", 201).message.startswith("201 is right")
    assert ex.check("08.3", 200).message.startswith("Not 200. 200 is too low")
    assert ex.check("01.2", "0x7f0040003abc").message.startswith("0x7f0040003abc is right")


def test_every_correct_answer_says_why():
    for key, (right, _, _) in EXPECTED.items():
        message = ex.check(key, right).message
        assert message.split(" is right", 1)[1].startswith(": ") and len(message) > 40, (key, message)


def test_spot_invariant_hint_names_a_callable_situation():
    message = ex.check("02.7", "locks").message
    assert 'kvmviz.exercises.get("02.7").situation()' in message and "exercise.situation" not in message


def test_worked_answers_are_the_engines_answers():
    from kvmviz.teach.lessons import WorkedAnswer
    for key, (right, _, _) in EXPECTED.items():
        e = ex.get(key)
        worked = WorkedAnswer(e)
        assert worked.worked.answer == e.answer()
        assert e.check(worked.worked.answer).correct, key
        html = worked._repr_html_()
        assert html.startswith('<details class="kvmviz-worked">') and f"Worked answer to {key}" in html
        assert worked.worked.why and worked.worked.why in worked.text()


def test_worked_answer_shows_the_evidence():
    assert any("rcu_assign_pointer" in line for line in ex.get("04.1").worked().evidence)
    assert any("check §4.2#3" in line for line in ex.get("07.2").worked().evidence)
    first = ex.get("09.6").worked().evidence
    assert first[0].startswith("after step") and "expected 0x2" in first[1]


def test_spot_the_invariant_uses_the_checkers_rules():
    spots = [e for e in map(ex.get, ex.catalogue()) if e.kind == "spot the invariant"]
    assert len(spots) == 6 and all(e.choices == tuple(RULES) for e in spots)
    # 02.7 drops slot 1 from the active set: the sets disagree first, the page count is wrong too
    assert [v.rule for v in kvmviz.check_invariants(ex.get("02.7").situation().vm)] == ["same-at-rest", "accounting"]
    assert ex.get("02.7").answer() == RULES["same-at-rest"]
    assert "broken too, but later" in ex.check("02.7", "accounting").message
    assert "none about that rule" in ex.check("02.7", "in-place").message


def test_invalid_window_exercise_teaches_retry_not_mmio():
    assert ex.get("06.6").answer() == "retry"
    assert ex.check("06.6", "invalid-slot").message.startswith("Cannot read that")    # no longer an outcome
    assert "INVALID copy" in ex.check("06.6", "no-slot").message


def test_answers_come_from_the_engine_not_a_key():
    # change what the engine would do (a different situation) and the answer follows
    e = ex.get("04.5")
    original = e.setup
    try:
        e.setup = answers.situation([(1, 0, 0x100000, 0x10000, answers.HVA)], begin=(1, 0, 0, 0, 0))  # a DELETE
        assert e.answer() == "0x6"
        e.setup = answers.situation([(1, 0, 0x100000, 0x10000, answers.HVA)],
                               begin=(1, 1, 0x100000, 0x10000, answers.HVA))              # FLAGS_ONLY
        assert e.answer() == "0x4"
    finally:
        e.setup = original


def test_progress_counts_solved_once_and_notifies():
    p = Progress.for_lesson(7)
    seen = []
    p.on_change.append(lambda prog: seen.append(prog.solved_count))
    assert not p.check("07.1", "EEXIST")
    p.check("07.1", "EINVAL")
    p.check("07.1", "EINVAL")
    assert (p.solved_count, p.total, seen) == (1, 9, [0, 1, 1])
    assert str(p).startswith("Progress: 1 / 9 solved")
    assert "No exercise" in p.check("02.1", "set1").message


def test_widget_check_button_updates_feedback_and_progress():
    pytest.importorskip("ipywidgets")
    from kvmviz.viz.exercise_widgets import ExerciseWidget, ProgressDisplay
    p = Progress.for_lesson(4)
    bar = ProgressDisplay(p)
    box = ExerciseWidget("04.6", p)
    box.input.value = "EINVAL"
    box.button.click()
    assert "Not yet" in box.feedback.value and bar.bar.value == 0
    box.input.value = "EEXIST"
    box.button.click()
    assert "Correct" in box.feedback.value
    assert bar.label.value == f"Progress: 1 / {p.total} solved"


def test_invariant_choices_are_shown_in_full():
    pytest.importorskip("ipywidgets")
    import ipywidgets as w
    from kvmviz.viz.exercise_widgets import ExerciseWidget
    box = ExerciseWidget("09.4")
    assert isinstance(box.input, w.RadioButtons)
    assert [label for label, _ in box.input.options] == list(RULES.values())
    assert box.answer("same-at-rest").correct
    question, worked = box.static_outputs()
    assert "Exercise 09.4" in question["text/html"] and "<details" in worked["text/html"]


def _lesson_books():
    nbformat = pytest.importorskip("nbformat")
    from pathlib import Path
    books = sorted((Path(__file__).parent.parent / "notebooks").glob("[01][0-9]-*.ipynb"))
    return {int(p.name[:2]): nbformat.read(p, as_version=4) for p in books if p.name[:2] != "00"}


def test_every_lesson_notebook_shows_all_its_exercises_in_order():
    import re
    lessons = _lesson_books()
    assert sorted(lessons) == list(range(1, 12))
    for n, nb in lessons.items():
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert f"lesson_progress({n})" in source, n
        shown = re.findall(r'ExerciseWidget\("(\d\d\.\d)", progress\)', source)
        assert shown == [e.key for e in ex.lesson(n)], (n, shown)     # each once, in key order
        assert '": None' not in source                                  # no "no answer yet" cells
