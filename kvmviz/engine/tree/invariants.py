"""The rules of the tree design (5.17+): two sets per address space, each with three indexes.

``check_structure(vm)`` and ``check_other_generation(vm, as_id)`` are what
``kvmviz.engine.invariants.check_invariants`` adds to the rules both designs
share: no unsanctioned in-place write to a
reachable slot (reference §1.7.1), each set's gfn tree, hva tree and id hash
linking the same live, disjoint slots (§1.1, §1.3), the two sets holding the
same objects at rest and differing by one slot mid-update (§1.7.2-3), and the
inactive set's stale generation (§3.1).

One in-place write to a reachable slot is sanctioned: x86 writes ``slot->arch``
of live slots while holding ``slots_arch_lock`` (lazy rmap allocation in
``mmu_first_shadow_root_alloc``, arch/x86/kvm/mmu/mmu.c, reference §1.5). That
is why ``kvm_invalidate_memslot`` copies ``invalid->arch`` back into ``old``
after taking the lock again: a vCPU may have filled the INVALID copy's arch
data in the window. The checker accepts exactly that write (field ``arch``,
``slots_arch_lock`` held when it happened) and reports any other.

>>> from kvmviz import VM
>>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
>>> vm.inactive_set(0).replace(vm.memslots(0)[0], None)        # drop #1 from one set only
>>> [(v.rule, v) for v in check_structure(vm)]
[('same-at-rest', 'as0: at rest both sets must hold the same slot objects, but they differ (id 1: none vs #1)')]
"""

from ..constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from ..history import WIDTH
from ..memslot import Allocation, Memslot
from ..rules import Violation
from .memslots import MemslotSet, hash_32
from ..fmt import gen_text
from .protocol import SAL


def check_structure(vm, cache=None):
    """The tree design's own violated invariants of ``vm``.

    ``cache`` (a ``StructureCache``) reuses the results of ``check_set`` and
    ``check_agreement`` for what did not change since the last check.
    """
    out = [Violation("in-place", f"as{w[0]}: {w[1]}.{w[2]} changed in place ({_fmt(w[3])} -> {_fmt(w[4])}) "
                                 f"while readers could reach it (after event {w[5]})") for w in unsanctioned_writes(vm)]
    if cache is not None:
        cache.update()
    for as_id in range(len(vm.sets)):
        for s in vm.sets[as_id]:
            out += check_set(s, as_id) if cache is None else cache.result(s, check_set, s, as_id)
        differ = None if cache is None else cache.result(as_id, set_difference, vm, as_id)
        out += check_agreement(vm, as_id, differ)
    return out


class StructureCache:
    """What ``check_set`` and ``check_agreement`` said, kept while the journal shows no change they read.

    For a caller that checks after every event (a recipe with ``check``):
    each check reads only the journal entries logged since the last one. A
    set is checked again when an entry touched it, one of its id-hash
    buckets, a slot it links (``nodes``), or freed an allocation; the
    difference of an address space's two sets when one of them did.
    Checks with the history off, or away from its frontier, or after it
    dropped entries (``history.cuts``) check everything. Back and forward
    again to the frontier restore the state the results were made for.

    >>> from kvmviz import VM
    >>> vm = VM(); cache = StructureCache(vm); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> check_structure(vm, cache) == check_structure(vm), len(cache.results)
    (True, 6)
    >>> vm.active_set(0).hash_del(vm.memslots(0)[0]); check_structure(vm, cache) == check_structure(vm)
    True
    """

    def __init__(self, vm):
        self.vm = vm
        self.results = {}             # key (a set, or an as_id for the agreement) -> last result
        self.seen = None              # (cursor, journal length) at the last update
        self.owner = {id(b): s for pair in vm.sets for s in pair for b in s.id_hash}

    def update(self):
        """Forget the results of what changed since the last call."""
        h = self.vm.history
        seen = self.seen
        self.seen = (h.cuts, h.cursor, len(h.entries)) if h.enabled and h.at_frontier else None
        if seen is None or self.seen is None or seen[0] != h.cuts or seen[1] > h.cursor:
            self.results.clear()
            return
        entries = h.entries
        for i in range(seen[2], len(entries), WIDTH):
            self._forget(entries[i + 1], entries[i + 2])

    def _forget(self, target, key):
        results = self.results
        if type(target) is MemslotSet:
            if key != "generation" and key != "edits":
                results.pop(target, None)
                results.pop(target.as_id, None)
        elif id(target) in self.owner:
            s = self.owner[id(target)]
            results.pop(s, None)
            results.pop(s.as_id, None)
        elif type(target) is Memslot and target.nodes or type(target) is Allocation and key == "freed":
            results.clear()

    def result(self, key, check, *args):
        """``check(*args)``, or its result from the last call if ``key`` did not change (don't change it)."""
        out = self.results.get(key)
        if out is None:
            out = self.results[key] = check(*args)
        return out


