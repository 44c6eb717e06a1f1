"""Every check of reference §4.1-4.3 (5.17), with its errno and its place in the order.

6.12's additions (the v1 flag filter, guest_memfd) are in test_kernel612.py.
"""

import errno

import pytest

import kvmviz
from kvmviz.engine.constants import KVM_MEM_MAX_NR_PAGES, TASK_SIZE_MAX
from conftest import HVA


@pytest.fixture
def vm():
    vm = kvmviz.VM(kernel="5.17")
    vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)          # gfn 0x100..0x10f
    return vm


def fails(vm, *call, err=errno.EINVAL, rule=None):
    gens, slots, hist = vm.generations(), vm.memslots(0), len(vm.history)
    with pytest.raises(kvmviz.KvmError) as info:
        vm.set_user_memory_region(*call)
    assert info.value.errno == err
    if rule:
        assert info.value.rule == rule, str(info.value)
    assert vm.generations() == gens and vm.memslots(0) == slots, "a failed check changed the VM"
    assert len(vm.history) == hist and vm.locks == frozenset()     # a refused call records nothing
    return str(info.value)


@pytest.mark.parametrize("call, rule", [
    ((32764, 0, 0, 0x1000, HVA), "4.1"),                      # internal slot ids
    (((1 << 16) | 32766, 0, 0, 0x1000, HVA), "4.1"),          # as bits not checked there
    ((2, 4, 0, 0x1000, HVA), "4.2#1"),                        # unknown flag bit
    ((2, 1 << 16, 0, 0x1000, HVA), "4.2#1"),                  # internal INVALID flag
    ((2, 0, 0, 0x1800, HVA), "4.2#3"),
    ((2, 0, 0x800, 0x1000, HVA), "4.2#4"),
    ((2, 0, 0, 0x1000, HVA + 8), "4.2#5"),
    ((2, 0, 0, 0x2000, TASK_SIZE_MAX - 0x1000), "4.2#5"),     # access_ok: leaves the user half
    ((2, 0, 0, 0x1000, 1 << 47), "4.2#5"),
    ((2 << 16, 0, 0, 0x1000, HVA), "4.2#6"),                  # as_id 2 on x86
    ((2, 0, (1 << 64) - 0x1000, 0x2000, HVA), "4.2#7"),       # gpa + size wraps
    ((2, 0, 0, (KVM_MEM_MAX_NR_PAGES + 1) << 12, 0x1000), "4.2#8"),
])
def test_argument_checks_are_einval(vm, call, rule):
    fails(vm, *call, rule=rule)


def test_access_ok_boundary_is_inclusive(vm):
    vm.set_user_memory_region(3, 0, 0, 0x1000, TASK_SIZE_MAX - 0x1000)
    assert vm.id_to_memslot(3).userspace_addr == TASK_SIZE_MAX - 0x1000


def test_checks_run_in_kernel_order(vm):
    # bad flags and an unaligned gpa: the flag check (#1) comes first
    assert "flags" in fails(vm, 2, 8, 0x800, 0x1000, HVA, rule="4.2#1")
    # unaligned size before unaligned gpa (#3 before #4)
    fails(vm, 2, 0, 0x800, 0x800, HVA, rule="4.2#3")
    # the as_id check (#6) comes after the alignment checks (#5)
    fails(vm, (5 << 16) | 2, 0, 0, 0x1000, HVA + 1, rule="4.2#5")


def test_delete_runs_checks_one_to_eight(vm):
    fails(vm, 1, 0, 0x100001, 0, HVA, rule="4.2#4")          # unaligned gpa, although unused
    fails(vm, 1, 8, 0, 0, HVA, rule="4.2#1")
    assert vm.id_to_memslot(1) is not None


def test_delete_of_missing_slot(vm):
    assert "does not exist" in fails(vm, 7, 0, 0, 0, HVA, rule="4.2#10")
    fails(vm, 1 << 16 | 1, 0, 0, 0, HVA, rule="4.2#10")      # slot 1 exists in as0, not in as1


