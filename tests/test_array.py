"""The 5.15 array model (reference §6): layout, update_memslots, protocol, costs, parity with the tree."""

import errno
import importlib.util
from pathlib import Path

import pytest

import kvmviz
from kvmviz.engine.array.memslots import SIZEOF_MEMSLOTS_HEADER, ArrayMemslots, kvm_memslots_size, new_entry
from conftest import HVA

ROOT = Path(__file__).resolve().parent.parent


def run(vm, *call, fail=False):
    """One ioctl, step by step, with the invariant checker after every step."""
    upd = vm.begin_set_user_memory_region(*call, fail_prepare=fail)
    for step in upd:
        assert kvmviz.check_invariants(vm) == [], (str(step), kvmviz.check_invariants(vm))
    return upd


def create(vm, slot, gfn, npages=1, flags=0):
    return run(vm, slot, flags, gfn << 12, npages << 12, HVA + (slot << 32))


def labels_and_gfns(vm, as_id=0):
    return [(s.id, s.base_gfn) for s in vm.active_set(as_id).entries()]


# -- layout and update_memslots (reference §6.1, §6.2) ------------------------------
def test_worked_example_abc_plus_d_gives_abdc():
    vm = kvmviz.VM(implementation="array")
    for slot, gfn in ((1, 0x100000), (2, 0xc0000), (3, 0x0)):
        create(vm, slot, gfn)
    upd = create(vm, 4, 0x80000)
    assert labels_and_gfns(vm) == [(1, 0x100000), (2, 0xc0000), (4, 0x80000), (3, 0x0)]
    s = vm.active_set(0)
    assert [s.id_to_index[i] for i in (1, 2, 3, 4, 5)] == [0, 1, 3, 2, -1]
    assert s.used_slots == 4
    update = [st for st in upd.steps if st.function == "update_memslots"]
    assert len(update) == 1 and "insert_back at 3" in update[0].text and "lands at 2" in update[0].text
    assert upd.cost["entries_shifted"] == 1          # only C moved one place back


def test_move_shifts_every_entry_in_between():
    s = ArrayMemslots(as_id=0)
    for i in range(6):
        s.update_memslots(new_entry(uid=i, id=i, base_gfn=0x100 * i, npages=1), "CREATE")
    assert [e[0] for e in s.memslots] == [0x500, 0x400, 0x300, 0x200, 0x100, 0x0]
    before = s.cost["entries_shifted"]
    assert s.update_memslots(new_entry(uid=9, id=0, base_gfn=0x1000, npages=1), "MOVE") == (5, 0, 5)
    assert s.cost["entries_shifted"] - before == 5
    assert [e[4] for e in s.memslots] == [0, 5, 4, 3, 2, 1]
    assert all(s.id_to_index[e[4]] == i for i, e in enumerate(s.memslots))
    assert s.update_memslots(new_entry(id=5), "DELETE") == (1, -1, 4)
    assert s.id_to_index[5] == -1 and s.used_slots == 5


def test_delete_resets_last_used_slot_beyond_the_end():
    s = ArrayMemslots(as_id=0)
    for i in range(3):
        s.update_memslots(new_entry(uid=i, id=i, base_gfn=0x10 * i, npages=1), "CREATE")
    assert s.gfn_to_memslot(0x0).id == 0 and s.last_used_slot == 2
    s.update_memslots(new_entry(id=0), "DELETE")
    assert s.last_used_slot == 0


def test_binary_search_on_the_descending_array():
    s = ArrayMemslots(as_id=0)
    for i, gfn in enumerate((0x0, 0x100, 0x200, 0x1000)):
        s.update_memslots(new_entry(uid=i, id=i, base_gfn=gfn, npages=0x10), "CREATE")
    assert [s.search_memslots(g) for g in (0x0, 0xf, 0x10, 0x105, 0x20f, 0x1000, 0x2000)] == [3, 3, -1, 2, 1, 0, -1]
    assert s.cost["array_search_probes"] > 0


def test_structure_size_is_the_kernel_one():
    assert SIZEOF_MEMSLOTS_HEADER == 65552                  # u64 + atomic_t + int + 32767 shorts
    assert kvm_memslots_size(509) - kvm_memslots_size(508) == 88


# -- protocol (reference §6.3) -------------------------------------------------------
def test_create_duplicates_the_whole_structure_every_time():
    vm = kvmviz.VM(implementation="array")
    for i in range(5):
        upd = create(vm, i, 0x100 * i)
        dup = next(s for s in upd.steps if s.function == "kvm_dup_memslots")
        assert dup.cost["bytes_copied"] == kvm_memslots_size(i)
        assert dup.cost.get("slots_copied", 0) == i
        assert dup.cost["arrays_allocated"] == 1
        assert dup.cost["bytes_allocated"] == kvm_memslots_size(i + 1)       # room for the new slot
    assert vm.nr_memslot_pages == 0          # 5.15 keeps no page count (nr_memslot_pages came with 5.17)


