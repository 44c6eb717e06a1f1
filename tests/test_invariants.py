"""The invariant checker catches each kind of broken state, files it under the right rule, and only those."""

import ast
import copy
import pickle
import sys
from pathlib import Path

import pytest

import kvmviz
from kvmviz.engine import invariants
from kvmviz.engine.array import invariants as array_invariants
from kvmviz.engine.array.memslots import AS, FLAGS
from kvmviz.engine.constants import KVM_MEM_LOG_DIRTY_PAGES as LOG, KVM_MEM_READONLY as RO
from kvmviz.engine.constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from kvmviz.engine.rules import RULES, Violation
from kvmviz.engine.tree import invariants as tree_invariants
from conftest import HVA, rules_of

KERNEL = {"tree": "5.17", "array": "5.15"}
CHECKERS = (invariants, tree_invariants, array_invariants)


def vm_with_slots(design="tree", flags=0):
    vm = kvmviz.VM(kernel=KERNEL[design])
    vm.set_user_memory_region(1, flags, 0, 0x4000, HVA)
    vm.set_user_memory_region(2, 0, 0x10000, 0x4000, HVA + 0x10000)
    assert kvmviz.check_invariants(vm) == []
    return vm


def test_in_place_write_to_a_live_slot():
    vm = vm_with_slots()
    vm.id_to_memslot(1).flags = 1
    assert rules_of(vm) == ["in-place"]
    assert kvmviz.check_invariants(vm)[0].startswith("as0: #1.flags changed in place (0x0 -> 0x1)")


def test_write_to_a_slot_only_in_the_inactive_set_is_allowed():
    vm = vm_with_slots()
    upd = vm.begin_set_user_memory_region(1, 0, 0, 0, 0)
    for step in upd:
        if step.function == "kvm_arch_flush_shadow_memslot":
            old = vm.inactive_set(0).id_to_memslot(1)
            assert not old.invalid
            old.userspace_addr = old.userspace_addr     # like old.arch = invalid.arch: legal
            assert vm.in_place_writes == ()


def test_sets_disagree_at_rest():
    vm = vm_with_slots()
    vm.inactive_set(0).replace(vm.inactive_set(0).id_to_memslot(2), None)
    assert rules_of(vm) == ["same-at-rest"]


def test_overlap_and_misplaced_node():
    vm = vm_with_slots()
    s = vm.inactive_set(0)
    x = s.id_to_memslot(2)
    object.__setattr__(x, "base_gfn", 2)             # behind the checker's back
    assert rules_of(vm) == ["gfn-order"] * 4          # in both sets: sits under 0x10, overlaps #1
    assert sum("sits under gfn 0x10" in v for v in kvmviz.check_invariants(vm)) == 2


def test_indexes_out_of_step():
    vm = vm_with_slots()
    s = vm.active_set(0)
    s.hash_del(s.id_to_memslot(1))
    assert rules_of(vm) == ["indexes-agree"]
    assert "the id hash holds 1 slots, the gfn tree 2" in kvmviz.check_invariants(vm)[0]
    s2 = vm.inactive_set(0)
    s2.hva_remove(s2.id_to_memslot(2))
    assert rules_of(vm) == ["indexes-agree"] * 2
    assert "the hva tree holds 1 slots" in kvmviz.check_invariants(vm)[1]


def test_freed_but_reachable():
    vm = vm_with_slots()
    vm.free(vm.id_to_memslot(2))
    assert rules_of(vm) == ["free-after-gp"] * 2      # linked by both sets
    vm2 = vm_with_slots(flags=LOG)
    vm2.free(vm2.id_to_memslot(1).dirty_bitmap)
    assert rules_of(vm2) == ["free-after-gp"] * 2
    assert all("points to freed dirty_bitmap" in v for v in kvmviz.check_invariants(vm2))


def test_dangling_last_used_slot():
    vm = vm_with_slots()
    s = vm.active_set(0)
    s.last_used_slot = kvmviz.Memslot(uid=99)
    assert rules_of(vm) == ["stale-cache"]
    assert "last_used_slot points to #99" in kvmviz.check_invariants(vm)[0]


