"""A canonical, history-free key of a VM's state, for exploring interleavings.

Not a kernel concept: an explorer (``kvmviz.check``) reaches the same state
along many interleavings and must see that it already explored it. Two VMs
with equal keys behave alike from then on: the key holds what the update,
the readers and the invariant checker read (the sets with their slots,
generations and edit counts, the active pointers and swap counts, the locks,
SRCU readers and grace periods, each vCPU's pins and caches, the MMU
notifier's invalidations, the x86 MMIO SPTEs and arch counters), and leaves
out what only narrates the past (history positions in texts, SRCU entry
serial numbers, cost counters). Objects are named by their stable labels,
which the writer hands out in the same order on every interleaving.

>>> from kvmviz import VM
>>> a, b = VM(), VM()
>>> for vm in (a, b): _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000); _ = vm.add_vcpu()
>>> v = b.vcpus[0]; v.srcu_read_lock(); v.srcu_read_unlock()      # in and out again
>>> state_key(a) == state_key(b), len(a.history) == len(b.history)
(True, False)
>>> v.srcu_read_lock(); state_key(a) == state_key(b)
False
"""

from .arch import MMIO_SPTE_GEN_MASK
from .constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from .memslot import Allocation, Memslot
from .tree.memslots import hash_32
from .vcpu import Vcpu


def state_key(vm, update=None, vcpus=0):
    """The key of ``vm``'s state (a hashable tuple); ``update``: the running update's position, if any.

    The VM cannot see how far its running update's generator got, so the
    caller passes a value that tells positions apart (``kvmviz.check`` passes
    the call number and the count of steps that were not waits). ``vcpus``:
    count at least this many vCPUs, the missing ones as created and never
    run (no one can tell the two apart), so a caller may create vCPUs on
    first use.

    Two reductions keep the key small. vCPUs differ only by name, so their
    states form a sorted tuple (a state and its mirror image are one). And a
    cache entry whose generation no set can have again is dropped (a slot
    cache, the MMIO info cache, an MMIO SPTE): generations only grow, and
    in parity with their address space (reference §3.1, checked by
    ``check_generation``), so such an entry is rejected as stale on its
    next use, as an empty one would be.
    """
    srcu = vm.srcu
    floor = _floors(vm)
    readers = [_vcpu(v, srcu, floor) for v in vm.vcpus]
    if len(readers) < vcpus:
        readers += [_fresh(vm)] * (vcpus - len(readers))
    sptes = frozenset(s for s in vm.mmio_sptes if not _dead(s.generation, floor, s.as_id, MMIO_SPTE_GEN_MASK))
    return (
        tuple(tuple(_set(s) for s in pair) for pair in vm.sets),
        vm.active_idx, vm.swaps, vm.locks, vm.changing, update, vm.nr_memslot_pages,
        vm.nr_memslots_dirty_logging, tuple(sorted(vm.mn_ranges)),
        srcu.seq, srcu.completed,
        tuple(None if u is None else (u[0].name, u[1], u[2]) for u in vm.unpublished),
        tuple(sorted(readers, key=hash)), sptes,
        (vm.arch.mmu_valid_gen, vm.arch.zap_all_count, vm.arch.mmio_wraps),
        len(vm.in_place_writes), vm.uid, vm.alloc_seq,
    )


def _floors(vm):
    """Per address space, the lowest generation (without the in-progress bit) a set or a pinned set has."""
    floor = [min(s.generation & ~IP for s in pair) for pair in vm.sets]
    for v in vm.vcpus:
        for a, s in enumerate(v.pinned_sets or ()):
            floor[a] = min(floor[a], s.generation & ~IP)
    return floor


def _dead(gen, floor, as_id=None, mask=None):
    """True when no set can have generation ``gen`` (``mask``: only its low bits are kept) again."""
    if gen is None:
        return True
    g = gen & ~IP
    if as_id is None:
        as_id = g % len(floor)
    low = floor[as_id] if as_id < len(floor) else 0
    if mask is not None:
        return low <= mask and g < low
    return g < low


def _set(s):
    """A tree ``MemslotSet`` or a 5.15 ``ArrayMemslots``: header and slots."""
    if hasattr(s, "gfn_tree"):
        last = s.last_used_slot
        slots = tuple((key, _slot(slot)) for key, slot in s.gfn_tree.items())
        hashed = tuple(s.id_hash[hash_32(slot.id)].get(slot.id) is slot for slot in s.gfn_tree.values())
        return (s.generation, s.edits, last.label if last is not None else None, slots, len(s.hva_tree), hashed)
    return (s.name, s.generation, s.used_slots, s.last_used_slot, s.freed,
            tuple(tuple(map(_value, entry)) for entry in s.memslots))


_FRESH = {}


def _fresh(vm):
    """The key of a vCPU that was created and never ran, on ``vm``'s design."""
    if vm.implementation not in _FRESH:
        _FRESH[vm.implementation] = _vcpu(Vcpu(vm, 0), vm.srcu, [0] * vm.address_spaces)
    return _FRESH[vm.implementation]


def _slot(slot):
    return (slot.label, slot.id, slot.as_id, slot.base_gfn, slot.npages, slot.flags, slot.userspace_addr,
            _value(slot.dirty_bitmap), _value(slot.arch), slot.gmem, slot.nodes, slot.freed)


def _value(x):
    """An entry field or a slot's pointer as a plain value: allocations by label, freed and dirty pages."""
    if isinstance(x, Allocation):
        return (x.label, x.freed, x.dirty)
    if isinstance(x, Memslot):
        return x.label
    if hasattr(x, "entry"):                         # a 5.15 ArraySlot view
        return tuple(map(_value, x.entry))
    return x


def _vcpu(v, srcu, floor):
    inside = srcu._inside.get(v, (None, None))[1] if v.pinned is not None else None
    seen = frozenset((_value(slot), tuple(map(_value, snap))) for slot, snap in v.seen.values())
    pinned = None if v.pinned is None else (v.pinned, tuple(s.name for s in v.pinned_sets), v.pinned_gens,
                                            tuple(getattr(s, "edits", 0) - e for s, e in zip(v.pinned_sets,
                                                                                             v.pinned_edits)))
    last, last_gen = v.last_used_slot, v.last_used_slot_gen
    if not isinstance(last, int) and (last is None or _dead(last_gen, floor)):
        last, last_gen = None, None         # an empty or dead slot cache: the next lookup searches
    mmio = (v.mmio_gfn, v.mmio_gen) if v.mmio_gfn is not None and not _dead(v.mmio_gen, floor, 0) else None
    caches = tuple((g.gpa, g.len, g.generation, g.hva, _value(g.memslot)) for g in v.hva_caches)
    return (v.smm, pinned, inside, seen, _value(last), last_gen, mmio, caches)