def unsanctioned_writes(vm):
    """``vm.in_place_writes`` minus ``arch`` writes made under ``slots_arch_lock`` (see module doc).

    The lock state at each write is replayed from the history journal, so a
    VM made with ``history=False`` gets every ``arch`` write reported.

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> slot, arch = vm.memslots(0)[0], vm.alloc("arch", 8)
    >>> vm.lock(SAL); slot.arch = arch; vm.unlock(SAL)          # lazy rmap allocation
    >>> unsanctioned_writes(vm), len(vm.in_place_writes)
    ((), 1)
    >>> slot.arch = vm.alloc("arch", 8); [w[2] for w in unsanctioned_writes(vm)]
    ['arch']
    """
    writes = vm.in_place_writes
    if not any(w[2] == "arch" for w in writes):
        return writes
    held = _locks_at_writes(vm)
    return tuple(w for w in writes if not (w[2] == "arch" and SAL in held.get(id(w), ())))


def _locks_at_writes(vm):
    """``id(write) -> locks held`` for each recorded in-place write, replayed from the journal."""
    h = vm.history
    end = len(h.entries) if h.at_frontier else (h.bounds[h.cursor - 1] if h.cursor else 0)
    locks, out = frozenset(), {}
    for entry in h.entry_list(end):
        if entry[1] is not vm:
            continue
        if entry[2] == "locks":
            locks = entry[4]
        elif entry[2] == "in_place_writes" and len(entry[4]) > len(entry[3]):
            out[id(entry[4][-1])] = locks
    return out


def check_set(s, as_id):
    """One set's indexes agree with each other and hold live, disjoint slots of ``as_id``.

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> s = vm.active_set(0); s.hash_del(s.id_to_memslot(1))
    >>> [(v.rule, v) for v in check_set(s, 0)]
    [('indexes-agree', 'as0/set1: the id hash holds 0 slots, the gfn tree 1, not the same ones')]
    """
    out, name = [], s.name
    if s.node_idx not in (0, 1):
        out.append(Violation("indexes-agree", f"{name}: node_idx is {s.node_idx}, not 0 or 1"))
    if s.as_id != as_id:
        out.append(Violation("address-space", f"{name}: the set of as{as_id} says it belongs to as{s.as_id}"))
    slots, prev = [], None
    for key, slot in s.gfn_tree.items():
        slots.append(slot)
        if key != slot.base_gfn:
            out.append(Violation("gfn-order", f"{name}: {slot.label} sits under gfn {key:#x} in the gfn tree but "
                                              f"its base_gfn is {slot.base_gfn:#x} (modified while linked)"))
        if slot.as_id != as_id:
            out.append(Violation("address-space", f"{name}: {slot.label} has as_id {slot.as_id}"))
        if not slot.nodes >> s.node_idx & 1:
            out.append(Violation("indexes-agree", f"{name}: {slot.label} is in the gfn tree but its node "
                                                  f"{s.node_idx} is not linked"))
        out += _freed(name, slot)
        if prev is not None and prev.end_gfn > slot.base_gfn:
            out.append(Violation("gfn-order", f"{name}: {prev.label} (gfn {prev.base_gfn:#x}..{prev.end_gfn - 1:#x}) "
                                              f"overlaps {slot.label} (gfn {slot.base_gfn:#x}..)"))
        prev = slot
    ids = {id(x) for x in slots}
    out += _check_hash(s, ids)
    out += _check_hva(s, ids)
    if s.last_used_slot is not None and id(s.last_used_slot) not in ids:
        out.append(Violation("stale-cache", f"{name}: last_used_slot points to {s.last_used_slot.label}, which the "
                                            "set does not hold"))
    return out