def test_delete_and_move_copy_twice_and_install_twice():
    vm = kvmviz.VM(implementation="array")
    for i in range(4):
        create(vm, i, 0x100 * i)
    for call, change in (((3, 0, 0x800000, 0x1000, HVA + (3 << 32)), "MOVE"), ((3, 0, 0, 0, 0), "DELETE")):
        gen = vm.generation(0)
        upd = run(vm, *call)
        assert upd.change == change and upd.result == 0
        functions = [s.function for s in upd.steps]
        assert functions.count("kvm_dup_memslots") == 1 and functions.count("kvm_copy_memslots") == 1
        assert functions.count("rcu_assign_pointer") == 2
        assert vm.generation(0) == gen + 4
        copies = [s.cost["bytes_copied"] for s in upd.steps if s.function in ("kvm_dup_memslots", "kvm_copy_memslots")]
        assert copies == [kvm_memslots_size(4)] * 2
    assert labels_and_gfns(vm) == [(2, 0x200), (1, 0x100), (0, 0x0)]


def test_invalid_window_is_the_flag_on_the_installed_copy():
    vm = kvmviz.VM(implementation="array")
    create(vm, 1, 0x100)
    upd = vm.begin_set_user_memory_region(1, 0, 0, 0, 0)
    seen = []
    for step in upd:
        slot = vm.gfn_to_memslot(0x100)
        seen.append((step.function, slot.invalid if slot else None))
        if step.function == "kvm_set_memslot" and "set KVM_MEMSLOT_INVALID" in step.text:
            assert [s.invalid for s in vm.memslots(0, "inactive")] == [True]     # only in the copy
            assert [s.invalid for s in vm.memslots(0, "active")] == [False]
    publishes = [i for i, (f, _) in enumerate(seen) if f == "rcu_assign_pointer"]
    assert seen[publishes[0]][1] is True and seen[publishes[1]][1] is None
    assert vm.sets[0][0] is vm.sets[0][1]                                       # no scratch at rest
    assert vm.gfn_to_memslot(0x100) is None


def test_prepare_failure_reverts_by_clearing_invalid():
    vm = kvmviz.VM(implementation="array")
    create(vm, 1, 0x100)
    before = labels_and_gfns(vm)
    upd = run(vm, 1, 0, 0, 0, 0, fail=errno.ENOMEM)
    assert upd.result == -errno.ENOMEM and vm.generation(0) == 2 + 4
    assert any("clear KVM_MEMSLOT_INVALID" in s.text for s in upd.steps)
    assert labels_and_gfns(vm) == before and not vm.memslots(0)[0].invalid
    upd = run(vm, 2, 0, 0x200000, 0x1000, HVA, fail=True)
    assert upd.result == -errno.ENOMEM and vm.generation(0) == 6
    assert [s.function for s in upd.steps].count("rcu_assign_pointer") == 0


def test_dirty_bitmap_lives_in_set_memory_region_and_is_freed_on_failure():
    vm = kvmviz.VM(implementation="array")
    upd = run(vm, 1, kvmviz.KVM_MEM_LOG_DIRTY_PAGES, 0x100000, 0x40000, HVA, fail=True)
    assert upd.result == -errno.ENOMEM
    assert "allocate dirty bitmap" in upd.steps[1].text and "free the dirty bitmap" in upd.steps[-1].text
    run(vm, 1, kvmviz.KVM_MEM_LOG_DIRTY_PAGES, 0x100000, 0x40000, HVA)
    bitmap = vm.memslots(0)[0].dirty_bitmap
    run(vm, 1, 0, 0x100000, 0x40000, HVA)                                       # logging off
    assert bitmap.freed and vm.memslots(0)[0].dirty_bitmap is None


def test_same_stage_names_as_the_tree():
    def stages(vm, calls):
        out = []
        for call in calls:
            upd = vm.begin_set_user_memory_region(*call[:5], fail_prepare=call[5])
            out.append(list(dict.fromkeys(s.stage for s in upd.run())))
        return out
    calls = [(1, 0, 0x100000, 0x1000, HVA, 0), (1, 1, 0x100000, 0x1000, HVA, 0), (1, 1, 0x200000, 0x1000, HVA, 0),
             (1, 0, 0, 0, 0, True), (1, 0, 0, 0, 0, 0), (2, 0, 0, 0x1000, HVA, True)]
    assert stages(kvmviz.VM(implementation="array"), calls) == stages(kvmviz.VM(), calls)


