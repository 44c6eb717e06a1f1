"""What 6.12 does that 5.17 does not: one test per behaviour (docs/kernel-6.12.md)."""

import errno

import pytest

import kvmviz
from kvmviz import KvmError, VM
from kvmviz.engine.constants import KVM_MEM_GUEST_MEMFD as GMEM, KVM_MEM_LOG_DIRTY_PAGES as LOG, KVM_MEM_READONLY as RO
from conftest import HVA

P = 0x1000


def _errno(fn, *args, **kw):
    with pytest.raises(KvmError) as e:
        fn(*args, **kw)
    return e.value


def test_kernels_are_listed_and_named():
    assert list(kvmviz.KERNELS) == ["5.15", "5.17", "6.12"]
    assert [VM(kernel=k).kernel for k in kvmviz.KERNELS] == ["5.15", "5.17", "6.12"]
    assert VM(implementation="array").kernel == "5.15"
    assert all(k.summary for k in kvmviz.KERNELS.values())


@pytest.mark.parametrize("kw", [dict(kernel="5.17", max_gfn=0xFFFF), dict(kernel="5.17", private_mem=True),
                                dict(kernel="5.15", slot_zap_all=False), dict(kernel="6.12", private_mem=True,
                                                                              address_spaces=2),
                                dict(kernel="6.12", address_spaces=3), dict(kernel="4.19"),
                                dict(kernel="5.17", address_spaces=1), dict(kernel="6.12", address_spaces=2.0)])
def test_knobs_a_version_lacks_are_refused(kw):
    with pytest.raises(ValueError):
        VM(**kw)


def test_max_gfn_create_fails_at_prepare_without_a_swap():
    vm = VM(kernel="6.12", max_gfn=0xFFFFF)
    e = _errno(vm.set_user_memory_region, 1, 0, 0xFFFFF000, 2 * P, HVA)
    assert e.errno == errno.EINVAL and vm.generation() == 0 and vm.memslots() == []
    vm.set_user_memory_region(1, 0, 0xFFFFF000, P, HVA)        # the last gfn itself is fine
    assert vm.memslots()[0].end_gfn - 1 == 0xFFFFF


def test_max_gfn_move_really_reverts_with_two_swaps():
    vm = VM(kernel="6.12", max_gfn=0xFFFFF)
    vm.set_user_memory_region(1, 0, 0x100000, P, HVA)
    upd = vm.begin_set_user_memory_region(1, 0, 0x100000000, P, HVA)
    steps = list(upd)
    assert upd.result == -errno.EINVAL and vm.generation() == 2 + 2 * 2
    assert [s.function for s in steps].count("rcu_assign_pointer") == 2
    prepare = next(s for s in steps if s.function == "kvm_arch_prepare_memory_region")
    assert "kvm_mmu_max_gfn() = 0xfffff" in prepare.text and "86931ff7207b" in prepare.text
    assert vm.memslots()[0].base_gfn == 0x100 and kvmviz.check_invariants(vm) == []
    assert VM(kernel="5.17").set_user_memory_region(1, 0, 1 << 51, P, HVA)      # 5.17 has no such check


def test_one_address_space_moves_the_generation_by_one():
    vm = VM(kernel="6.12", address_spaces=1)
    vm.set_user_memory_region(1, 0, 0, P, HVA)
    vm.set_user_memory_region(1, 0, P, P, HVA)
    assert vm.generation() == 3 and vm.generations() == ((2, 3, 1),)     # CREATE: 1 swap, MOVE: 2
    e = _errno(vm.set_user_memory_region, 1 << 16 | 1, 0, 0, P, HVA)
    assert e.errno == errno.EINVAL and "no SMM" in e.message


def test_v1_ioctl_refuses_new_flags_before_the_slot_id():
    vm = VM(kernel="6.12")
    e = _errno(vm.set_user_memory_region, 40000, GMEM, 0, P, HVA)
    assert e.rule == "4.5" and "v1" in e.message and "KVM_SET_USER_MEMORY_REGION2" in e.message
    assert _errno(VM(kernel="5.17").set_user_memory_region, 40000, GMEM, 0, P, HVA).rule == "4.1"


def test_memory_region2_does_not_exist_before_6_8():
    assert _errno(VM(kernel="5.17").set_user_memory_region2, 1, 0, 0, P, HVA).errno == errno.ENOTTY
    assert _errno(VM(kernel="5.17").create_guest_memfd, P).errno == errno.ENOTTY
    vm = VM(kernel="6.12")
    vm.set_user_memory_region2(1, LOG, 0, P, HVA)
    assert vm.memslots()[0].flags == LOG


def test_a_default_vm_refuses_guest_memfd():
    vm = VM(kernel="6.12")
    fd = vm.create_guest_memfd(4 * P)
    e = _errno(vm.set_user_memory_region2, 1, GMEM, 0, P, HVA, fd, 0)
    assert e.errno == errno.EINVAL and "private memory" in e.message


def test_guest_memfd_create_checks():
    vm = VM(kernel="6.12")
    assert [_errno(vm.create_guest_memfd, *a).errno for a in ((0,), (0x1001,), (P, 1))] == [errno.EINVAL] * 3
    assert (vm.create_guest_memfd(P), vm.create_guest_memfd(P)) == (3, 4)


@pytest.fixture
def gvm():
    vm = VM(kernel="6.12", private_mem=True)
    vm.create_guest_memfd(8 * P)
    return vm


