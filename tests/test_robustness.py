"""Issue 14 (engine part): each finding's reproducer, which failed before the fix."""

import random
import tracemalloc

import pytest

import kvmviz
from kvmviz import KvmError, check_invariants
from kvmviz.engine.history import StateError
from kvmviz.engine.errors import ModelBug
from conftest import HVA


def _vm_with_slot(**kw):
    vm = kvmviz.VM(**kw)
    vm.set_user_memory_region(1, 0, 0x100000, 0x1000, HVA)
    return vm


def test_1_stepping_back_into_an_update_then_acting_is_refused_and_nothing_sticks():
    vm = _vm_with_slot()
    upd = vm.begin_set_user_memory_region(1, 0, 0x100000, 0, 0)
    [next(upd) for _ in range(5)]
    vm.history.back()
    locks, n = vm.locks, len(vm.history)
    for act in (vm.add_vcpu, lambda: vm.mmu_notifier_invalidate_range_start(HVA, HVA + 0x1000),
                lambda: vm.set_user_memory_region(2, 0, 0x200000, 0x1000, HVA + 0x100000)):
        with pytest.raises(StateError, match="middle of an update"):
            act()
        assert (vm.locks, len(vm.history)) == (locks, n)
    vm.history.goto(len(vm.history))
    upd.run()
    vm.add_vcpu()
    assert vm.set_user_memory_region(2, 0, 0x200000, 0x1000, HVA + 0x100000)[-1].result == 0
    assert check_invariants(vm) == []


def test_1_acting_after_going_back_before_an_update_abandons_it_cleanly():
    vm = _vm_with_slot()
    n = len(vm.history)
    upd = vm.begin_set_user_memory_region(1, 0, 0x100000, 0, 0)
    [next(upd) for _ in range(5)]
    vm.history.goto(n)
    vm.add_vcpu()
    assert (vm.update, vm.locks, upd.abandoned) == (None, frozenset(), True)
    assert vm.set_user_memory_region(2, 0, 0x200000, 0x1000, HVA + 0x100000)[-1].result == 0


def _crashing_no_catch_up():
    """A no-catch-up VM driven until its update hits a kernel BUG (a duplicate gfn node)."""
    vm, r = kvmviz.VM(variant="no-catch-up"), random.Random(0)
    for _ in range(12):
        s = r.randrange(3)
        try:
            vm.set_user_memory_region(s, 0, r.randrange(4) << 20, r.choice([0, 0x1000, 0x2000]), HVA + (s << 20))
        except KvmError:
            pass
        except ModelBug:
            return vm
    raise AssertionError("no crash")


def test_2_a_model_bug_ends_the_update_as_its_last_step_and_the_vm_stays_explorable():
    vm = _crashing_no_catch_up()
    last = vm.history.events[-1]
    assert (last.function, last.result, vm.update, vm.locks) == ("BUG", "BUG", None, frozenset())
    assert isinstance(last.error, ModelBug) and "already has a slot" in last.text
    end = len(vm.history)
    vm.history.goto(0)                       # raised halfway before: the id-hash undo was not exact
    assert vm.memslots(0) == [] and vm.locks == frozenset()
    vm.history.goto(end)
    assert vm.history.events[-1] is last
    vm.add_vcpu()                            # and new work goes on
    with pytest.raises(KvmError):
        vm.set_user_memory_region(7, 0, 1 << 40, 0x1000, 1)


def test_3_a_blocked_update_iterates_to_the_wait_and_waiting_records_nothing():
    vm = _vm_with_slot()
    v = vm.add_vcpu()
    v.srcu_read_lock()
    upd = vm.begin_set_user_memory_region(1, 0, 0x100000, 0, 0)
    steps = list(upd)                        # never ended before
    assert steps[-1].waiting and upd.blocked == "SRCU readers still inside: vcpu0"
    n = len(vm.history)
    assert all(next(upd) is steps[-1] for _ in range(1000)) and len(vm.history) == n
    with pytest.raises(StateError, match="blocked"):
        upd.run()
    v.srcu_read_unlock()
    assert upd.run()[-1].result == 0


@pytest.mark.parametrize("bad", [("a", "b"), (None, 5), (1.5, 3.0), (-1, 5), (9, 3), (0, 1 << 200), (True, 5)])
def test_4_bad_notifier_ranges_are_refused_before_anything_changes(bad):
    vm = _vm_with_slot()
    n = len(vm.history)
    with pytest.raises((TypeError, ValueError)):
        vm.mmu_notifier_invalidate_range_start(*bad)
    assert (vm.mn_active_invalidate_count, vm.mn_ranges, len(vm.history)) == (0, (), n)
    assert vm.set_user_memory_region(1, 0, 0x100000, 0, 0)[-1].result == 0      # not blocked


def test_4_a_bad_hva_cache_is_refused_before_it_is_added():
    vm = _vm_with_slot()
    v = vm.add_vcpu()
    for gpa, length in (("x", 8), (0x100000, "8"), (-8, 8), (1 << 64, 8)):
        with pytest.raises((TypeError, ValueError)):
            v.gfn_to_hva_cache_init(gpa, length)
    assert v.hva_caches == () and check_invariants(vm) == []


def test_5_a_refused_call_changes_nothing_history_included():
    vm = _vm_with_slot()
    mid = len(vm.history)
    vm.set_user_memory_region(2, 0, 0x200000, 0x1000, HVA + 0x100000)
    end = len(vm.history)
    vm.history.goto(mid)
    with pytest.raises(KvmError):
        vm.set_user_memory_region(3, 0, 0x100000, 0x1000, HVA)          # EEXIST
    assert (len(vm.history), vm.history.cursor) == (end, mid)        # redo history kept
    vm.history.goto(end)
    assert [s.id for s in vm.memslots(0)] == [1, 2]


