"""Property tests: random call sequences against the brute-force reference model.

Every step of every call is followed by ``check_invariants``; after each call
the errno, the slots of both sets of both address spaces, the generations and
``nr_memslot_pages`` must match the reference.
"""

import errno
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import kvmviz
from conftest import snapshot
from reference_model import RefVM

#: Every modelled version, and 6.12 as a kernel without SMM and with a low max gfn (so MOVEs revert).
CONFIGS = {"5.15": {"kernel": "5.15"}, "5.17": {"kernel": "5.17"}, "6.12": {"kernel": "6.12"},
           "6.12-no-smm": {"kernel": "6.12", "address_spaces": 1, "max_gfn": 0x103}}
OUTCOMES = Counter()      # what the random calls exercised, printed by test_outcomes_cover_every_path
GMEM_OUTCOMES = Counter()

PAGE = 0x1000
def mostly(good, bad):
    """A valid value about 19 times in 20, an invalid one otherwise."""
    def pick(t):
        roll, k = t
        return bad[k % len(bad)] if roll >= 95 else good[k % len(good)]
    return st.tuples(st.integers(0, 99), st.integers(0, 1 << 16)).map(pick)


calls = st.tuples(
    mostly([0, 1, 2, 3, 0, 1, 2, 3, 1 << 16, (1 << 16) | 1], [2 << 16, 32763, 32764]),       # slot
    mostly([0, 0, 0, 1, 1, 2, 3], [4, 1 << 16]),                                             # flags
    mostly([0, 4 * PAGE, 0x100000], [PAGE + 1, (1 << 64) - PAGE, 8 * PAGE]),                   # gpa
    mostly([0, PAGE, PAGE, 4 * PAGE], [PAGE // 2, 1 << 47, 8 * PAGE]),                          # size
    mostly([0x10000000] * 3 + [0x10004000], [0x7ffffffff000 - PAGE, 0x7ffffffff000, 0x10000001]),
    mostly([0, 0, 0, 0, 0, 0, errno.ENOMEM, errno.EINVAL], [errno.EIO]),                     # fail
)


def layout(vm, as_id, which):
    return sorted((s.id, s.base_gfn, s.npages, s.flags, s.userspace_addr)
                  for s in vm.memslots(as_id, which))


def run_checked(vm, upd):
    """Run ``upd`` to its end, checking invariants after each step (it stops at the first violation)."""
    steps = upd.run_until(lambda step: kvmviz.check_invariants(vm))
    problems = kvmviz.check_invariants(vm)
    assert problems == [] and upd.result is not None, f"after {steps[-1]}: {problems}"
    return upd


def check_against(ref, vm):
    for as_id in range(vm.address_spaces):
        assert layout(vm, as_id, "active") == ref.layout(as_id)
        assert layout(vm, as_id, "inactive") == ref.layout(as_id)
        assert vm.generation(as_id) == ref.generations[as_id]
    pages = sum(n for t in ref.slots for (_, n, _, _) in t.values())
    assert vm.nr_memslot_pages == (0 if vm.implementation == "array" else pages)   # 5.15 counts no pages


@pytest.mark.parametrize("config", CONFIGS)
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.lists(calls, min_size=1, max_size=25))
@example(seq=[(0, 0, 0, PAGE, 0x10000000, 0), (0, 1, 0, PAGE, 0x10000000, errno.ENOMEM),
              (0, 1, 0, PAGE, 0x10000000, 0), (0, 1, 0x100000, PAGE, 0x10000000, errno.EIO),
              (0, 1, 0, 0, 0, errno.ENOMEM), (0, 0, 0, 0, 0x10000001, 0)])
def test_random_calls_match_reference(config, seq):
    vm = kvmviz.VM(**CONFIGS[config])
    ref = RefVM(vm.kernel, vm.address_spaces, vm.max_gfn if config == "6.12-no-smm" else None)
    for call in seq:
        upd = run_checked(vm, vm.begin_set_user_memory_region(*call[:5], fail_prepare=call[5]))
        expected, change = ref.call(*call)
        assert upd.result == expected, (call, upd.steps[-1].text)
        if change is not None:
            assert upd.change == change
        check_against(ref, vm)
        check_lookups(ref, vm)
        OUTCOMES[(upd.change, upd.result)] += 1


def test_outcomes_cover_every_path():
    """The random calls reach every change type, success and failure alike."""
    seen = {k for k, n in OUTCOMES.items() if n}
    for change in ("CREATE", "DELETE", "MOVE", "FLAGS_ONLY"):
        assert (change, 0) in seen and any(c == change and r < 0 for c, r in seen), (change, OUTCOMES)
    assert ("NONE", 0) in seen and (None, -errno.EINVAL) in seen and (None, -errno.EEXIST) in seen
    print("outcomes:", sorted(OUTCOMES.items(), key=str))


gmem_calls = st.tuples(
    st.sampled_from([1, 2, 3]),                                                        # slot
    st.sampled_from([0, 4, 4, 5, 6, 1]),                                               # flags
    st.sampled_from([0, 4 * PAGE, 0x100000]),                                          # gpa
    st.sampled_from([0, PAGE, 2 * PAGE, 4 * PAGE]),                                    # size
    st.sampled_from([0x10000000]),                                                     # hva
    st.sampled_from([0, 0, 0, errno.ENOMEM]),                                          # fail
    st.sampled_from([(3, 0), (3, PAGE), (3, 2 * PAGE), (4, 0), (3, 0x801), (9, 0), None]),  # gmem
)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.lists(gmem_calls, min_size=1, max_size=20))
def test_guest_memfd_calls_match_reference(seq):
    """6.12 with private memory: v2 calls binding two guest_memfd files of 4 and 2 pages."""
    vm, ref = kvmviz.VM(kernel="6.12", private_mem=True), RefVM("6.12", 1, (1 << 40) - 1, private_mem=True)
    for size in (4 * PAGE, 2 * PAGE):
        assert vm.create_guest_memfd(size) == ref.create_guest_memfd(size)
    for *call, gmem in seq:
        if gmem is None:
            upd = run_checked(vm, vm.begin_set_user_memory_region(*call[:5], fail_prepare=call[5]))
        else:
            upd = run_checked(vm, vm.begin_set_user_memory_region2(*call[:5], gmem[0], gmem[1], fail_prepare=call[5]))
        expected, _ = ref.call(*call, gmem=gmem)
        assert upd.result == expected, (call, gmem, upd.steps[-1].text)
        check_against(ref, vm)
        bound = {(fd, first + k) for fd, f in vm.gmem_files.items() for first, n, _ in f.bindings for k in range(n)}
        assert bound == set(ref.bound)
        GMEM_OUTCOMES[upd.result] += 1


def test_guest_memfd_outcomes_cover_binding_errors():
    """The drawn guest_memfd calls bind, and fail with -EBADF and -EINVAL."""
    assert {0, -errno.EBADF, -errno.EINVAL} <= set(GMEM_OUTCOMES), GMEM_OUTCOMES


def check_lookups(ref, vm):
    """gfn_to_memslot (which fills last_used_slot) agrees with a linear scan."""
    for as_id in range(vm.address_spaces):
        for gfn in (0, 1, 4, 7, 8, 0x100, 0x103, 0x108):
            hit = vm.gfn_to_memslot(gfn, as_id)
            want = [i for i, (g, n, _, _) in ref.slots[as_id].items() if g <= gfn < g + n]
            assert (hit.id if hit else None) == (want[0] if want else None), (as_id, hex(gfn))



@settings(max_examples=60, deadline=None, derandomize=True)
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

