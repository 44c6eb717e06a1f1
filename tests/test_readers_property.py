"""Property: random updates (with injected prepare failures) interleaved with several
readers that lock, look up, access and unlock at random points, plus MMU-notifier
invalidations, keep every invariant after every writer step and reader action, and
every update finishes (reference §1.5, §1.7, §3.4).

Each example is one interleaving: hypothesis draws the writes, the number of vCPUs
and the scheduler seed; ``Schedule`` turns the seed into the order of events.
"""

from hypothesis import HealthCheck, given, settings, strategies as st

import kvmviz
from kvmviz import Schedule
from kvmviz.engine.constants import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
from conftest import HVA

MAX_EXAMPLES = 300

# A small world so updates collide: per slot id a fixed size, hva and READONLY bit (so
# most modify calls are valid MOVE/FLAGS_ONLY), four places, delete or not.
SHAPES = {1: (0x4000, 0), 2: (0x8000, 0), 3: (0x4000, KVM_MEM_READONLY), (1 << 16) | 1: (0x4000, 0)}
places = st.sampled_from([0x0, 0x100000, 0x104000, 0x200000])


@st.composite
def writes(draw):
    slot = draw(st.sampled_from(sorted(SHAPES)))
    size, readonly = SHAPES[slot]
    size = 0 if draw(st.integers(0, 3)) == 0 else size
    dirty = draw(st.sampled_from([0, KVM_MEM_LOG_DIRTY_PAGES]))
    hva = HVA + ((slot & 0xFFFF) << 24)
    return (slot, readonly | dirty, draw(places), size, hva, draw(st.integers(0, 3)) == 0)


def _world():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0x100000, 0x4000, HVA + (1 << 24))
    vm.set_user_memory_region((1 << 16) | 1, 0, 0x0, 0x4000, HVA + (1 << 24))
    return vm


@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ws=st.lists(writes(), min_size=1, max_size=5), nvcpus=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1), weight=st.sampled_from([0.2, 0.4, 0.7]))
def test_readers_and_writers_keep_the_invariants(ws, nvcpus, seed, weight):
    vm = _world()
    problems = []

    def check(tick):
        found = kvmviz.check_invariants(vm)
        if found:
            problems.append((str(tick), found))

    gfns = [0x0, 0x3, 0x4, 0x100, 0x103, 0x104, 0x107, 0x108, 0x200, 0x203]
    hvas = [HVA + (i << 24) for i in (1, 2, 3)]
    tl = Schedule(vm, writes=ws, seed=seed, vcpus=nvcpus, gfns=gfns, hvas=hvas, writer_weight=weight,
                  max_reader_actions=60, observer=check).run()
    assert problems == []
    assert tl.finished and vm.update is None and vm.locks == frozenset()
    assert all(u.result is not None for u in tl.updates) and len(tl.updates) == len(ws)
    assert vm.mn_active_invalidate_count == len(vm.mn_ranges)
    # the readers did meet the writer: at least the vCPUs were created and acted
    assert {t.actor for t in tl} >= {f"vcpu{i}" for i in range(nvcpus)}
