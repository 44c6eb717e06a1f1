"""Variants: the seed proposal against what merged, and every broken variant caught."""

import pytest

import kvmviz
from kvmviz import VM, check_invariants, variants
from kvmviz.engine.constants import KVM_MEM_LOG_DIRTY_PAGES
from kvmviz.engine.rules import RULES
from kvmviz.engine.errors import ModelBug
from kvmviz.variants.seed import SeedAsPostedProtocol
from conftest import CREATE, DELETE, FLAGS_ON, HVA

MOVE = (1, KVM_MEM_LOG_DIRTY_PAGES, 0x300000, 0x10000, HVA)
#: an ordinary workload: create two slots, log dirty pages, move, fail a delete, delete
WORKLOAD = [(CREATE, 0), ((2, 0, 0, 0x1000, HVA + 0x100000), 0), (FLAGS_ON, 0), (MOVE, 0),
            (DELETE, True), (DELETE, 0), ((3, 0, 0x500000, 0x1000, HVA), True)]


def run_checked(vm, workload=WORKLOAD):
    """Run the workload; return (call number, step, violations) of the first violation, or None."""
    for n, (args, fail) in enumerate(workload):
        upd = vm.begin_set_user_memory_region(*args, fail_prepare=fail)
        steps = upd.run_until(lambda step: check_invariants(vm))
        found = check_invariants(vm)
        if found:
            return n, steps[-1], found
        assert upd.result is not None, f"call {n} is blocked: {upd.blocked}"
    return None


def test_names_and_descriptions():
    assert variants.names()[:2] == ["merged", "seed"]
    assert len(variants.names(broken=True)) >= 4
    for name in variants.names():
        v = variants.describe(name)
        assert v.name == name and len(v.description) > 80 and v.source
        assert v.broken == (name not in ("merged", "seed"))
        assert (v.violates != "") == v.broken
        assert v.violates in RULES or not v.broken
    assert "YXnmrqhvc4mzxZfn@google.com" in variants.describe("seed").source
    assert kvmviz.VM(variant="seed").protocol.name == "seed"


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'x'; choose from merged, seed"):
        VM(variant="x")
    with pytest.raises(ValueError, match="tree"):
        VM(implementation="array", variant="seed")


@pytest.mark.parametrize("name", variants.names(broken=False))
def test_correct_variants_hold_every_invariant(name):
    assert run_checked(VM(variant=name)) is None


def _gens(vm):
    return vm.generations(), vm.swaps, vm.nr_memslot_pages


def test_seed_matches_merged_in_everything_userspace_sees():
    merged, seed = VM(), VM(variant="seed")
    for args, fail in WORKLOAD:
        for vm in (merged, seed):
            upd = vm.begin_set_user_memory_region(*args, fail_prepare=fail)
            upd.run()
        assert _gens(merged) == _gens(seed)
        assert [s.values() for s in merged.memslots(0)] == [s.values() for s in seed.memslots(0)]


def test_seed_allocates_working_for_every_change_and_new_on_the_stack():
    merged, seed = VM(), VM(variant="seed")
    for vm in (merged, seed):
        vm.set_user_memory_region(*CREATE)
    # merged: the heap `new`; seed: the working slot (new was on the stack)
    assert merged.cost["slots_allocated"] == seed.cost["slots_allocated"] == 1
    texts = [s.text for s in VM(variant="seed").set_user_memory_region(*CREATE)]
    assert any("on the stack" in t for t in texts) and any("working slot #1 up front" in t for t in texts)
    for vm in (merged, seed):
        vm.set_user_memory_region(*FLAGS_ON)
        vm.set_user_memory_region(*MOVE)
    # MOVE: merged allocates new + invalid_slot, the seed only the working slot
    assert merged.cost["slots_allocated"] == 1 + 1 + 2
    assert seed.cost["slots_allocated"] == 1 + 1 + 1


def test_seed_move_reuses_the_old_object_and_frees_the_copy():
    vm = VM(variant="seed")
    vm.set_user_memory_region(*CREATE)
    old = vm.memslots(0)[0]
    steps = vm.set_user_memory_region(1, 0, 0x300000, 0x10000, HVA)
    slot = vm.memslots(0)[0]
    assert slot is old and slot.base_gfn == 0x300 and not slot.freed
    working = next(s for s in vm.history.events if s.function == "kvm_move_memslot" and "clear INVALID" in s.text)
    assert working.text.startswith("clear INVALID on #2")
    assert [s.function for s in steps].count("kvm_move_memslot") == 2
    merged = VM()
    merged.set_user_memory_region(*CREATE)
    before = merged.memslots(0)[0]
    merged.set_user_memory_region(1, 0, 0x300000, 0x10000, HVA)
    assert merged.memslots(0)[0] is not before and before.freed


