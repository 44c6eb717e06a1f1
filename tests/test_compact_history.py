"""The history's compact design (issues 14, 17 item 3, 18): what can be asserted without a clock.

Step texts are templates filled on read, so a text read long after its step
must equal the text read at once; steps are records built into ``Step``s on
read, so a run to the end builds none and a built step is the same object
wherever it is read; journal entries are slots of one flat list with
module-level apply functions, so the garbage collector has no object per
entry or per step to track.
"""

import gc
import random
import tracemalloc

import pytest

import kvmviz
from kvmviz import KvmError
from kvmviz.engine.errors import ModelBug
from kvmviz.engine.history import WIDTH
from kvmviz.engine.invariants import Checker, check_invariants
from kvmviz.engine.step import Step
from conftest import HVA

SETUPS = [(k, "merged") for k in kvmviz.KERNELS] + [(k, v) for k in ("5.17", "6.12")
                                                    for v in kvmviz.variants.names() if v != "merged"]
#: CREATE, FLAGS_ONLY on and off, MOVE, a failing prepare on a MOVE and a CREATE, DELETE, a refusal.
CALLS = [(1, 0, 0x100000, 0x10000, HVA), (2, 1, 0x200000, 0x4000, HVA + 0x100000),
         (2, 0, 0x200000, 0x4000, HVA + 0x100000), (1, 0, 0x300000, 0x10000, HVA),
         (1, 0, 0x400000, 0x10000, HVA, 12), (3, 0, 0x500000, 0x1000, HVA + 0x200000, 12),
         (1, 0, 0, 0, 0), (4, 0, 0x1000, 0x1000, 0x1001)]
ATOMS = (str, int, type(None))


def _stepped(vm):
    """Run ``CALLS`` one step at a time with a vCPU and an MMU-notifier range acting in between.

    Returns ``(step, text read at once)`` for every step taken.
    """
    vcpu, seen = vm.add_vcpu(), []
    for call in CALLS:
        upd = vm.begin_set_user_memory_region(*call)
        for step in upd:
            seen.append((step, step.text))
        vcpu.srcu_read_lock()
        vcpu.access(0x100)
        vcpu.srcu_read_unlock()
        vm.mmu_notifier_invalidate_range_start(HVA, HVA + 0x1000)
        vm.mmu_notifier_invalidate_range_end(HVA, HVA + 0x1000)
    return seen


@pytest.mark.parametrize("kernel,variant", SETUPS)
def test_a_text_read_later_equals_the_text_read_at_once(kernel, variant):
    vm = kvmviz.VM(kernel=kernel, variant=variant)
    seen = _stepped(vm)
    assert len(seen) > 30
    vm.history.goto(0)                          # every slot field and generation changes under the texts
    vm.history.goto(len(vm.history))
    for step, text in seen:
        assert vm.history.events[step.index] is step
        assert step.text == text and str(step).endswith(text)
    for upd in {e for e in vm.history.raw if hasattr(e, "step_at")}:
        for args in _record_args(upd):
            assert all(isinstance(a, ATOMS) for a in args), args


def _record_args(upd):
    """The text arguments kept in each of ``upd``'s step records."""
    log = upd._log
    for _, at in upd._records():
        nargs = log[at][3]
        yield log[at + 5:at + 5 + nargs]


def test_a_text_is_the_same_on_every_kernel_whichever_way_it_is_read():
    """A step read through ``upd.steps``, ``history.events`` or ``history.back()`` is one object."""
    vm = kvmviz.VM()
    steps = vm.set_user_memory_region(*CALLS[0])
    upd = vm.history.raw[-1]
    assert upd._built is None                   # the call ran to its end and built no Step
    last = steps[-1]
    assert vm.history.events[-1] is last and vm.history.back() is last and upd.steps[-1] is last
    assert isinstance(last, Step) and last.index == len(vm.history) - 1 and last.result == 0


def test_journal_entries_are_slots_with_module_level_functions():
    vm = kvmviz.VM()
    _stepped(vm)
    gc.collect()
    entries = vm.history.entries
    assert len(entries) % WIDTH == 0
    applies = set(entries[0::WIDTH])
    assert all("<" not in f.__qualname__ and f.__closure__ is None for f in applies), applies
    values = [v for v in entries[3::WIDTH] if type(v) is tuple and all(isinstance(x, ATOMS) for x in v)]
    assert values and not any(gc.is_tracked(v) for v in values)


def test_fewer_gc_tracked_objects_than_steps_per_call():
    """No object the collector tracks per recorded step: a CREATE records 15 steps and adds fewer objects.

    Counts the objects the calls created, not the net change: other tests'
    objects freed meanwhile must neither hide nor add any.
    """
    vm = kvmviz.VM()
    for i in range(20):
        vm.set_user_memory_region(i, 0, i << 12, 0x1000, HVA + (i << 12))
    gc.collect()
    before = gc.get_objects()               # held, so no id is reused by a new object
    known = set(map(id, before))
    n = 100
    for i in range(20, 20 + n):
        vm.set_user_memory_region(i, 0, i << 12, 0x1000, HVA + (i << 12))
    gc.collect()
    gc.collect()                            # a tuple whose items the first pass untracked is untracked by the second
    per_call = sum(id(o) not in known for o in gc.get_objects()) / n
    assert len(vm.history) / (20 + n) == 15 and per_call < 15, per_call