# -- parity with the tree model --------------------------------------------------------
SCRIPT = [(1, 0, 0x100000, 0x10000, HVA, 0), (2, 0, 0x0, 0x1000, HVA + 0x100000, 0),
          (3, 0, 0x80000, 0x1000, HVA, 0), (4, 0, 0x80000, 0x1000, HVA, 0),            # EEXIST
          ((1 << 16) | 1, 0, 0, 0x2000, HVA, 0), (1, 1, 0x100000, 0x10000, HVA, 0),     # SMM slot; FLAGS_ONLY
          (1, 1, 0x100000, 0x10000, HVA, 0), (1, 1, 0x300000, 0x10000, HVA, errno.EIO),  # no-op; MOVE fails
          (1, 1, 0x300000, 0x10000, HVA, 0), (1, 1, 0x300000, 0x20000, HVA, 0),          # MOVE; resize EINVAL
          (2, 0, 0, 0, 0, errno.ENOMEM), (2, 0, 0, 0, 0, 0), (2, 0, 0, 0, 0, 0),         # DELETE fails, works; again
          (5, 2, 0x1000000, 0x1000, HVA, 0), (5, 0, 0x1000000, 0x1000, HVA, 0),          # READONLY toggle: EINVAL
          (32764, 0, 0, 0x1000, HVA, 0), (3, 4, 0, 0x1000, HVA, 0)]                       # internal id; bad flag


def observe(vm):
    # not nr_memslot_pages: the tree counts pages, 5.15 has no such field
    return ([s.values() for a in (0, 1) for w in ("active", "inactive") for s in vm.memslots(a, w)],
            vm.generations()[0][:0], [vm.generation(a) for a in (0, 1)], vm.swaps)


def test_same_errnos_generations_and_slots_as_the_tree():
    tree, array = kvmviz.VM(), kvmviz.VM(implementation="array")
    for call in SCRIPT:
        results = [run(vm, *call[:5], fail=call[5]) for vm in (tree, array)]
        assert [u.result for u in results][0] == results[1].result, call
        assert results[0].change == results[1].change, call
        assert observe(tree) == observe(array), call
        for gfn in (0x0, 0x80, 0x100, 0x10f, 0x300, 0x30f, 0x1000):
            hits = [vm.gfn_to_memslot(gfn) for vm in (tree, array)]
            assert [h and h.values() for h in hits][0] == (hits[1] and hits[1].values())
    hits = [[(a, s.id, g0, g1) for a, s, g0, g1 in vm.mmu_notifier_invalidate_range_start(HVA, HVA + 0x2000)]
            for vm in (tree, array)]
    assert sorted(hits[0]) == sorted(hits[1]) and hits[0]
    assert (tree.nr_memslot_pages, array.nr_memslot_pages) == (0x10 + 0x1 + 0x2 + 0x1, 0)   # slots 1, 3, SMM 1, 5


def test_array_has_no_accounting_checks():
    """5.15 has no nr_memslot_pages: no -EIO on DELETE (§4.2#11), unlike the tree."""
    tree, array = kvmviz.VM(), kvmviz.VM(implementation="array")
    for vm in (tree, array):
        vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
        vm.nr_memslot_pages = 0                  # as if the count had been lost
    with pytest.raises(kvmviz.KvmError, match="accounting bug") as e:
        tree.set_user_memory_region(1, 0, 0, 0, 0)
    assert e.value.errno == errno.EIO
    steps = array.set_user_memory_region(1, 0, 0, 0, 0)
    assert array.memslots(0) == [] and not any("nr_memslot_pages" in s.text for s in steps)