@pytest.mark.parametrize("flags, offset, fd, err", [
    (GMEM | LOG, 0, 3, errno.EINVAL), (GMEM | RO, 0, 3, errno.EINVAL), (GMEM, 0x800, 3, errno.EINVAL),
    (GMEM, 6 * P, 3, errno.EINVAL), (GMEM, 0, 9, errno.EBADF), (GMEM, (1 << 64) - P, 3, errno.EINVAL)])
def test_guest_memfd_binding_rules(gvm, flags, offset, fd, err):
    e = _errno(gvm.set_user_memory_region2, 1, flags, 0, 4 * P, HVA, fd, offset)
    assert e.errno == err and gvm.memslots() == [] and gvm.gmem_files[3].bindings == ()
    assert kvmviz.check_invariants(gvm) == []


def test_guest_memfd_slot_binds_overlaps_and_can_only_be_deleted(gvm):
    gvm.set_user_memory_region2(1, GMEM, 0, 4 * P, HVA, 3, 0)
    assert gvm.gmem_files[3].bindings == ((0, 4, "#1"),)
    e = _errno(gvm.set_user_memory_region2, 2, GMEM, 0x100000, 2 * P, HVA, 3, 2 * P)
    assert e.errno == errno.EINVAL and "already bound to #1" in e.message
    assert _errno(gvm.set_user_memory_region2, 1, GMEM, 0, 4 * P, HVA, 3, 0).errno == errno.EINVAL   # same values
    assert _errno(gvm.set_user_memory_region, 1, 0, 0, 4 * P, HVA).errno == errno.EINVAL           # drop the flag
    assert _errno(gvm.set_user_memory_region2, 1, GMEM, P, 4 * P, HVA, 3, 0).errno == errno.EINVAL  # MOVE
    steps = gvm.set_user_memory_region(1, 0, 0, 0, HVA)
    assert "unbind #1 from guest_memfd 3" in next(s.text for s in steps if s.function == "kvm_free_memslot")
    assert gvm.gmem_files[3].bindings == ()
    gvm.set_user_memory_region2(2, GMEM, 0x100000, 2 * P, HVA, 3, 2 * P)
    assert gvm.memslots()[0].gmem == (3, 2)


def test_a_failed_update_unbinds_its_guest_memfd(gvm):
    upd = gvm.begin_set_user_memory_region2(1, GMEM, 0, 4 * P, HVA, 3, 0, fail_prepare=True)
    steps = list(upd)
    assert upd.result == -errno.ENOMEM and gvm.gmem_files[3].bindings == ()
    assert "unbind #1 from guest_memfd 3" in steps[-1].text


def test_guest_memory_reclaimed_follows_the_flush_on_6_12_only():
    for kernel, expected in (("6.12", True), ("5.17", False)):
        vm = VM(kernel=kernel)
        vm.set_user_memory_region(1, 0, 0, P, HVA)
        functions = [s.function for s in vm.set_user_memory_region(1, 0, 0, 0, HVA)]
        assert ("kvm_arch_guest_memory_reclaimed" in functions) is expected
        if expected:
            i = functions.index("kvm_arch_flush_shadow_memslot")
            assert functions[i + 1] == "kvm_arch_guest_memory_reclaimed"


@pytest.mark.parametrize("kw, zapped_all", [({}, True), ({"slot_zap_all": False}, False),
                                            ({"private_mem": True}, False)])
def test_slot_zap_all_quirk(kw, zapped_all):
    vm = VM(kernel="6.12", **kw)
    vm.set_user_memory_region(1, 0, 0, P, HVA)
    steps = vm.set_user_memory_region(1, 0, 0, 0, HVA)
    flush = next(s.text for s in steps if s.function == "kvm_arch_flush_shadow_memslot")
    assert (vm.arch.mmu_valid_gen == 1) is zapped_all
    assert ("every shadow page" in flush) is zapped_all and "aa8d1f48d353" in flush


def test_nr_memslots_dirty_logging_counts_logging_slots():
    vm = VM(kernel="6.12")
    vm.set_user_memory_region(1, LOG, 0, P, HVA)
    vm.set_user_memory_region(2, LOG, P, P, HVA)
    vm.set_user_memory_region(1, 0, 0, P, HVA)          # FLAGS_ONLY: logging off
    assert vm.nr_memslots_dirty_logging == 1
    steps = vm.set_user_memory_region(2, 0, 0, 0, HVA)   # DELETE of a logging slot
    assert vm.nr_memslots_dirty_logging == 0
    assert "nr_memslots_dirty_logging = 0" in next(s.text for s in steps if "commit" in s.function)
    old = VM(kernel="5.17")
    old.set_user_memory_region(1, LOG, 0, P, HVA)
    assert old.nr_memslots_dirty_logging == 0


def test_history_restores_guest_memfd_bindings(gvm):
    gvm.set_user_memory_region2(1, GMEM, 0, 4 * P, HVA, 3, 0)
    n = len(gvm.history)
    gvm.set_user_memory_region(1, 0, 0, 0, HVA)
    gvm.history.goto(n)
    assert gvm.gmem_files[3].bindings == ((0, 4, "#1"),) and gvm.memslots()[0].gmem == (3, 0)
    gvm.history.goto(len(gvm.history))
    assert gvm.gmem_files[3].bindings == ()