def _check_hash(s, ids):
    out, seen = [], set()
    for b, bucket in enumerate(s.id_hash):
        for key, slot in bucket.items():
            seen.add(id(slot))
            if key != slot.id or hash_32(slot.id) != b:
                out.append(Violation("indexes-agree", f"{s.name}: {slot.label} is in id-hash bucket {b} under id "
                                                      f"{key}, but its id is {slot.id}"))
    return out + _same_slots(s, "id hash", seen, ids)


def _same_slots(s, index, seen, ids):
    """The index ``index`` of set ``s`` links exactly the gfn tree's slots."""
    if seen == ids:
        return []
    return [Violation("indexes-agree", f"{s.name}: the {index} holds {len(seen)} slots, the gfn tree {len(ids)}, "
                                       "not the same ones")]


def _check_hva(s, ids):
    out, seen = [], set()
    for start, last, slot in s.hva_tree:
        seen.add(id(slot))
        if (start, last) != (slot.userspace_addr, slot.hva_last):
            out.append(Violation("indexes-agree", f"{s.name}: {slot.label} is linked under gfn {slot.base_gfn:#x} "
                                 f"but its hva node covers {start:#x}..{last:#x}, not "
                                 f"{slot.userspace_addr:#x}..{slot.hva_last:#x}"))
    return out + _same_slots(s, "hva tree", seen, ids)


def _freed(name, slot):
    out = []
    if slot.freed:
        out.append(Violation("free-after-gp", f"{name}: {slot.label} was freed but the set still links it "
                                              "(use after free)"))
    for a in (slot.dirty_bitmap, slot.arch):
        if a is not None and a.freed:
            out.append(Violation("free-after-gp", f"{name}: {slot.label} points to freed {a.kind} {a.label}"))
    return out


def check_agreement(vm, as_id, differ=None):
    """At rest both sets hold the same objects; mid-update they differ by one slot (reference §1.7.2-3).

    ``differ``: ``set_difference(vm, as_id)`` if already known.
    """
    differ, labels = set_difference(vm, as_id) if differ is None else differ
    if not differ:
        return []
    changing = vm.changing
    if changing is None:
        return [Violation("same-at-rest", f"as{as_id}: at rest both sets must hold the same slot objects, but "
                                          f"they differ ({labels})")]
    if changing != (as_id, differ[0]) or len(differ) > 1:
        return [Violation("differ-by-one", f"as{as_id}: mid-update the sets may differ only in slot {changing[1]} "
                                           f"of as{changing[0]}, but they differ in {labels}")]
    return []


def set_difference(vm, as_id):
    """``(ids, text)``: the slot ids whose objects the two sets of ``as_id`` do not share, and how they differ."""
    a, b = vm.sets[as_id]
    by_id_a = {x.id: x for x in a.gfn_tree.values()}
    by_id_b = {x.id: x for x in b.gfn_tree.values()}
    differ = sorted(i for i in by_id_a.keys() | by_id_b.keys() if by_id_a.get(i) is not by_id_b.get(i))
    return differ, "; ".join(f"id {i}: {_lab(by_id_a.get(i))} vs {_lab(by_id_b.get(i))}" for i in differ)


def check_other_generation(vm, as_id):
    """The inactive set keeps the stale generation, or is marked in progress for the next swap (§3.1, §3.4).

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> vm.inactive_set(0).generation = 2; check_other_generation(vm, 0)[0].rule
    'generation'
    """
    active, inactive = vm.active_set(as_id), vm.inactive_set(as_id)
    ga, gi, swaps, n = active.generation, inactive.generation, vm.swaps[as_id], vm.address_spaces
    out, where = [], f"as{as_id}"
    if ga & IP:
        ok = gi == ga & ~IP
    else:
        ok = gi in ((ga - n) if swaps else ga, ga | IP)
        if gi & IP and vm.changing is None:
            out.append(Violation("generation", f"{where}: {inactive.name} carries the in-progress bit at rest"))
    if not ok:
        out.append(Violation("generation", f"{where}: inactive {inactive.name} has generation {gen_text(gi)}, expected "
                                           f"the stale {gen_text(ga - n if swaps else ga)} or {gen_text(ga | IP)} while a "
                                           f"swap is being prepared (active {active.name}: {gen_text(ga)})"))
    return out


def _lab(slot):
    return slot.label if slot is not None else "none"


def _fmt(v):
    return f"{v:#x}" if isinstance(v, int) else repr(v)
