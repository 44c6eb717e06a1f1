"""Property tests: random call sequences against the brute-force reference model.

Every step of every call is followed by ``check_invariants``; after each call
the errno, the slots of both sets of both address spaces, the generations and
``nr_memslot_pages`` must match the reference.
"""

import errno

from hypothesis import HealthCheck, given, settings, strategies as st

import kvmviz
from reference_model import RefVM

IMPLEMENTATIONS = ["tree"]

PAGE = 0x1000
calls = st.tuples(
    st.sampled_from([0, 1, 2, 3, 1 << 16, (1 << 16) | 1, 2 << 16, 32763, 32764]),      # slot
    st.sampled_from([0, 0, 1, 1, 2, 3, 4, 1 << 16]),                                     # flags
    st.sampled_from([0, PAGE, 4 * PAGE, 8 * PAGE, 0x100000, PAGE + 1]),                  # gpa
    st.sampled_from([0, 0, PAGE, 4 * PAGE, 8 * PAGE, PAGE // 2]),                        # size
    st.sampled_from([0x10000000, 0x10004000, 0x7ffffffff000 - PAGE, 0x7ffffffff000, 0x10000001]),
    st.sampled_from([0, 0, 0, 0, errno.ENOMEM, errno.EINVAL]),                           # fail
)


def layout(vm, as_id, which):
    return sorted((s.id, s.base_gfn, s.npages, s.flags, s.userspace_addr)
                  for s in vm.memslots(as_id, which))


def run_checked(vm, call):
    """Run one call step by step, checking invariants after each step."""
    slot, flags, gpa, size, hva, fail = call
    upd = vm.begin_set_user_memory_region(slot, flags, gpa, size, hva, fail_prepare=fail)
    for step in upd:
        problems = kvmviz.check_invariants(vm)
        assert problems == [], f"after {step}: {problems}"
    return upd


def check_against(ref, vm):
    for as_id in (0, 1):
        assert layout(vm, as_id, "active") == ref.layout(as_id)
        assert layout(vm, as_id, "inactive") == ref.layout(as_id)
        assert vm.generation(as_id) == ref.generations[as_id]
    assert vm.nr_memslot_pages == sum(n for t in ref.slots for (_, n, _, _) in t.values())


def _property(implementation):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(calls, min_size=1, max_size=25))
    def prop(seq):
        vm, ref = kvmviz.VM(implementation=implementation), RefVM()
        for call in seq:
            upd = run_checked(vm, call)
            expected, change = ref.call(*call)
            assert upd.result == expected, (call, upd.steps[-1].text)
            if change is not None:
                assert upd.change == change
            check_against(ref, vm)
    return prop


def test_random_calls_match_reference():
    for implementation in IMPLEMENTATIONS:
        _property(implementation)()


@settings(max_examples=25, deadline=None)
@given(st.lists(calls, min_size=1, max_size=12), st.data())
def test_history_back_and_forth_restores_states(seq, data):
    """Going back to any recorded step and forward again reproduces each state."""
    vm = kvmviz.VM()
    states = [snapshot(vm)]
    for call in seq:
        for _ in vm.begin_set_user_memory_region(*call[:5], fail_prepare=call[5]):
            states.append(snapshot(vm))
    n = len(vm.history)
    target = data.draw(st.integers(0, n))
    vm.history.goto(target)
    assert snapshot(vm) == states[target]
    assert kvmviz.check_invariants(vm) == []
    vm.history.goto(n)
    assert snapshot(vm) == states[n]


def snapshot(vm):
    """Everything observable about the VM, by object identity and value."""
    sets = tuple((s.generation, s.last_used_slot and s.last_used_slot.label,
                  tuple((k, v.label, v.values(), v.nodes, v.freed) for k, v in s.gfn_tree.items()),
                  tuple(sorted((v.label, a, b) for a, b, v in s.hva_tree)),
                  tuple(sorted((k, v.label) for b in s.id_hash for k, v in b.items())))
                 for pair in vm.sets for s in pair)
    return (sets, vm.active_idx, vm.locks, vm.nr_memslot_pages, vm.swaps, vm.srcu.seq,
            vm.arch.mmu_valid_gen)
