"""Plots: what they draw, that they do not touch the VM, determinism, aggregation."""

import matplotlib.colors as mcolors
import pytest
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure

import kvmviz
from kvmviz import viz
from kvmviz.viz import sets
from kvmviz.viz.figure import DIFFERS, EMPTY, INVALID, OKABE_ITO, SAME, png_bytes
from conftest import HVA, vm_with


def facecolours(ax):
    """{(hex colour, hatch)} of every box collection on ``ax``."""
    out = set()
    for coll in ax.collections:
        if isinstance(coll, PatchCollection):
            for fc in coll.get_facecolors():
                out.add((mcolors.to_hex(fc).upper(), coll.get_hatch()))
    return out


def widest_edge(ax):
    return max((lw for c in ax.collections if isinstance(c, PatchCollection) for lw in c.get_linewidths()),
               default=0)


def test_palette_is_okabe_ito():
    assert {SAME, DIFFERS, INVALID} <= set(OKABE_ITO.values())
    assert OKABE_ITO["vermillion"] == "#D55E00" and len(OKABE_ITO) == 8


def test_at_rest_both_sets_same_and_active_marked():
    vm = vm_with(3)
    fig = viz.plot_memslots(vm)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    set0, set1 = fig.axes
    assert fig.get_suptitle() == (f"Linux {vm.kernel} model, as0 at rest: both sets hold the same 3 slots; "
                                  "set1 active, generation 0x6")
    assert "ACTIVE" in set1.get_title() and "inactive" in set0.get_title()
    assert facecolours(set0) == facecolours(set1) == {(SAME.upper(), None), ("#FFFFFF", None)}
    labels = [t.get_text() for t in set0.texts]
    assert "id 2 #3 -\n0x100 pages" in labels and "empty" in labels
    assert set0.get_ylabel().startswith("gfn") and set0.get_yticklabels()[0].get_text() == "0x0"
    assert [p.get_label() for p in fig.legends[0].get_patches()][:3] == [
        "same object in both sets", "only in this set (differs)", "INVALID copy"]


def test_mid_move_shows_invalid_copy_differing_slot_and_touched_node():
    vm = vm_with(2)
    # step to the replace of MOVE: the new #4 goes into the inactive set, the active one holds INVALID #5
    upd = vm.begin_set_user_memory_region(1, 0, 0x1000000, 0x100000, 0x7f0010000000)
    assert upd.run_until(lambda s: s.stage == "replace")[-1].stage == "replace"
    fig = viz.plot_memslots(vm)
    active = fig.axes[vm.active_idx[0]]
    inactive = fig.axes[vm.active_idx[0] ^ 1]
    assert (INVALID.upper(), "xx") in facecolours(active)
    assert (DIFFERS.upper(), None) in facecolours(inactive)
    assert widest_edge(inactive) == 3 and widest_edge(active) < 3
    assert fig.get_suptitle().startswith(f"Linux {vm.kernel} model, as0 mid-update: the sets differ in #")
    assert any("(touched)" in t.get_text() for t in inactive.texts)


def test_empty_vm_and_second_address_space():
    fig = viz.plot_memslots(kvmviz.VM(), as_id=1)
    assert fig.axes[0].get_title().startswith("as1/set0 (ACTIVE, generation 0x1)")
    assert facecolours(fig.axes[0]) == {("#FFFFFF", None)}


def test_many_slots_are_aggregated_into_bins():
    vm = vm_with(sets.MAX_DRAWN + 1, history=False)
    fig = viz.plot_memslots(vm)
    ax = fig.axes[0]
    assert len(ax.images) == 1 and "bins" in ax.get_ylabel()
    coverage = ax.images[0].get_array()
    assert coverage.shape == (sets.BINS, 1) and 0.4 < coverage.mean() < 0.6   # 1 MiB of every 2 MiB
    assert not ax.texts                                                       # no slot to mark at rest


def test_aggregated_view_marks_the_changing_slot():
    vm = vm_with(3000, history=False)
    upd = vm.begin_set_user_memory_region(3000, 0, 0x100000000000, 0x1000, 0x7e0000000000)
    assert upd.run_until(lambda s: s.stage == "replace")[-1].stage == "replace"
    fig = viz.plot_memslots(vm)
    inactive = fig.axes[vm.active_idx[0] ^ 1]
    assert [t.get_text() for t in inactive.texts] == ["id 3000 #3001"]
    fig.canvas.draw()


def test_same_state_same_pixels_other_state_other_pixels():
    a, b = vm_with(4), vm_with(4)
    assert png_bytes(viz.plot_memslots(a)) == png_bytes(viz.plot_memslots(b))
    assert png_bytes(viz.plot_step(a)) == png_bytes(viz.plot_step(b))
    b.set_user_memory_region(3, 1, 3 * 0x200000, 0x100000, 0x7f0030000000)
    assert png_bytes(viz.plot_memslots(a)) != png_bytes(viz.plot_memslots(b))