def test_seed_delete_frees_working_inside_kvm_delete_memslot():
    vm = VM(variant="seed")
    vm.set_user_memory_region(*CREATE)
    steps = vm.set_user_memory_region(*DELETE)
    frees = [s for s in steps if s.function == "kvm_delete_memslot" and "free the INVALID copy" in s.text]
    assert len(frees) == 1 and frees[0].stage == "activate"
    assert vm.memslots(0) == [] and check_invariants(vm) == []


@pytest.mark.parametrize("change,args", [("CREATE", CREATE), ("FLAGS_ONLY", FLAGS_ON), ("MOVE", MOVE)])
def test_seed_prepare_failure_frees_working_and_reverts(change, args):
    vm = VM(variant="seed")
    if change != "CREATE":
        vm.set_user_memory_region(*CREATE)
    before = _gens(vm)
    with pytest.raises(kvmviz.KvmError) as e:
        vm.set_user_memory_region(*args, fail_prepare=True)
    assert e.value.errno == 12
    last = [s for s in vm.history.events if s.function == "kvm_set_memslot"][-1]
    assert "free the working slot" in last.text
    swaps = 2 if change == "MOVE" else 0
    assert vm.swaps[0] == before[1][0] + swaps
    assert check_invariants(vm) == []


@pytest.mark.parametrize("args", [CREATE, DELETE])
def test_seed_as_posted_dispatch_slip_reaches_bug(args):
    vm = VM(variant="seed")
    if args == DELETE:
        vm.set_user_memory_region(*CREATE)       # a slot made before the posted code ran
    object.__setattr__(vm, "protocol", SeedAsPostedProtocol(vm))
    upd = vm.begin_set_user_memory_region(*args)
    steps = list(upd)
    assert steps[-1].function == "BUG" and upd.result == "BUG"
    assert "else if" in str(upd.error) and "never returns" in steps[-1].text
    assert isinstance(upd.error, ModelBug)
    with pytest.raises(ModelBug):
        VM(variant="seed-as-posted").set_user_memory_region(*CREATE)
    # the helper did its work, commit never ran: the page count is now wrong
    assert [v.rule for v in check_invariants(vm)][-1] == "accounting"
    assert check_invariants(vm)[-1].startswith("nr_memslot_pages is ")


def test_seed_as_posted_delete_after_a_bugged_create_fails_the_page_count_check():
    vm = VM(variant="seed-as-posted")
    list(vm.begin_set_user_memory_region(*CREATE))
    with pytest.raises(kvmviz.KvmError, match="nr_memslot_pages is smaller") as e:
        vm.set_user_memory_region(*DELETE)
    assert e.value.errno == 5


def test_seed_as_posted_move_and_flags_only_work():
    posted = VM(variant="seed-as-posted")
    upd = posted.begin_set_user_memory_region(*CREATE)
    assert list(upd)[-1].function == "BUG"
    # after the BUG the model lets you go on: FLAGS_ONLY and MOVE take the second chain
    for args in (FLAGS_ON, MOVE):
        steps = posted.set_user_memory_region(*args)
        assert steps[-1].result == 0


# -- each broken variant is caught ------------------------------------------------------
def test_invalid_in_place_caught_by_the_checker():
    found = run_checked(VM(variant="invalid-in-place"))
    assert found is not None
    call, step, violations = found
    assert WORKLOAD[call][0] == MOVE and step.function == "kvm_invalidate_memslot"
    assert violations[0].rule == "in-place" and "flags changed in place" in violations[0]


def test_invalid_in_place_seen_by_a_reader():
    vm = VM(variant="invalid-in-place")
    vm.set_user_memory_region(*CREATE)
    vcpu = vm.add_vcpu()
    vcpu.srcu_read_lock()
    assert vcpu.access(0x100).reason == "ok"
    upd = vm.begin_set_user_memory_region(*DELETE)
    next(upd), next(upd), next(upd)          # validate, allocate, flag the live slot
    gen = vcpu.generation(0)
    assert vcpu.access(0x100).reason == "retry" and vcpu.generation(0) == gen
    found = check_invariants(vm)
    assert [v.rule for v in found] == ["in-place", "in-place"]
    assert "#1.flags changed in place" in found[0] and found[1].startswith("vcpu0 looked up #1")