@pytest.mark.parametrize("flags, gpa, size, hva, what", [
    (0, 0x100000, 0x10000, HVA + 0x1000, "userspace_addr"),
    (0, 0x100000, 0x20000, HVA, "size"),
    (2, 0x100000, 0x10000, HVA, "READONLY"),
])
def test_what_may_not_change(vm, flags, gpa, size, hva, what):
    assert what in fails(vm, 1, flags, gpa, size, hva, rule="4.2#15")


def test_overlap_is_eexist_and_names_the_other_slot(vm):
    msg = fails(vm, 2, 0, 0x10f000, 0x1000, HVA, err=errno.EEXIST, rule="4.2#17")
    assert "slot 1" in msg and "0x10f" in msg
    # the neighbour just above and just below are fine
    vm.set_user_memory_region(2, 0, 0x110000, 0x1000, HVA)
    vm.set_user_memory_region(3, 0, 0xff000, 0x1000, HVA)


def test_move_may_overlap_its_own_old_range(vm):
    vm.set_user_memory_region(1, 0, 0x108000, 0x10000, HVA)
    assert vm.id_to_memslot(1).base_gfn == 0x108


def test_move_onto_another_slot_is_eexist(vm):
    vm.set_user_memory_region(2, 0, 0x200000, 0x1000, HVA)
    fails(vm, 2, 0, 0x10a000, 0x1000, HVA, err=errno.EEXIST, rule="4.2#17")


def test_overlap_is_per_address_space(vm):
    vm.set_user_memory_region(1 << 16 | 2, 0, 0x100000, 0x10000, HVA)   # SMM space: no overlap
    assert len(vm.memslots(1)) == 1


def test_hva_ranges_may_overlap(vm):
    vm.set_user_memory_region(2, 0, 0x200000, 0x10000, HVA)
    assert [s.id for s in vm.hva_to_memslots(HVA, HVA + 1)] == [1, 2]


def test_noop_returns_zero_and_keeps_generation(vm):
    gen = vm.generation(0)
    steps = vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    assert len(steps) == 1 and steps[0].result == 0 and vm.generation(0) == gen
    assert "nothing to do" in steps[0].text


def test_classification(vm):
    def change(*call):
        upd = vm.begin_set_user_memory_region(*call)
        upd.run()
        return upd.change
    assert change(1, 1, 0x100000, 0x10000, HVA) == "FLAGS_ONLY"
    assert change(1, 0, 0x200000, 0x10000, HVA) == "MOVE"       # flags change rides along
    assert vm.id_to_memslot(1).flags == 0
    assert change(1, 0, 0, 0, 0) == "DELETE"
    assert change(1, 0, 0, 0x1000, HVA) == "CREATE"


def test_values_that_do_not_fit_c_fields_raise_valueerror(vm):
    recorded = len(vm.history)
    for bad in ((-1, 0, 0, 0x1000, HVA), (1, 0, 0, 0x1000, 1 << 64), (1, 0, "0x1000", 0x1000, HVA)):
        with pytest.raises(ValueError):
            vm.set_user_memory_region(*bad)
    assert len(vm.history) == recorded and vm.update is None


def test_kvmerror_is_an_oserror_with_a_readable_message(vm):
    with pytest.raises(OSError) as info:
        vm.set_user_memory_region(2, 0, 0x800, 0x1000, HVA)
    assert info.value.errname == "EINVAL" and info.value.slot == 2
    assert "guest_phys_addr 0x800 is not page-aligned (slot 2, as 0)" in str(info.value)


def test_begin_never_raises_for_kernel_errors(vm):
    upd = vm.begin_set_user_memory_region(2, 0, 0x800, 0x1000, HVA)
    steps = list(upd)
    assert upd.result == -errno.EINVAL and steps[-1].stage == "validate"
    assert upd.error.errno == errno.EINVAL
