"""The rules of the 5.15 array design: one sorted structure per address space, a scratch copy mid-update.

``check_structure(vm)`` and ``check_other_generation(vm, as_id)`` are what
``kvmviz.engine.invariants.check_invariants`` adds to the rules both designs
share (reference §6). Each reachable
structure is sorted by ``base_gfn`` strictly descending with no gfn overlap,
its ``id_to_index`` and ``used_slots`` agree with the array, and it reaches
no freed structure or allocation; at rest no scratch copy exists, mid-update
the copy differs from the active structure only in the changing slot, and
its generation is a copy of the active one, marked in progress, or the stale
value of the structure an install replaced (reference §3.1).

>>> from kvmviz import VM
>>> vm = VM(implementation="array")
>>> _ = vm.set_user_memory_region(1, 0, 0x1000, 0x1000, 0x100000)
>>> check_structure(vm)
[]
>>> vm.active_set(0).id_to_index[1] = 3
>>> v = check_structure(vm)[0]; v.rule, v
('indexes-agree', 'as0/memslots@1: #1 (id 1) sits at index 0 but id_to_index says 3')
"""

from ..constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from ..rules import Violation
from ..fmt import gen_text
from .memslots import AS, ARCH, BASE, BITMAP, ID, NPAGES, UID


def check_structure(vm):
    """The array design's own violated invariants of ``vm``."""
    out = []
    for as_id, (active, scratch) in enumerate(vm.sets):
        out += check_struct(active, as_id)
        if scratch is not active:
            # A structure with a stale generation was replaced by an install whose
            # grace period is over: no reader reaches it, so what it points to may
            # already be freed (it is about to be freed or overwritten itself).
            replaced = scratch.generation < active.generation & ~IP
            out += check_struct(scratch, as_id, pointers=not replaced)
        out += _check_scratch(vm, as_id, active, scratch)
    return out


def check_struct(s, as_id, pointers=True):
    """One structure's array, ``id_to_index`` and counters agree.

    With ``pointers``, no entry may point to a freed bitmap or arch allocation.
    """
    out, name, slots = [], s.name, s.memslots
    if s.freed:
        out.append(Violation("free-after-gp", f"{name} was freed but is still reachable"))
    if s.as_id != as_id:
        out.append(Violation("address-space", f"{name}: the structure of as{as_id} says it belongs to as{s.as_id}"))
    if len(slots) != s.used_slots:
        out.append(Violation("indexes-agree", f"{name}: used_slots is {s.used_slots} but the array holds "
                                              f"{len(slots)} entries"))
    for i, e in enumerate(slots):
        label = f"#{e[UID]}"
        if s.id_to_index[e[ID]] != i:
            out.append(Violation("indexes-agree", f"{name}: {label} (id {e[ID]}) sits at index {i} but id_to_index "
                                                  f"says {s.id_to_index[e[ID]]}"))
        if e[AS] != as_id:
            out.append(Violation("address-space", f"{name}: {label} has as_id {e[AS]}"))
        if i and slots[i - 1][BASE] < e[BASE] + e[NPAGES]:
            prev = slots[i - 1]
            out.append(Violation("gfn-order", f"{name}: index {i - 1} (#{prev[UID]}, gfn {prev[BASE]:#x}) must lie "
                                 f"above index {i} ({label}, gfn {e[BASE]:#x}..{e[BASE] + e[NPAGES] - 1:#x}): not "
                                 "sorted descending, or overlapping"))
        for a in (e[BITMAP], e[ARCH]) if pointers else ():
            if a is not None and a.freed:
                out.append(Violation("free-after-gp", f"{name}: {label} points to freed {a.kind} {a.label}"))
    listed = sum(1 for x in s.id_to_index if x >= 0)
    if listed != s.used_slots:
        out.append(Violation("indexes-agree", f"{name}: id_to_index lists {listed} slots but used_slots is "
                                              f"{s.used_slots}"))
    if s.last_used_slot and s.last_used_slot >= s.used_slots:
        out.append(Violation("stale-cache", f"{name}: last_used_slot index {s.last_used_slot} >= used_slots "
                                            f"{s.used_slots}"))
    return out


def _check_scratch(vm, as_id, active, scratch):
    if scratch is active:
        return []
    if vm.changing is None:
        return [Violation("same-at-rest", f"as{as_id}: no update is running but scratch copy {scratch.name} is "
                                          "still allocated")]
    by_id = [{e[ID]: tuple(e[:UID]) for e in s.memslots} for s in (active, scratch)]
    differ = sorted(i for i in by_id[0].keys() | by_id[1].keys() if by_id[0].get(i) != by_id[1].get(i))
    if differ and vm.changing != (as_id, differ[0]) or len(differ) > 1:
        return [Violation("differ-by-one", f"as{as_id}: {scratch.name} may differ from {active.name} only in the "
                                           f"changing slot, but ids {differ} differ")]
    return []


def check_other_generation(vm, as_id):
    """The scratch copy's generation: a copy of the active one, marked in progress, or stale (§3.1, §6.3).

    >>> from kvmviz import VM
    >>> vm = VM(implementation="array"); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> _ = upd.run_until(lambda step: vm.sets[0][1] is not vm.sets[0][0])     # kvm_dup_memslots made the copy
    >>> vm.sets[0][1].generation = 6; check_other_generation(vm, 0)
    ['as0: scratch as0/memslots@1 has generation 0x6; expected one of 0x0, 0x0|IP (a copy of the active one, marked in progress, or the stale value of the replaced structure)']
    """
    (active, scratch), n = vm.sets[as_id], vm.address_spaces
    ga, gi = active.generation, scratch.generation
    allowed = {ga & ~IP} if ga & IP else {ga, ga | IP} | ({ga - n} if vm.swaps[as_id] else set())
    if gi in allowed:
        return []
    return [Violation("generation", f"as{as_id}: scratch {scratch.name} has generation {gen_text(gi)}; expected one of "
                                    f"{', '.join(map(gen_text, sorted(allowed)))} (a copy of the active one, marked in "
                                    "progress, or the stale value of the replaced structure)")]