@pytest.mark.parametrize("design", ["tree", "array"])
def test_generation_rules(design):
    vm = vm_with_slots(design)
    vm.active_set(0).generation += 2                   # a bump without a swap
    assert rules_of(vm)[0] == "generation" and set(rules_of(vm)) == {"generation"}
    assert kvmviz.check_invariants(vm)[0] == ("as0: active generation 0x6 after 2 swap(s); expected 0x4 "
                                              "(0 + 2 per completed swap)")
    vm = vm_with_slots(design)
    vm.active_set(0).generation += 1
    assert kvmviz.check_invariants(vm)[0] == "as0: active generation 0x5 is not 0 mod 2"
    vm = vm_with_slots(design)
    vm.active_set(0).generation |= IP
    assert "as0: the in-progress bit is set but no update is running" in kvmviz.check_invariants(vm)
    assert set(rules_of(vm)) == {"generation"}


def test_inactive_generation_rule():
    vm = vm_with_slots()
    vm.inactive_set(0).generation = vm.generation(0) + 2     # final value before publishing
    assert rules_of(vm) == ["generation"]
    assert "expected the stale 0x2" in kvmviz.check_invariants(vm)[0]


@pytest.mark.parametrize("design", ["tree", "array"])
def test_locks_left_held(design):
    vm = vm_with_slots(design)
    vm.lock("slots_arch_lock")
    assert kvmviz.check_invariants(vm) == ["no update is running but slots_arch_lock is still held"]
    assert rules_of(vm) == ["locks"]


def test_mid_update_difference_must_be_the_changing_slot():
    vm = vm_with_slots()
    upd = vm.begin_set_user_memory_region(1, 0, 0x20000, 0x4000, HVA)
    for step in upd:
        if step.function == "kvm_move_memslot":
            assert kvmviz.check_invariants(vm) == []
            s = vm.inactive_set(0)
            s.replace(s.id_to_memslot(2), None)
            assert rules_of(vm) == ["differ-by-one"]
            assert "may differ only in slot 1" in kvmviz.check_invariants(vm)[0]
            break


def test_arch_write_to_a_live_slot_under_slots_arch_lock_is_sanctioned():
    """x86 lazy rmap allocation: the one in-place write the kernel allows (reference §1.5)."""
    vm = vm_with_slots()
    v = vm.add_vcpu()
    v.srcu_read_lock()
    live = v.gfn_to_memslot(0)                          # a reader holds the slot
    vm.lock("slots_arch_lock")
    live.arch = vm.alloc("arch", 8)
    vm.unlock("slots_arch_lock")
    assert len(vm.in_place_writes) == 1 and kvmviz.check_invariants(vm) == []


def test_other_writes_under_slots_arch_lock_and_arch_without_it_are_reported():
    vm = vm_with_slots()
    vm.lock("slots_arch_lock")
    vm.id_to_memslot(1).flags = 1                       # not arch: the lock does not make it legal
    vm.unlock("slots_arch_lock")
    vm.id_to_memslot(2).arch = vm.alloc("arch", 8)     # arch, but without the lock
    problems = kvmviz.check_invariants(vm)
    assert [v.rule for v in problems] == ["in-place", "in-place"]
    assert [p.split(" changed")[0] for p in problems] == ["as0: #1.flags", "as0: #2.arch"]


def test_sanctioned_arch_write_follows_history():
    vm = vm_with_slots()
    vm.lock("slots_arch_lock")
    vm.id_to_memslot(1).arch = vm.alloc("arch", 8)
    vm.unlock("slots_arch_lock")
    vm.history.record("lazy rmap allocation")
    vm.id_to_memslot(1).arch = vm.alloc("arch", 8)     # again, without the lock
    vm.history.record("unlocked arch write")
    assert rules_of(vm) == ["in-place"]
    vm.history.back()
    assert vm.history.cursor and kvmviz.check_invariants(vm) == []


def test_without_history_every_arch_write_is_reported():
    vm = kvmviz.VM(history=False)
    vm.set_user_memory_region(1, 0, 0, 0x4000, HVA)
    vm.lock("slots_arch_lock")
    vm.id_to_memslot(1).arch = vm.alloc("arch", 8)
    vm.unlock("slots_arch_lock")
    assert rules_of(vm) == ["in-place"]
    assert "#1.arch changed in place" in kvmviz.check_invariants(vm)[0]


# -- the shared rules run for both designs and file the same breakage under the same rule -----------
def _grace_period_open(vm):
    vm.srcu.read_lock("vcpu0")
    vm.srcu.start_grace_period()            # a swap "finished" while vcpu0 was inside


