"""Plain-text and Markdown export, trace diffs, scenario recipes."""

import pytest

from kvmviz import VM, __version__, export
from kvmviz.engine.constants import KVM_MEM_LOG_DIRTY_PAGES
from kvmviz.engine.kernels import DEFAULT_KERNEL
from conftest import HVA


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
    vm = VM(kernel="5.17")
    vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    upd = vm.begin_set_user_memory_region(1, 0, 0, 0, 0)
    for step in upd:
        if step.function == "rcu_assign_pointer":
            break
    lines = _fits(export.text(vm))
    assert lines[0] == "VM on the Linux 5.17 model, variant merged, 2 address space(s)"
    assert "update 2 running (DELETE)" in " ".join(lines[1:3])
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
    assert text.splitlines()[:5] == ["kvmviz-recipe 1", f"version {__version__}", f"kernel {DEFAULT_KERNEL}",
                                     "address-spaces 2", "variant seed"]
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
    assert "vcpu 0 access 0x100" in text and "step 12" in text and "mn start" in text
    again = export.replay_recipe(text)
    assert export.text(again.events) == export.text(sc.events)
    assert again.results == [0, 0]


def test_replay_checks_invariants_when_asked():
    sc = export.replay_recipe("variant no-catch-up; call slot=1 gpa=0 size=0x1000 hva=0x7f0000000000",
                              check=True)
    (index, found), = sc.notes.items()
    assert sc.events[index].function == "kvm_set_memory_region"
    assert [v.rule for v in found] == ["same-at-rest"]
    assert "at rest both sets must hold the same slot objects" in found[0]