def test_no_srcu_wait_caught_with_a_reader_inside():
    vm = VM(variant="no-srcu-wait")
    vm.set_user_memory_region(*CREATE)
    # caught with no reader at all (issue 14 finding 10): the catch-up wrote the set it had just unpublished
    assert [(v.rule, v.split(" was")[0]) for v in check_invariants(vm)] == [("grace-period", "as0/set0")]
    vcpu = vm.add_vcpu()
    vcpu.srcu_read_lock()
    assert vcpu.gfn_to_memslot(0x100) is not None
    upd = vm.begin_set_user_memory_region(*DELETE)
    first = None
    for step in upd:
        assert not step.waiting                      # the writer never waits for vcpu0
        found = [v for v in check_invariants(vm) if "vcpu0" in v]
        if found and first is None:
            first = (step.function, found)
    assert first[0] == "kvm_swap_active_memslots"
    assert [v.rule for v in first[1]] == ["grace-period"]
    assert "stored before the grace period ended (synchronize_srcu_expedited skipped" in first[1][0]
    assert vcpu.gfn_to_memslot(0x100) is None        # the slot vanished inside the read section


def test_no_srcu_wait_merged_writer_waits_instead():
    vm = VM()
    vm.set_user_memory_region(*CREATE)
    vcpu = vm.add_vcpu()
    vcpu.srcu_read_lock()
    upd = vm.begin_set_user_memory_region(*DELETE)
    step = next(s for s in upd if s.waiting)
    assert step.function == "synchronize_srcu_expedited" and "vcpu0" in upd.blocked
    assert check_invariants(vm) == []
    vcpu.srcu_read_unlock()
    upd.run()
    assert upd.result == 0 and check_invariants(vm) == []


def test_gen_before_publish_caught_by_the_checker():
    found = run_checked(VM(variant="gen-before-publish"))
    call, step, violations = found
    assert call == 0 and step.function == "kvm_swap_active_memslots"
    assert violations[0].rule == "generation" and "active generation 0x4 after 1 swap(s); expected 0x2" in violations[0]


def test_gen_before_publish_caught_at_publish_with_a_reader():
    vm = VM(variant="gen-before-publish")
    vcpu = vm.add_vcpu()
    vcpu.srcu_read_lock()
    upd = vm.begin_set_user_memory_region(*CREATE)
    assert upd.run_until("rcu_assign_pointer")[-1].function == "rcu_assign_pointer"
    assert vm.generation(0) == 2                     # final value already visible, no |IP
    found = check_invariants(vm)
    assert [v.rule for v in found] == ["grace-period"]
    # the writer has not skipped the wait (it comes later): the message must not claim it did
    assert "synchronize_srcu_expedited was skipped" not in found[0]
    assert found[0].startswith("a swap finished") and "or the in-progress mark never set" in found[0]


def test_no_catch_up_caught_by_the_checker():
    call, step, violations = run_checked(VM(variant="no-catch-up"))
    assert call == 0 and step.function == "kvm_set_memory_region"
    assert violations[0].rule == "same-at-rest" and "at rest both sets must hold the same slot objects" in violations[0]


def test_no_catch_up_seen_by_a_reader():
    vm = VM(variant="no-catch-up")
    vm.set_user_memory_region(*CREATE)
    vm.set_user_memory_region(2, 0, 0, 0x1000, HVA + 0x100000)    # publishes the stale set
    vcpu = vm.add_vcpu()
    assert vcpu.gfn_to_memslot(0x100) is None          # slot 1 vanished without a DELETE


@pytest.mark.parametrize("name", variants.names(broken=True))
def test_every_broken_variant_is_caught_on_an_ordinary_workload(name):
    """With one vCPU inside its read section during the DELETE, every broken variant shows."""
    vm = VM(variant=name)
    vcpu = vm.add_vcpu()
    seen = []
    for n, (args, fail) in enumerate(WORKLOAD):
        if args == DELETE and not fail:
            vcpu.srcu_read_lock()
        upd = vm.begin_set_user_memory_region(*args, fail_prepare=fail)
        try:
            for step in upd:
                seen += check_invariants(vm)
                if step.waiting:
                    vcpu.srcu_read_unlock()
        except ModelBug:
            break
        if seen:
            break
    assert seen, f"{name} was not caught"


@pytest.mark.parametrize("name", variants.names(broken=True))
def test_every_broken_variant_first_breaks_the_rule_it_names(name):
    """``Variant.violates`` is the rule of the first violation on the ordinary workload."""
    call, step, violations = run_checked(VM(variant=name))
    assert violations[0].rule == variants.describe(name).violates, (call, step.function, violations)