def _reader_sees_a_change(vm):
    v = vm.add_vcpu()
    v.srcu_read_lock()
    slot = v.gfn_to_memslot(0)
    if vm.implementation == "tree":
        object.__setattr__(slot, "flags", RO)       # behind the in-place recorder's back
    else:
        slot.entry[FLAGS] = RO                      # the active structure's value itself


def _reader_reaches_a_freed_bitmap(vm):
    v = vm.add_vcpu()
    v.srcu_read_lock()
    vm.free(v.gfn_to_memslot(0).dirty_bitmap)


def _stale_hva_cache(vm):
    v = vm.add_vcpu()
    v.gfn_to_hva_cache_init(0x1000, 8)
    if vm.implementation == "tree":
        object.__setattr__(v.hva_caches[0], "memslot", kvmviz.Memslot(uid=99))
    else:
        s = vm.active_set(0)
        s.memslots[-1] = list(s.memslots[-1])        # same value, another entry: the cache's is gone


#: (case, corruption, rules) that read the same on both designs
SHARED = [
    ("lock left held", lambda vm: vm.lock("slots_arch_lock"), ["locks"]),
    ("grace period open", _grace_period_open, ["grace-period"]),
    ("page count wrong", lambda vm: setattr(vm, "nr_memslot_pages", 5), ["accounting"]),
    ("reader sees a change", _reader_sees_a_change, ["in-place"]),
    ("reader reaches a freed bitmap", _reader_reaches_a_freed_bitmap, ["free-after-gp"] * 3),
    ("stale hva cache", _stale_hva_cache, ["stale-cache"]),
    ("generation odd", lambda vm: setattr(vm.active_set(0), "generation", vm.generation(0) + 1), None),
    ("generation bumped without a swap", lambda vm: setattr(vm.active_set(0), "generation", vm.generation(0) + 2),
     None),
    ("in progress at rest", lambda vm: setattr(vm.active_set(0), "generation", vm.generation(0) | IP), None),
]


@pytest.mark.parametrize("case, corrupt, expected", SHARED, ids=[c[0] for c in SHARED])
def test_the_shared_rules_report_the_same_on_both_designs(case, corrupt, expected):
    found = {}
    for design in ("tree", "array"):
        vm = vm_with_slots(design, flags=LOG)
        corrupt(vm)
        found[design] = rules_of(vm)
    if expected is None:                     # the generation: the other set's rule differs by design
        assert found["tree"][0] == found["array"][0] == "generation" and set(found["tree"]) == {"generation"}
    else:
        assert found["tree"][-len(expected):] == found["array"][-len(expected):] == expected, found


def test_the_generation_messages_read_the_same_on_both_designs():
    for design in ("tree", "array"):
        vm = vm_with_slots(design)
        vm.active_set(0).generation += 1
        assert kvmviz.check_invariants(vm)[:2] == ["as0: active generation 0x5 is not 0 mod 2",
                                                   "as0: active generation 0x5 after 2 swap(s); expected 0x4 "
                                                   "(0 + 2 per completed swap)"]


@pytest.mark.parametrize("design, text", [
    ("tree", "nr_memslot_pages is 0x5 but the slots hold 0x8 pages (commit skipped or ran twice)"),
    ("array", "nr_memslot_pages is 0x5 but 5.15 keeps no page count: the field must stay 0")])
def test_a_wrong_page_count_reads_per_design(design, text):
    vm = vm_with_slots(design)
    vm.nr_memslot_pages = 5
    assert kvmviz.check_invariants(vm) == [text]


# -- every message the checker can write, and its rule ----------------------------------------------
def _set_attr(obj, **values):
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _mid_update(vm, call, until):
    upd = vm.begin_set_user_memory_region(*call)
    if not until(vm):
        upd.run_until(lambda step: until(vm))
    assert until(vm), f"{call} never reached the state asked for"
    return upd


def _tree_hash_bucket(vm):
    buckets = vm.active_set(0).id_hash
    b = next(i for i, bucket in enumerate(buckets) if 1 in bucket)
    buckets[(b + 1) % len(buckets)][1] = buckets[b].pop(1)


def _tree_hva_range(vm):
    s = vm.active_set(0)
    slot = s.id_to_memslot(1)
    s.hva_tree.remove(slot.userspace_addr, slot)
    s.hva_tree.insert(slot.userspace_addr, slot.userspace_addr + 0xfff, slot)


