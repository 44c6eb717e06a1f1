"""Plain-text and Markdown export, trace diffs, scenario recipes."""

import pytest

from kvmviz import VM, __version__, export
from kvmviz.constants import KVM_MEM_LOG_DIRTY_PAGES

HVA = 0x7F0000000000


def _move_vm(variant="merged"):
    vm = VM(variant=variant)
    vm.set_user_memory_region(1, KVM_MEM_LOG_DIRTY_PAGES, 0x100000, 0x10000, HVA)
    return vm, vm.set_user_memory_region(1, KVM_MEM_LOG_DIRTY_PAGES, 0x200000, 0x10000, HVA)


def _fits(rendered):
    lines = rendered.splitlines()
    assert lines and max(map(len, lines)) <= 78
    assert all(line.isascii() for line in lines)
    return lines


def test_trace_text_fits_78_columns_and_shows_each_step():
    vm, steps = _move_vm()
    lines = _fits(export.text(steps))
    rows = [line for line in lines if line[:3].strip().isdigit()]
    assert len(rows) == len(steps)
    publish = next(r for r in rows if "rcu_assign_pointer" in r)
    assert publish.split()[1] == "invalidate" and "*0x2|IP" in publish and publish.endswith("SAM")
    assert "[edit as0/set0 #1 -> #3]" in export.text(steps)
    assert rows[-1].split()[-1] == "---"              # slots_lock released at the end


def test_state_text_has_a_table_per_set_mid_update():
    vm = VM()
    vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    upd = vm.begin_set_user_memory_region(1, 0, 0, 0, 0)
    for step in upd:
        if step.function == "rcu_assign_pointer":
            break
    lines = _fits(export.text(vm))
    assert "update 2 running (DELETE)" in " ".join(lines[:2])
    assert "as0/set0 (ACTIVE), generation 0x2|IP, last_used_slot -" in lines
    assert "as0/set1 (inactive), generation 0x2, last_used_slot -" in lines
    invalid = [line for line in lines if line.startswith("#2")]
    assert invalid and "INVALID" in invalid[0]
    assert any(line.startswith("#1 ") for line in lines)


def test_state_text_of_an_empty_vm():
    lines = _fits(export.text(VM()))
    assert lines.count("(empty)") == 2


def test_notes_are_printed_under_their_step():
    _, steps = _move_vm()
    out = export.text(steps[:3], notes={1: ["as0: something is wrong"]})
    lines = out.splitlines()
    i = lines.index("      !! as0: something is wrong")
    assert lines[i - 2].startswith("  2 ")


def test_markdown_tables():
    vm, steps = _move_vm()
    md = export.markdown(steps).splitlines()
    assert md[0].startswith("| # | stage | function |") and md[1].startswith("|---|")
    assert len(md) == len(steps) + 2
    assert "0x2\\|IP (active)" in export.markdown(steps)
    state = export.markdown(vm)
    assert "**as0/set1 (ACTIVE), generation 0x6, last_used_slot -**" in state
    assert "| #2 | 1 | 0x200 | 0x10 | 0x7f0000000000 | LOG | bm1 arch3 |" in state


def test_diff_of_identical_traces_is_all_equal():
    _, a = _move_vm()
    _, b = _move_vm()
    out = export.diff(a, b)
    _fits(out)
    assert f"summary: {len(a)} aligned ({len(a)} equal, 0 differ), 0 only in a, 0 only in b" in out
    assert " ! " not in out


def test_diff_seed_vs_merged_move_shows_objects_and_extra_steps():
    _, a = _move_vm()
    _, b = _move_vm("seed")
    out = export.diff(a, b, labels=("merged", "seed"))
    lines = _fits(out)
    assert "only in merged, 1 only in seed" in out.replace("\n", " ")
    move = lines.index(next(line for line in lines if "kvm_move_memslot" in line and " ! " in line))
    assert lines[move + 1].strip() == "slots    a: as0/set1 #1 -> #2"
    assert lines[move + 2].strip() == "b: as0/set1 #1 -> #1"
    assert "final generations equal" in out.replace("\n", " ")


def test_diff_shows_generation_differences():
    a = VM().set_user_memory_region(1, 0, 0, 0x1000, HVA)
    b = VM(variant="gen-before-publish").set_user_memory_region(1, 0, 0, 0x1000, HVA)
    out = export.diff(a, b)
    assert "gens     a: as0 0x0 *0x0|IP; as1 *0x1 0x1" in out
    assert "b: as0 0x0 *0x2; as1 *0x1 0x1" in out
    assert "final generations different" in out.replace("\n", " ")


def test_recipe_round_trip_gives_the_same_trace():
    sc = export.Scenario(variant="seed")
    sc.call(1, 0, 0x100000, 0x10000, HVA)
    sc.call(1, 1, 0x100000, 0x10000, HVA)
    sc.call(1, 0, 0, 0, 0, fail_prepare=True)
    sc.call(5, 0, 0x1001, 0x1000, HVA)                    # a validation error
    text = export.recipe(sc)
    assert text.splitlines()[:3] == ["kvmviz-recipe 1", f"version {__version__}", "variant seed"]
    assert "call slot=0x1 flags=0x0 gpa=0x0 size=0x0 hva=0x0 fail-prepare=ENOMEM" in text
    again = export.replay_recipe(text)
    assert export.text(again.steps) == export.text(sc.steps)
    assert again.results == sc.results == [0, 0, -12, -22]
    assert export.recipe(again) == text


def test_recipe_with_readers_and_interleaving():
    sc = export.Scenario()
    sc.call(1, 0, 0x100000, 0x10000, HVA)
    sc.vcpu(0, "lock")
    sc.vcpu(0, "access", 0x100)
    sc.begin(1, 0, 0, 0, 0)
    sc.step(12)
    assert sc.vm.update.blocked
    sc.vcpu(0, "access", 0x100)
    sc.vcpu(0, "unlock")
    sc.finish()
    sc.mn("start", HVA, HVA + 0x1000)
    sc.mn("end", HVA, HVA + 0x1000)
    text = export.recipe(sc)
    assert "vcpu 0x0 access 0x100" in text and "step 0xc" in text and "mn start" in text
    again = export.replay_recipe(text)
    assert export.text(again.events) == export.text(sc.events)
    assert again.results == [0, 0]


def test_replay_checks_invariants_when_asked():
    sc = export.replay_recipe("variant no-catch-up; call slot=1 gpa=0 size=0x1000 hva=0x7f0000000000",
                              check=True)
    (index, found), = sc.notes.items()
    assert sc.events[index].function == "kvm_set_memory_region"
    assert "at rest both sets must hold the same slot objects" in found[0]


@pytest.mark.parametrize("text,message", [
    ("call slot=1 gpa=zz size=1", "recipe line 1: 'call slot=1 gpa=zz size=1'"),
    ("variant merged\nfly away", "recipe line 2: 'fly away': unknown action 'fly'"),
    ("call gpa=0 size=0x1000", "missing slot"),
    ("call slot=1 size=0x1000 colour=red", "unknown key(s) colour"),
])
def test_bad_recipes_name_the_line(text, message):
    with pytest.raises(export.RecipeError) as e:
        export.replay_recipe(text)
    assert message in str(e.value)


def test_recipe_from_another_version_says_so():
    sc = export.replay_recipe("version 0.0.1\ncall slot=1 gpa=0 size=0x1000 hva=0x7f0000000000")
    assert sc.version_note.startswith("recipe written by kvmviz 0.0.1")


def test_recipe_needs_a_scenario():
    with pytest.raises(TypeError, match="export.Scenario"):
        export.recipe(VM())