@pytest.mark.parametrize("text,message", [
    ("call slot=1 gpa=zz size=1", "recipe line 1: 'call slot=1 gpa=zz size=1'"),
    ("variant merged\nfly away", "recipe line 2: 'fly away': unknown action 'fly'"),
    ("call gpa=0 size=0x1000", "missing slot"),
    ("call slot=1 size=0x1000 colour=red", "unknown key(s) colour"),
    ("kernel 4.19", "recipe line 1: 'kernel 4.19': unknown kernel '4.19'; modelled: 5.15, 5.17, 6.12"),
    ("address-spaces 3", "address-spaces is 1 (no SMM) or 2 (x86 with SMM), not '3'"),
    ("kernel 5.15; variant seed", "recipe: variant 'seed' changes the tree protocol of 5.17 and later; kernel 5.15"),
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


# -- kernel versions -------------------------------------------------------------------------------
BEYOND = 1 << 52          # a gpa above 6.12's x86 kvm_mmu_max_gfn() (52 physical bits)


def _move_beyond(kernel):
    sc = export.Scenario(kernel=kernel)
    sc.call(1, 0, 0x100000, 0x10000, HVA)
    return sc.call(1, 0, BEYOND, 0x10000, HVA)


def test_exports_name_the_modelled_version():
    vm = VM(kernel="6.12", address_spaces=1)
    assert export.text(vm).splitlines()[0] == "VM on the Linux 6.12 model, variant merged, 1 address space(s)"
    assert export.markdown(vm).startswith("**VM on the Linux 6.12 model, variant merged, 1 address space(s)**: ")
    upd = _move_beyond("6.12")
    assert export.text(upd).splitlines()[0] == f"Linux 6.12 model, variant merged: {len(upd.steps)} steps"
    assert export.text(upd).splitlines()[1] == export.text(upd.steps).splitlines()[0]
    title = f"**Linux 6.12 model, variant merged: {len(upd.steps)} steps**"
    assert export.markdown(upd).splitlines()[:2] == [title, ""]
    assert export.model_label(vm) == "Linux 6.12 model (1 address space)"
    assert export.model_label(VM(kernel="5.15")) == "Linux 5.15 model"


def test_version_diff_shows_where_5_17_and_6_12_part():
    a, b = _move_beyond("5.17"), _move_beyond("6.12")
    assert (a.result, b.result) == (0, -22)
    out = export.diff(a, b)
    lines = _fits(out)
    assert lines[0] == f"a = Linux 5.17 ({len(a.steps)} steps), b = Linux 6.12 ({len(b.steps)} steps)"
    prepare = next(i for i, line in enumerate(lines) if line.endswith("! prepare    kvm_arch_prepare_memory_region"))
    assert lines[prepare + 1].strip().startswith("text     a: x86 allocates fresh arch metadata")
    assert "kvm_mmu_max_gfn()" in " ".join(lines[prepare + 2:prepare + 8])
    assert any(line.endswith("- replace    kvm_move_memslot") for line in lines)      # 6.12 never moves
    flat = " ".join(out.split())
    assert "only in Linux 5.17" in flat and "results 0 / -EINVAL" in flat
    # the same traces as plain step lists: no labels or version texts unless asked
    plain = export.diff(a.steps, b.steps)
    assert plain.splitlines()[0].startswith("a = a (") and "text     a:" not in plain
    assert "text     a:" in export.diff(a.steps, b.steps, texts=True)


def test_diff_labels_name_only_what_differs():
    assert export.diff_labels(("5.17", "seed", 2), ("6.12", "merged", 2)) == ("Linux 5.17, seed", "Linux 6.12, merged")
    assert export.diff_labels(("6.12", "merged", 2), ("6.12", "merged", 2)) == ("Linux 6.12", "Linux 6.12")
    runs = [export.Scenario(kernel="6.12", variant=v).call(1, 0, 0, 0x1000, HVA) for v in ("merged", "seed")]
    same = export.diff(*runs)
    assert same.splitlines()[0].startswith("a = merged (") and "text     a:" not in same


def test_recipe_kernel_and_address_space_lines_round_trip():
    sc = export.Scenario(kernel="6.12", address_spaces=1)
    sc.call(1, 0, 0x100000, 0x10000, HVA)
    sc.call(1, 0, BEYOND, 0x10000, HVA)
    text = export.recipe(sc)
    assert text.splitlines()[2:5] == ["kernel 6.12", "address-spaces 1", "variant merged"]
    again = export.replay_recipe(text)
    assert (again.kernel, again.vm.address_spaces, again.results) == ("6.12", 1, [0, -22])
    assert export.text(again.steps) == export.text(sc.steps) and again.version_note == ""
    # one address space: +1 per swap; the CREATE swaps once, the reverted MOVE twice
    assert again.vm.generation(0) == sc.vm.generation(0) == 3
    other = export.replay_recipe(text, kernel="5.17", address_spaces=2)
    assert (other.kernel, other.vm.address_spaces, other.results) == ("5.17", 2, [0, 0])


def test_old_recipe_without_a_kernel_line_runs_on_5_17_and_says_so():
    old = ("kvmviz-recipe 1\nversion 0.1.0\nvariant seed\n"
           "call slot=0x1 flags=0x0 gpa=0x100000 size=0x10000 hva=0x7f0000000000\n"
           f"call slot=0x1 flags=0x0 gpa={BEYOND:#x} size=0x10000 hva=0x7f0000000000")
    sc = export.replay_recipe(old)
    assert (sc.kernel, sc.variant, sc.results) == ("5.17", "seed", [0, 0])
    assert "names no kernel" in sc.version_note and "Linux 5.17" in sc.version_note
    ref = export.Scenario(kernel="5.17", variant="seed")
    ref.call(1, 0, 0x100000, 0x10000, HVA)
    ref.call(1, 0, BEYOND, 0x10000, HVA)
    assert export.text(sc.steps) == export.text(ref.steps)
    assert export.recipe(sc).splitlines()[2] == "kernel 5.17"          # re-saved, it names its kernel
    fragment = export.replay_recipe("call slot=1 gpa=0 size=0x1000 hva=0x7f0000000000")
    assert fragment.kernel == DEFAULT_KERNEL and fragment.version_note == ""

def test_variants_do_not_apply_to_the_array_model():
    with pytest.raises(ValueError, match="kernel 5.15 is the array design"):
        export.Scenario(kernel="5.15", variant="no-catch-up")
    assert export.Scenario(kernel="5.15").vm.implementation == "array"