def _tree_unpublished_written(vm):
    vm.note_unpublished(0, vm.inactive_set(0), vm.srcu.start_grace_period())
    vm.inactive_set(0).edits += 1                  # as a kvm_replace_memslot on it would


def _tree_pinned_set_edited(vm):
    v = vm.add_vcpu()
    v.srcu_read_lock()
    vm.active_set(0).edits += 1


def _tree_stale_vcpu_cache(vm):
    v = vm.add_vcpu()
    v.gfn_to_memslot(0)
    v.last_used_slot = kvmviz.Memslot(uid=99)      # tagged with the current generation, in no set


def _array_unpublished_freed(vm):
    old = vm.active_set(0).kvm_dup_memslots(seq=9, change="MOVE")
    vm.note_unpublished(0, old, vm.srcu.start_grace_period())
    vm.free(old)


def _array_scratch(vm):
    _mid_update(vm, (1, 0, 0x20000, 0x4000, HVA), lambda vm: vm.sets[0][1] is not vm.sets[0][0])
    return vm.sets[0][1]


def _scratch_differs(vm):
    """An edit of another slot in the scratch copy: a new record (the model copies on write, never in place)."""
    slots = _array_scratch(vm).memslots
    slots[0] = slots[0][:FLAGS] + [RO] + slots[0][FLAGS + 1:]


def _swap_entries(vm):
    m = vm.active_set(0).memslots
    m[0], m[1] = m[1], m[0]


#: (case, design, corruption, the rules check_invariants reports, in order)
CASES = [(f"{case} ({design})", design, corrupt, expected)
         for case, corrupt, expected in SHARED if expected for design in ("tree", "array")] + [
    ("live slot written", "tree", lambda vm: setattr(vm.id_to_memslot(1), "flags", RO), ["in-place"]),
    ("node_idx out of range", "tree", lambda vm: _set_attr(vm.sets[0][0], node_idx=5), ["indexes-agree"] * 3),
    ("set in the wrong address space", "tree", lambda vm: _set_attr(vm.sets[0][0], as_id=1), ["address-space"]),
    ("slot in the wrong address space", "tree", lambda vm: _set_attr(vm.id_to_memslot(2), as_id=1),
     ["address-space"] * 2),
    ("node of a set not linked", "tree", lambda vm: _set_attr(vm.id_to_memslot(2), nodes=0b10), ["indexes-agree"]),
    ("base_gfn changed while linked", "tree", lambda vm: _set_attr(vm.id_to_memslot(2), base_gfn=0x2),
     ["gfn-order"] * 4),
    ("slot in the wrong id-hash bucket", "tree", _tree_hash_bucket, ["indexes-agree"]),
    ("slot missing from the id hash", "tree", lambda vm: vm.active_set(0).hash_del(vm.active_set(0).id_to_memslot(1)),
     ["indexes-agree"]),
    ("hva node with another range", "tree", _tree_hva_range, ["indexes-agree"]),
    ("set's cache outside the set", "tree",
     lambda vm: setattr(vm.active_set(0), "last_used_slot", kvmviz.Memslot(uid=99)), ["stale-cache"]),
    ("slot freed while linked", "tree", lambda vm: vm.free(vm.id_to_memslot(2)), ["free-after-gp"] * 2),
    ("sets differ at rest", "tree", lambda vm: vm.inactive_set(0).replace(vm.inactive_set(0).id_to_memslot(2), None),
     ["same-at-rest"]),
    ("sets differ in two slots mid-update", "tree",
     lambda vm: (_mid_update(vm, (1, 0, 0x20000, 0x4000, HVA), lambda vm: vm.changing is not None),
                 vm.inactive_set(0).replace(vm.inactive_set(0).id_to_memslot(2), None)), ["differ-by-one"]),
    ("generation odd", "tree", SHARED[6][1], ["generation"] * 3),
    ("inactive marked in progress at rest", "tree",
     lambda vm: setattr(vm.inactive_set(0), "generation", vm.generation(0) | IP), ["generation"]),
    ("in progress at rest", "tree", SHARED[8][1], ["generation"] * 3),
    ("unpublished set written before the wait", "tree", _tree_unpublished_written, ["grace-period"]),
    ("pinned set edited", "tree", _tree_pinned_set_edited, ["grace-period"]),
    ("vCPU slot cache outside its set", "tree", _tree_stale_vcpu_cache, ["stale-cache"]),
    ("structure freed while active", "array", lambda vm: vm.free(vm.active_set(0)), ["free-after-gp"]),
    ("structure in the wrong address space", "array", lambda vm: _set_attr(vm.active_set(0), as_id=1),
     ["address-space"]),
    ("used_slots off by one", "array", lambda vm: setattr(vm.active_set(0), "used_slots", 3), ["indexes-agree"] * 2),
    ("value in the wrong address space", "array", lambda vm: vm.active_set(0).memslots[0].__setitem__(AS, 1),
     ["address-space"]),
    ("array not sorted", "array", _swap_entries, ["indexes-agree", "indexes-agree", "gfn-order"]),
    ("cached index beyond the array", "array", lambda vm: setattr(vm.active_set(0), "last_used_slot", 7),
     ["stale-cache"]),
    ("value points to a freed bitmap", "array", lambda vm: vm.free(vm.id_to_memslot(1).dirty_bitmap),
     ["free-after-gp"]),
    ("scratch copy left at rest", "array",
     lambda vm: setattr(vm, "sets", ((vm.sets[0][0], vm.sets[0][0].kvm_dup_memslots(seq=9, change="MOVE")),)
                        + vm.sets[1:]), ["same-at-rest"]),
    ("scratch differs in two slots", "array", _scratch_differs, ["differ-by-one"]),
    ("scratch with a foreign generation", "array", lambda vm: setattr(_array_scratch(vm), "generation", 0x40),
     ["generation"]),
    ("generation bumped without a swap", "array", SHARED[7][1], ["generation"]),
    ("unpublished structure freed before the wait", "array", _array_unpublished_freed, ["free-after-gp"]),
]