def test_a_recorded_event_costs_less_than_a_kibibyte():
    """Issue 14's bound, as the memory the history adds (tracemalloc, not a clock)."""
    kept = {}
    for history in (True, False):
        tracemalloc.start()
        vm = kvmviz.VM(history=history)
        for i in range(500):
            vm.set_user_memory_region(i, 0, i << 12, 0x1000, HVA + (i << 12))
        kept[history] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    assert (kept[True] - kept[False]) / (500 * 15) < 1024


def test_a_refused_whole_call_still_counts_its_lookups_once():
    """The checks run once, before the call starts; their lookups land on its first step."""
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CALLS[0])
    steps = vm.set_user_memory_region(5, 0, 0x600000, 0x1000, HVA + 0x600000)
    assert dict(steps[0].cost) == {"hash_ops": 1, "gfn_tree_nodes": 1}
    before = dict(vm.cost)
    with pytest.raises(KvmError):
        vm.set_user_memory_region(6, 0, 0x600000, 0x1000, HVA + 0x700000)      # overlaps slot 5
    assert dict(vm.cost) == before


def test_a_crashed_update_keeps_its_bug_step():
    vm = kvmviz.VM(kernel="5.17", variant="no-catch-up")
    vm.set_user_memory_region(*CALLS[0])
    with pytest.raises(ModelBug):
        vm.set_user_memory_region(1, 0, 0x300000, 0x10000, HVA)
    last = vm.history.events[-1]
    assert last.result in ("BUG", "WARN") and last.text.startswith("the model hit a kernel")


@pytest.mark.parametrize("kernel,variant", SETUPS)
def test_the_checker_that_remembers_says_what_the_full_check_says(kernel, variant):
    """``invariants.Checker`` (a recipe's check after every event) equals ``check_invariants`` throughout.

    Random calls stepped one at a time, reader actions, notifier ranges,
    history moves and hand-made corruption, on every kernel and variant.
    """
    rng = random.Random(f"{kernel}-{variant}")
    vm = kvmviz.VM(kernel=kernel, variant=variant)
    checker, vcpu, checks = Checker(vm), vm.add_vcpu(), 0
    for _ in range(400):
        _random_action(rng, vm, vcpu)
        assert checker() == check_invariants(vm)
        checks += 1
    assert checks == 400


def _random_action(rng, vm, vcpu):
    h, upd = vm.history, vm.update
    roll = rng.random()
    try:
        if roll < 0.35 and h.at_frontier:
            if upd is None:
                slot = rng.randrange(4)
                size = rng.choice([0, 0x1000, 0x4000])
                upd = vm.begin_set_user_memory_region(slot, rng.choice([0, 1]), rng.randrange(8) << 20, size,
                                                      HVA + (slot << 24), rng.choice([0, 0, 12]))
            next(upd, None)
        elif roll < 0.5 and h.at_frontier:
            (vcpu.srcu_read_unlock if vcpu.inside else vcpu.srcu_read_lock)()
        elif roll < 0.55 and h.at_frontier:
            vcpu.access(rng.randrange(8) << 8)
        elif roll < 0.6 and h.at_frontier:
            start = HVA + (rng.randrange(4) << 24)
            vm.mmu_notifier_invalidate_range_start(start, start + 0x1000)
            vm.mmu_notifier_invalidate_range_end(start, start + 0x1000)
        elif roll < 0.7:
            h.back()
        elif roll < 0.8:
            h.forward()
        elif roll < 0.85:
            h.goto(rng.randrange(len(h) + 1))
        elif roll < 0.88 and h.at_frontier and vm.memslots(0):
            slot = rng.choice(vm.memslots(0))
            slot.npages += 1                            # a hand-made in-place write
        elif roll < 0.92 and h.at_frontier and vm.memslots(0, "inactive") and vm.implementation == "tree":
            vm.inactive_set(0).hash_del(rng.choice(vm.memslots(0, "inactive")))      # one index forgets a slot
    except (KvmError, ValueError, ModelBug, KeyError):
        pass


def _fresh_generations(vm):
    """``vm.generations()`` computed from the sets, without the cache."""
    return tuple((a.generation, b.generation, active) for (a, b), active in zip(vm.sets, vm.active_idx))


@pytest.mark.parametrize("kernel,variant", SETUPS)
def test_each_step_keeps_the_generations_of_its_moment_through_the_cache(kernel, variant):
    """``VM.generations`` is cached until a watched store or a history move (``EPOCH``): it never goes stale.

    Checked after every step taken, and after every step back and forward
    across the whole history, against the generations read from the sets.
    """
    vm = kvmviz.VM(kernel=kernel, variant=variant)
    seen = _stepped(vm)
    assert len({step.gens for step, _ in seen}) > 4                    # the generations did move
    for step, _ in seen:
        assert step.gens == vm.history.events[step.index].gens
    n = len(vm.history)
    for k in list(range(n, -1, -7)) + list(range(0, n + 1, 5)):
        vm.history.goto(k)
        assert vm.generations() == _fresh_generations(vm), k
        if k:
            assert vm.history.events[k - 1].gens == vm.generations(), k


def test_a_set_finds_a_slot_in_its_hva_tree_edited_behind_its_back():
    """The set knows where it inserted each slot; a tree edited directly is searched (corruption tests do it)."""
    vm = kvmviz.VM()
    vm.set_user_memory_region(*CALLS[0])
    s = vm.active_set(0)
    slot = s.id_to_memslot(1)
    s.hva_tree.remove(slot.userspace_addr, slot)                    # not through the set
    s.hva_tree.insert(slot.userspace_addr + 0x1000, slot.hva_last, slot)
    assert s._hva_take(slot) == (slot.userspace_addr + 0x1000, slot.hva_last)
    assert len(s.hva_tree) == 0