def test_history_restores_array_states_exactly():
    vm = kvmviz.VM(implementation="array")
    states = [snapshot(vm)]
    for call in SCRIPT[:12]:
        for _ in vm.begin_set_user_memory_region(*call[:5], fail_prepare=call[5]):
            states.append(snapshot(vm))
    for n in (len(states) - 1, 0, len(states) // 2, 7, len(states) - 1):
        vm.history.goto(n)
        assert snapshot(vm) == states[n], n
        assert kvmviz.check_invariants(vm) == []


def snapshot(vm):
    return tuple((s.name, s.generation, s.used_slots, s.last_used_slot, s.freed,
                  tuple(tuple(e[:6]) + (e[8],) for e in s.memslots), s.id_to_index.tobytes())
                 for pair in vm.sets for s in pair) + (vm.swaps, vm.locks, vm.nr_memslot_pages)


# -- the invariant checker sees array corruption -----------------------------------------
def test_checker_reports_unsorted_and_inconsistent_index():
    vm = kvmviz.VM(implementation="array")
    for i in range(3):
        create(vm, i, 0x100 * i)
    s = vm.active_set(0)
    s.memslots[0], s.memslots[1] = s.memslots[1], s.memslots[0]
    problems = kvmviz.check_invariants(vm)
    assert [p.rule for p in problems] == ["indexes-agree", "indexes-agree", "gfn-order"]
    assert "id_to_index says" in problems[0] and "not sorted descending" in problems[2]
    s.memslots[0], s.memslots[1] = s.memslots[1], s.memslots[0]
    s.generation += 2
    assert kvmviz.check_invariants(vm) == ["as0: active generation 0x8 after 3 swap(s); expected 0x6 "
                                           "(0 + 2 per completed swap)"]
    assert kvmviz.check_invariants(vm)[0].rule == "generation"


# -- cost accounting in the tree model too ------------------------------------------------
def test_tree_costs_do_not_grow_with_n_array_costs_do():
    def move_cost(design, n):
        vm = kvmviz.VM(implementation=design, history=False)
        for i in range(n):
            vm.set_user_memory_region(i, 0, i << 12, 0x1000, HVA + (i << 12))
        upd = vm.begin_set_user_memory_region(n - 1, 0, (n + 8) << 12, 0x1000, HVA + ((n - 1) << 12))
        upd.run()
        return upd.cost
    small, big = move_cost("tree", 8), move_cost("tree", 512)
    assert small["slots_allocated"] == big["slots_allocated"] == 2          # new + invalid_slot
    assert small["bytes_copied"] == big["bytes_copied"] == 88               # kvm_copy_memslot
    assert big["gfn_tree_nodes"] < 3 * small["gfn_tree_nodes"]
    small, big = move_cost("array", 8), move_cost("array", 512)
    assert big["bytes_copied"] - small["bytes_copied"] == 2 * 504 * 88      # two whole copies
    assert "slots_allocated" not in big and big["arrays_allocated"] == 1


# -- benchmark and plot --------------------------------------------------------------------
def load_benchmark():
    spec = importlib.util.spec_from_file_location("memslot_perf", ROOT / "benchmarks" / "memslot_perf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_costs_are_deterministic_and_match_the_stored_plot_data():
    from kvmviz.viz import scaling
    bench = load_benchmark()
    results = {}
    for design in bench.DESIGNS:
        bench.measure(10, design, repeats=1, budget=2e6, results=results)
    lines, _ = bench.table(results, [10])
    assert len(lines) == 2 + len(bench.TESTS) and lines[2].split()[:2] == ["10", "map"]
    stored = {(r["design"], r["test"]): r for r in scaling.load_costs() if r["n"] == 10}
    for (n, test, design), r in results.items():
        if test != "move active":
            assert stored[(design, test)]["work"] == bench.work(r["cost"]), (design, test)


def test_benchmark_flags_ratios_more_than_3x_off():
    bench = load_benchmark()
    results = {(10, t, d): dict(seconds=1.0, cost={}) for t in bench.TESTS for d in bench.DESIGNS}
    results[(10, "setup", "array")]["seconds"] = 10.0          # series: 1.2x; model: 10x
    _, flags = bench.table(results, [10])
    assert flags == [(10, "setup", "model ratio 8.3x larger")]


def test_scaling_plot_is_log_log_with_both_designs():
    from kvmviz.viz import scaling
    fig = scaling.plot_scaling()
    assert len(fig.axes) == len(scaling.PANELS)
    for ax in fig.axes:
        assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log") and ax.get_title()
    colours = {line.get_color() for line in fig.axes[0].get_lines()}
    assert colours == {scaling.OKABE_ITO["vermillion"], scaling.OKABE_ITO["blue"]}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["array (5.10-5.15)", "tree (5.17+)",
                                                                                   "sampled, scaled up"]
    with pytest.raises(ValueError):
        scaling.plot_scaling(metric="seconds")


def test_benchmark_bulk_load_gives_the_state_the_ioctls_give():
    bench = load_benchmark()
    layout = bench.Layout(40, bench.UNMAP_SIZE)
    real, bulk = bench.new_vm("array"), bench.new_vm("array")
    for k in range(39):
        real.set_user_memory_region(*layout.region(k))
    bench.bulk_load(bulk, layout, 39)
    assert kvmviz.check_invariants(bulk) == []
    for attr in ("nr_memslot_pages", "swaps", "uid"):
        assert getattr(bulk, attr) == getattr(real, attr), attr
    a, b = real.active_set(0), bulk.active_set(0)
    assert [e[:6] for e in a.memslots] == [e[:6] for e in b.memslots]
    assert (a.generation, a.used_slots, a.id_to_index) == (b.generation, b.used_slots, b.id_to_index)
    assert bulk.srcu.seq == real.srcu.seq