def test_6_a_call_a_reader_blocks_is_refused_before_it_starts():
    vm = _vm_with_slot()
    vm.add_vcpu().srcu_read_lock()
    gens, n = vm.generations(), len(vm.history)
    with pytest.raises(StateError, match="SRCU readers inside: vcpu0"):
        vm.set_user_memory_region(1, 0, 0x100000, 0, 0)
    assert (vm.update, vm.locks, vm.generations(), len(vm.history)) == (None, frozenset(), gens, n)
    assert kvmviz.VM(variant="no-srcu-wait").set_user_memory_region(1, 0, 0, 0x1000, HVA)   # that one never waits


@pytest.mark.parametrize("call, error", [
    (lambda v: v.access(1.5), TypeError), (lambda v: v.access("x"), TypeError), (lambda v: v.access(True), TypeError),
    (lambda v: v.access(-1), ValueError), (lambda v: v.access(0, as_id=-1), ValueError),
    (lambda v: v.access(0, as_id=2), ValueError), (lambda v: v.vm.generation(-1), ValueError),
    (lambda v: v.vm.history.goto("1"), TypeError), (lambda v: v.vm.history.goto(1.5), TypeError),
    (lambda v: v.vm.history.goto(10 ** 6), ValueError), (lambda v: v.set_smm("off"), TypeError),
    (lambda v: v.access(0, write="yes"), TypeError), (lambda v: v.vm.gfn_to_memslot(-1), ValueError)])
def test_9_bad_api_values_are_refused_with_the_field_named(call, error):
    vm = _vm_with_slot()
    v = vm.add_vcpu()
    n = len(vm.history)
    with pytest.raises(error) as info:
        call(v)
    assert len(vm.history) == n and any(w in str(info.value) for w in ("gfn", "as_id", "history.goto", "step",
                                                                        "set_smm", "write"))


def test_9_smm_needs_a_second_address_space():
    v = kvmviz.VM(address_spaces=1).add_vcpu()
    with pytest.raises(ValueError, match="no SMM"):
        v.set_smm(True)


@pytest.mark.parametrize("text", ["٣", "３", "1_000", "-1", "+1", "1e6", "1.5", "010", "0x", "\u00a01", "", "0x1g"])
def test_9_the_number_parser_refuses_what_int_would_take(text):
    from kvmviz.engine.numbers import parse_number
    with pytest.raises(ValueError, match="slot"):
        parse_number(text, "slot")


def test_9_the_number_parser_reads_decimal_and_hex_and_checks_the_range():
    from kvmviz.engine.numbers import parse_number
    assert [parse_number(t) for t in ("0", "42", "0x2A", "0X2a", " 7\t")] == [0, 42, 42, 42, 7]
    with pytest.raises(TypeError):
        parse_number(True)
    with pytest.raises(ValueError, match="outside 0..32766"):
        parse_number("70000", "slot", 32767)


def _entries_per_action(action, n):
    """Journal slots logged by the first and by the n-th of ``n`` actions."""
    vm = kvmviz.VM()
    sizes = []
    for i in range(n):
        before = len(vm.history.entries)
        action(vm, i)
        sizes.append(len(vm.history.entries) - before)
    return sizes[0], sizes[-1], vm


def test_11_per_action_journal_cost_does_not_grow():
    v = None

    def access(vm, i):
        nonlocal v
        v = v if v is not None and v.vm is vm else vm.add_vcpu()
        v.access(0x100000 + i)

    first, last, vm = _entries_per_action(access, 2000)
    assert last <= first and len(vm.mmio_sptes) == 2000
    first, last, vm = _entries_per_action(lambda vm, i: vm.add_vcpu().srcu_read_lock(), 2000)
    assert last == first and len(vm.srcu.readers) == 2000
    first, last, vm = _entries_per_action(
        lambda vm, i: vm.mmu_notifier_invalidate_range_start(HVA + (i << 12), HVA + (i << 12) + 0x1000), 2000)
    assert last == first and len(vm.mn_ranges) == 2000


def test_11_history_keeps_under_1_kib_per_event():
    def kept(history):
        tracemalloc.start()
        vm = kvmviz.VM(history=history)
        for i in range(300):
            vm.set_user_memory_region(i, 0, i << 12, 0x1000, HVA + (i << 12))
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return size, len(vm.history)
    (on, events), (off, _) = kept(True), kept(False)
    assert (on - off) / events < 1024


def test_10_the_array_model_gets_the_shared_reader_and_grace_period_checks():
    vm = kvmviz.VM(kernel="5.15")
    vm.srcu.read_lock("vcpu0")
    vm.srcu.start_grace_period()            # a swap "finished" while vcpu0 was inside
    found = check_invariants(vm)
    assert [v.rule for v in found] == ["grace-period"] and "stored before the grace period ended" in found[0]


def test_10_skipping_the_grace_period_is_caught_without_any_reader():
    vm = kvmviz.VM(variant="no-srcu-wait")
    vm.set_user_memory_region(1, 0, 0, 0x1000, HVA)
    found = check_invariants(vm)
    assert vm.vcpus == [] and [v.rule for v in found] == ["grace-period"] and "after it was unpublished" in found[0]
    assert check_invariants(_vm_with_slot()) == []
