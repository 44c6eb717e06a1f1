"""The Stepper's object picture (kvmviz.viz.objects): slots in no set, the 5.15 array of values."""

import kvmviz
from kvmviz.viz.objects import plot_objects


def vm_with(n, kernel=None):
    vm = kvmviz.VM(kernel=kernel)
    for i in range(n):
        vm.set_user_memory_region(i, 0, i * 0x200000, 0x100000, 0x7f0000000000 + i * 0x10000000)
    return vm


def texts(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def arrow_end_x(fig):
    (arrow,) = [a for a in fig.axes[0].texts if a.get_text() == "" and hasattr(a, "xy")]
    return arrow.xy[0]


def test_a_slot_struct_no_set_holds_yet_is_drawn_in_no_set():
    vm = vm_with(2)
    upd = vm.begin_set_user_memory_region(1, 0, 0x40000000, 0x100000, 0x7f0010000000)     # MOVE slot 1
    heights, seen = set(), []
    for step in upd:
        fig = plot_objects(vm)
        heights.add(fig.bbox.height)
        seen.append((step.function, [s.label for s in vm.unlinked_slots()], texts(fig)))
    assert len(heights) == 1                                      # the row is there all call long
    (fn, unlinked, t), = [s for s in seen if s[0] == "kvm_set_memslot"][:1]
    assert fn == "kvm_set_memslot" and unlinked == ["#3", "#4"]   # new, then the INVALID copy
    assert "slot 1 #3\ngfn 0x40000 +0x100" in t and "#4\nkzalloc: all zero" in t
    assert "allocated,\nin no set:" in t
    copied = [s for s in seen if s[0] == "kvm_copy_memslot"][0]
    assert copied[1] == ["#3", "#4"] and "slot 1 #4\ngfn 0x200 +0x100" in copied[2]
    replaced = [s for s in seen if s[0] == "kvm_replace_memslot"][0]
    assert replaced[1] == ["#3"]                                  # the INVALID copy is linked now
    assert seen[-1][1] == [] and "none" in seen[-1][2]
    vm.history.goto(vm.history.cursor - 24)                       # back in time: the structs come back
    assert [s.label for s in vm.unlinked_slots()] == ["#3", "#4"]


def test_a_failed_prepare_frees_new_and_the_row_empties():
    vm = vm_with(1)
    vm.begin_set_user_memory_region(2, 0, 0x400000, 0x1000, 0x7f0020000000, fail_prepare=True).run()
    assert vm.unlinked_slots() == [] and "none" in texts(plot_objects(vm))


def test_the_array_shows_one_structure_at_rest_and_the_scratch_copy_mid_update():
    vm = vm_with(3, kernel="5.15")
    rest = texts(plot_objects(vm))
    assert [t for t in rest if t.startswith("memslots@")] == [
        "memslots@3 (ACTIVE), one structure: no copy at rest\ngeneration 0x6, used_slots 3"]
    assert sum(t.startswith("slot 1 #2") for t in rest) == 1 and "[0]" in rest and "[2]" in rest
    upd = vm.begin_set_user_memory_region(1, 0, 0x40000000, 0x100000, 0x7f0010000000)     # MOVE slot 1
    seen = []
    for step in upd:
        fig = plot_objects(vm)
        seen.append((step.function, texts(fig), arrow_end_x(fig)))
    dup = [s for s in seen if s[0] == "kvm_dup_memslots"][0]
    assert [t for t in dup[1] if t.startswith("memslots@")] == [
        "memslots@3 (ACTIVE)\ngeneration 0x6, used_slots 3", "memslots@4 (not published)\ngeneration 0x6, used_slots 3"]
    assert sum(t.startswith("slot 1 #2") for t in dup[1]) == 2   # values are copied, not shared
    publish = [i for i, s in enumerate(seen) if s[0] == "rcu_assign_pointer"]
    assert len(publish) == 2
    before, first, second = seen[publish[0] - 1][2], seen[publish[0]][2], seen[publish[1]][2]
    assert before < 0.5 < first and second < 0.5                  # @3 -> @4 (INVALID) -> @3 (reused)
    moved = [s for s in seen if s[0] == "update_memslots"][0][1]
    assert moved[moved.index("[0]") - 1].startswith("slot 1 #4\ngfn 0x40000")   # shifted to the front
    assert any("no copy at rest" in t for t in seen[-1][1])       # kvfree: one structure again