def snapshot(vm):
    sets = [[(s.uid, s.base_gfn) for s in st.slots()] for pair in vm.sets for st in pair]
    caches = [st.last_used_slot for pair in vm.sets for st in pair]
    return (dict(vm.cost), sets, caches, vm.history.cursor, len(vm.history), vm.generations(),
            tuple(st.hva_tree.visited for pair in vm.sets for st in pair))


def test_plots_do_not_touch_the_vm():
    vm = vm_with(3)
    vm.gfn_to_memslot(0x10)
    upd = vm.begin_set_user_memory_region(0, 0, 0x10000000, 0x100000, HVA)
    assert upd.run_until("rcu_assign_pointer")[-1].function == "rcu_assign_pointer"
    v = vm.add_vcpu()
    v.srcu_read_lock()
    before = snapshot(vm)
    for plot in (viz.plot_memslots, viz.plot_trees, viz.plot_generations, viz.plot_step):
        png_bytes(plot(vm))
        assert snapshot(vm) == before, plot.__name__


def test_trees_show_order_intervals_hash_and_touched_nodes():
    vm = vm_with(3)
    upd = vm.begin_set_user_memory_region(7, 0, 0x4000000, 0x100000, HVA)
    assert upd.run_until(lambda s: s.stage == "replace")[-1].stage == "replace"
    fig = viz.plot_trees(vm)
    titles = [ax.get_title() for ax in fig.axes]
    inactive = vm.active_idx[0] ^ 1
    assert titles[3 * inactive] == f"as0/set{inactive} gfn tree: 4 nodes"
    assert titles[3 * inactive + 1] == f"as0/set{inactive} hva tree: 4 ranges"
    assert titles[3 * inactive + 2] == f"as0/set{inactive} id hash: 4 ids"
    gfn_ax, hva_ax, hash_ax = fig.axes[3 * inactive: 3 * inactive + 3]
    assert gfn_ax.get_xlabel() == "in base_gfn order" and hva_ax.get_xlabel().startswith("hva - 0x7f0000000000")
    assert sorted(t.get_text() for t in hash_ax.texts) == ["0", "1", "2", "7"]          # one id per bucket
    assert [t.get_text() for t in gfn_ax.texts if t.get_text()] == ["0x0\n#1", "0x200\n#2", "0x400\n#3", "0x4000\n#4"]
    assert max(p.get_linewidth() for p in gfn_ax.patches) == 3
    assert max(p.get_linewidth() for p in hash_ax.patches) == 2.5           # the new id's bucket
    # slot 7 and slot 0 share their hva: overlapping ranges land on two lanes
    assert len(hva_ax.get_yticks()) == 2
    assert "this step: set" in fig.get_suptitle() and upd.result is None


def test_generations_mark_swaps_in_progress_and_lock_lanes():
    vm = kvmviz.VM(kernel="5.17")
    steps = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)          # CREATE: one swap
    steps += vm.set_user_memory_region(1, 0, 0x1000, 0x1000, 0x10000)    # MOVE: two swaps
    fig = viz.plot_generations(vm, 0)
    gen_ax, lanes = fig.axes
    assert gen_ax.get_title() == (f"Linux {vm.kernel} model, generations over events 1..42: as0 generation 0x6 "
                                  "(set1 active), 3 swap(s)")
    shaded = [p for p in gen_ax.patches if mcolors.to_hex(p.get_facecolor()).upper() == OKABE_ITO["purple"]]
    in_progress = sum(1 for s in steps if s.gens[0][0] >> 63 or s.gens[0][1] >> 63)
    assert len(shaded) == in_progress > 0
    assert [t.get_text() for t in lanes.get_yticklabels()] == ["slots_lock", "slots_arch_lock",
                                                               "mn_invalidate_lock"]
    assert gen_ax.get_ylabel().startswith("generation") and lanes.get_xlabel().startswith("history event")
    both = viz.plot_generations(vm)
    assert {line.get_label() for line in both.axes[0].lines} >= {"as0/set0", "as1/set1"}