@pytest.mark.parametrize("case, design, corrupt, expected", CASES, ids=[c[0] for c in CASES])
def test_each_corruption_is_filed_under_its_rule(case, design, corrupt, expected):
    vm = vm_with_slots(design, flags=LOG)
    corrupt(vm)
    assert rules_of(vm) == expected, kvmviz.check_invariants(vm)


def test_every_rule_is_triggered_by_some_case():
    assert {r for *_, expected in CASES for r in expected} == set(RULES)


def _violation_sites():
    """(file, first line, last line, rule) of every ``Violation(...)`` the checker modules write."""
    sites = []
    for module in CHECKERS:
        path = Path(module.__file__)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Violation":
                sites.append((str(path), node.lineno, node.end_lineno, node.args[0].value))
    return sites


def test_every_violation_the_checker_writes_names_a_rule():
    sites = _violation_sites()
    assert len(sites) >= 40 and all(rule in RULES for *_, rule in sites), sites


def test_every_message_of_the_checker_is_written_by_some_case(monkeypatch):
    """Run every case with a recording ``Violation``: each place the checker writes one must fire."""
    fired = set()

    def recording(rule, text):
        caller = sys._getframe(1)
        fired.add((caller.f_code.co_filename, caller.f_lineno, rule))
        return Violation(rule, text)
    for module in CHECKERS:
        monkeypatch.setattr(module, "Violation", recording)
    for _, design, corrupt, _ in CASES:
        vm = vm_with_slots(design, flags=LOG)
        corrupt(vm)
        kvmviz.check_invariants(vm)
    missing = [site for site in _violation_sites()
               if not any(f == site[0] and site[1] <= line <= site[2] and r == site[3] for f, line, r in fired)]
    assert missing == []


# -- Violation itself ----------------------------------------------------------------------------
def test_a_violation_is_its_sentence_and_keeps_its_rule_through_copy_and_pickle():
    v = Violation("locks", "no update is running but slots_lock is still held")
    assert v == "no update is running but slots_lock is still held" and "slots_lock" in v
    assert repr(v) == repr(str(v))
    for again in (copy.copy(v), copy.deepcopy(v), pickle.loads(pickle.dumps(v))):
        assert (type(again), again.rule, again) == (Violation, "locks", v)
    with pytest.raises(ValueError, match="'lock' is not a key of RULES"):
        Violation("lock", "x")


def test_the_first_five_rules_are_those_of_reference_1_7_in_order():
    assert [RULES[k][:2] for k in list(RULES)[:5]] == ["1.", "2.", "3.", "4.", "5."]
    assert all("§" in text for text in RULES.values())