def test_generations_draw_reader_lanes_with_pinned_set():
    vm = vm_with(1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    upd = vm.begin_set_user_memory_region(0, 0, 0, 0, 0)                 # DELETE waits for vcpu0
    assert upd.run_until()[-1].waiting and upd.blocked
    next(upd)
    v.srcu_read_unlock()
    upd.run()
    lanes = viz.plot_generations(vm, 0, first=vm.history.cursor - len(upd.steps) - 2).axes[1]
    assert [t.get_text() for t in lanes.get_yticklabels()][-1] == "reader vcpu0"
    assert any(t.get_text().startswith("pins set") for t in lanes.texts)


def test_step_picture_tells_stage_function_and_state():
    vm = vm_with(2)
    upd = vm.begin_set_user_memory_region(1, 0, 0x1000000, 0x100000, 0x7f0010000000)
    assert upd.run_until("rcu_assign_pointer")[-1].function == "rcu_assign_pointer"
    fig = viz.plot_step(vm)
    step = sets.current_step(vm)
    assert fig.get_suptitle().startswith(f"Linux {vm.kernel} model, event {step.index + 1} [invalidate] "
                                         "rcu_assign_pointer: as0 mid-update")
    bar = fig.axes[0]
    current = [t.get_text() for t in bar.texts if t.get_fontweight() == "bold"]
    assert current == ["invalidate"]
    assert any(t.get_text().startswith("rcu_assign_pointer: publish") for t in bar.texts)
    assert "locks held: mn_invalidate_lock, slots_arch_lock, slots_lock" in fig.axes[3].get_title()


def test_before_any_step_the_picture_says_so():
    fig = viz.plot_step(kvmviz.VM(kernel="6.12"))
    assert fig.get_suptitle().startswith("Linux 6.12 model, before the call: as0 at rest")


@pytest.mark.parametrize("plot", [viz.plot_memslots, viz.plot_trees, viz.plot_generations, viz.plot_step])
def test_every_plot_renders_png(plot):
    data = png_bytes(plot(vm_with(2)))
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# -- kernel versions -------------------------------------------------------------------------------
def _mid_move(kernel, **knobs):
    vm = kvmviz.VM(kernel=kernel, **knobs)
    for i in range(3):
        vm.set_user_memory_region(i, 0, i * 0x200000, 0x100000, HVA + i * 0x10000000)
    upd = vm.begin_set_user_memory_region(1, 0, 0x1000000, 0x100000, 0x7f0010000000)
    assert upd.run_until(lambda s: s.stage == "prepare")[-1].stage == "prepare"
    return vm


def _title_box(fig, artist):
    fig.canvas.draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


@pytest.mark.parametrize("kernel", list(kvmviz.KERNELS))
def test_every_title_names_the_version(kernel):
    vm = _mid_move(kernel)
    head = f"Linux {kernel} model, "
    assert viz.plot_memslots(vm).get_suptitle().startswith(head + "as0 mid-update")
    assert viz.plot_step(vm).get_suptitle().startswith(head + f"event {len(vm.history)} [prepare]")
    assert viz.plot_generations(vm, 0).axes[0].get_title().startswith(head + "generations over events 1..")
    if kvmviz.KERNELS[kernel].implementation == "tree":
        assert viz.plot_trees(vm).get_suptitle().startswith(head + "as0 mid-update")


@pytest.mark.parametrize("plot", [viz.plot_memslots, viz.plot_trees, viz.plot_step, viz.plot_generations])
def test_long_model_titles_shrink_and_fit_the_figure(plot):
    vm = _mid_move("6.12", variant="gen-before-publish", address_spaces=1)
    fig = plot(vm) if plot is not viz.plot_generations else plot(vm, 0)
    artist = fig._suptitle if plot is not viz.plot_generations else fig.axes[0].title
    title = artist.get_text()
    assert title.startswith(("Linux 6.12 model (variant gen-before-publish, 1 address space), ",
                             "Linux 6.12 gen-before-publish, 1 AS: "))
    box = _title_box(fig, artist)
    assert 0 <= box.x0 and box.x1 <= fig.get_figwidth() * fig.dpi          # nothing cut off at the sides
    assert title.count("\n") <= 1


def test_the_5_15_array_is_drawn_as_one_structure_at_rest():
    vm = kvmviz.VM(kernel="5.15")
    vm.set_user_memory_region(1, 0, 0, 0x100000, 0x10000)
    vm.set_user_memory_region(2, 0, 0x200000, 0x100000, 0x10000000)
    fig = viz.plot_memslots(vm)
    assert fig.get_suptitle() == ("Linux 5.15 model, as0 at rest: one array of 2 slots (5.15 copies it per "
                                  "update); generation 0x4")
    assert fig.axes[1].get_title().endswith("\nthe same structure: no copy at rest")
    assert fig.axes[0].get_title().endswith("\n2 slots")
    mid = _mid_move("5.15")
    titles = [ax.get_title() for ax in viz.plot_memslots(mid).axes]
    assert "ACTIVE" in titles[0] and "inactive" in titles[1] and "no copy" not in titles[1]
    with pytest.raises(ValueError, match="Linux 5.15 model keeps one sorted array per address space"):
        viz.plot_trees(vm)


def test_generations_of_one_address_space():
    vm = kvmviz.VM(kernel="6.12", address_spaces=1)
    vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    ax = viz.plot_generations(vm).axes[0]
    assert {line.get_label() for line in ax.lines} >= {"as0/set0", "as0/set1"}
    assert not any(line.get_label().startswith("as1") for line in ax.lines)
    assert ax.get_title().endswith("as0 generation 0x1 (set1 active), 1 swap(s)")   # +1 per swap


def test_replay_title_names_the_model_it_ran_on():
    from kvmviz import trace
    from kvmviz.viz.replay import plot_replay
    report = trace.replay(trace.load("qemu-vga-dirty-log.log"), vm=kvmviz.VM(kernel="6.12", history=False))
    lines = plot_replay(report, name="VGA").axes[0].get_title().splitlines()
    assert lines[0].startswith("VGA, address space 0: 15 calls") and lines[1].endswith("replayed on the Linux 6.12 model")
