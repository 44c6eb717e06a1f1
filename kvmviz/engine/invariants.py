"""The invariant checker: what must hold after every step (reference §1.7, §3.1).

``check_invariants(vm)`` returns readable violations, empty when all hold. It
knows which rules apply mid-update: the two sets of an address space may then
differ by the one slot being changed, and the generation may carry the
in-progress bit during a swap.

>>> from kvmviz import VM
>>> vm = VM(); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
>>> all(check_invariants(vm) == [] for _ in upd)
True
>>> vm.memslots(0)[0].npages = 2          # edit a live slot in place
>>> check_invariants(vm)[0]
'as0: #1.npages changed in place (0x1 -> 0x2) while readers could reach it (after event 15)'

One in-place write to a reachable slot is sanctioned: x86 writes ``slot->arch``
of live slots while holding ``slots_arch_lock`` (lazy rmap allocation in
``mmu_first_shadow_root_alloc``, arch/x86/kvm/mmu/mmu.c, reference §1.5). That
is why ``kvm_invalidate_memslot`` copies ``invalid->arch`` back into ``old``
after taking the lock again: a vCPU may have filled the INVALID copy's arch
data in the window. The checker accepts exactly that write (field ``arch``,
``slots_arch_lock`` held when it happened) and reports any other.
"""

from .constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from .tree.memslots import hash_32

SAL = "slots_arch_lock"


def check_invariants(vm):
    """All violated invariants of ``vm``, as sentences (empty list: all hold)."""
    if vm.implementation == "array":
        from .array.memslots import check_array_invariants
        return check_array_invariants(vm) + check_shared(vm)
    out = [f"as{w[0]}: {w[1]}.{w[2]} changed in place ({_fmt(w[3])} -> {_fmt(w[4])}) "
           f"while readers could reach it (after event {w[5]})" for w in unsanctioned_writes(vm)]
    for as_id in range(len(vm.sets)):
        for s in vm.sets[as_id]:
            out += check_set(s, as_id)
        out += check_agreement(vm, as_id)
        out += check_generation(vm, as_id)
    if vm.changing is None and vm.locks:
        out.append(f"no update is running but {', '.join(sorted(vm.locks))} is still held")
    return out + check_shared(vm) + check_page_count(vm)


def check_shared(vm):
    """The rules both designs share: SRCU readers and the grace period.

    (The page count is not shared: 5.15 keeps no ``nr_memslot_pages``.)
    """
    return check_readers(vm) + check_grace_period(vm) + check_unpublished(vm)


def check_unpublished(vm):
    """A set unpublished at grace period ``gp`` is not written or freed before the writer waited for ``gp``.

    Holds whether or not a reader is inside now: a reader the model does not
    show could be (reference §1.5, §3.4 step 5).

    >>> from kvmviz import VM
    >>> vm = VM(variant="no-srcu-wait"); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> check_unpublished(vm)[0][:95]
    'as0/set0 was written 1 time(s) after it was unpublished (grace period 1) before the writer wait'
    """
    out = []
    for entry in vm.unpublished:
        if entry is None or vm.srcu.completed >= entry[1]:
            continue
        s, gp, edits = entry
        if getattr(s, "edits", 0) != edits:
            out.append(f"{s.name} was written {s.edits - edits} time(s) after it was unpublished (grace period "
                       f"{gp}) before the writer waited for that grace period: synchronize_srcu_expedited was skipped")
        if getattr(s, "freed", False):
            out.append(f"{s.name} was freed after it was unpublished (grace period {gp}) before the writer waited "
                       "for that grace period: synchronize_srcu_expedited was skipped")
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


def check_grace_period(vm):
    """A swap is not over while readers from before its publish are inside.

    ``synchronize_srcu_expedited`` comes before the final generation store
    (reference §3.4 steps 5-6), so while an SRCU reader that entered before the
    last publish is still inside, some address space must still show the
    in-progress bit.

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.srcu.read_lock("vcpu0"); _ = vm.srcu.start_grace_period()
    >>> check_grace_period(vm)
    ['a swap finished (no in-progress generation) while vcpu0, inside since before its publish, may still use the old set: synchronize_srcu_expedited was skipped']
    """
    holders = vm.srcu.holders(vm.srcu.seq)
    if not holders or any(s.generation & IP for s in map(vm.active_set, range(len(vm.sets)))):
        return []
    return [f"a swap finished (no in-progress generation) while {', '.join(map(str, holders))}, inside since "
            "before its publish, may still use the old set: synchronize_srcu_expedited was skipped"]


def check_page_count(vm):
    """At rest ``nr_memslot_pages`` is the page total of all slots (reference §1.4).

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x2000, 0x100000)
    >>> vm.nr_memslot_pages = 1; check_page_count(vm)
    ['nr_memslot_pages is 0x1 but the slots hold 0x2 pages (commit skipped or ran twice)']
    """
    if vm.changing is not None:
        return []
    total = sum(slot.npages for as_id in range(len(vm.sets)) for slot in vm.active_set(as_id).slots())
    if total == vm.nr_memslot_pages:
        return []
    return [f"nr_memslot_pages is {vm.nr_memslot_pages:#x} but the slots hold {total:#x} pages "
            "(commit skipped or ran twice)"]


def check_readers(vm):
    """Rules for SRCU readers (reference §1.5, §1.7 rules 1 and 5, §3.2).

    A vCPU inside a read-side section must find the sets it pinned unedited
    and the slots it looked up unmodified; nothing it can reach may be freed
    before its grace period ends; and a cache entry tagged with the current
    generation must point into the set that generation belongs to.

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> v = vm.add_vcpu(); v.srcu_read_lock(); _ = v.gfn_to_memslot(0)
    >>> vm.free(vm.memslots(0)[0])          # free a slot a pinned reader holds
    >>> [m for m in check_readers(vm) if m.startswith("vcpu0 can")]
    ['vcpu0 can still reach #1 (inside its read section since event 16), but it was freed before vcpu0 left the section (its grace period had not ended)']
    """
    out = []
    for vcpu in vm.vcpus:
        if vcpu.pinned is not None:
            out += _check_pinned(vm, vcpu)
        out += _check_caches(vm, vcpu)
    return out


def _check_pinned(vm, vcpu):
    from .vcpu import snapshot
    out, since = [], f"inside its read section since event {vcpu.locked_at}"
    reachable = {}
    for as_id, s in enumerate(vcpu.pinned_sets):
        if getattr(s, "edits", 0) != vcpu.pinned_edits[as_id]:
            out.append(f"{vcpu.name} pinned {s.name} ({since}) but the writer edited that set "
                       f"{s.edits - vcpu.pinned_edits[as_id]} time(s) while it was pinned: kvm_replace_memslot "
                       "ran on a set a reader still uses")
        for slot in s.slots():
            reachable[id(slot)] = slot
    for slot, snap in vcpu.seen.values():
        reachable[id(slot)] = slot
        if snapshot(slot) != snap:
            out.append(f"{vcpu.name} looked up {slot.label} ({since}) and {slot.label} was modified after "
                       "it was published: a reader may see a torn or changed slot")
    for slot in reachable.values():
        freed = [slot.label] if slot.freed else []
        freed += [f"{slot.label}'s {a.kind} {a.label}" for a in (slot.dirty_bitmap, slot.arch)
                  if a is not None and a.freed]
        out += [f"{vcpu.name} can still reach {what} ({since}), but it was freed before {vcpu.name} left "
                "the section (its grace period had not ended)" for what in freed]
    return out


def _check_caches(vm, vcpu):
    out = []
    entries = [("slot cache (last_used_slot)", vcpu.last_used_slot, vcpu.last_used_slot_gen, None)]
    entries += [(f"gfn_to_hva_cache of gpa {g.gpa:#x}", g.memslot, g.generation, 0) for g in vcpu.hva_caches]
    for what, slot, gen, only_as in entries:
        if slot is None or isinstance(slot, int):     # the 5.15 index cache has no generation
            continue
        for as_id in range(len(vm.sets)) if only_as is None else (only_as,):
            s = vcpu.memslots(as_id) if only_as is None else vm.active_set(as_id)
            if s.generation == gen and all(_same(x) is not _same(slot) for x in s.slots()):
                out.append(f"{vcpu.name}'s {what} holds {slot.label} under generation {_g(gen)}, which is "
                           f"current for {s.name}, but {s.name} does not hold {slot.label}: the stale entry "
                           "would be used")
    return out


def _same(slot):
    # an array-model slot is a view; its identity is the entry it shows
    return getattr(slot, "entry", slot)


def check_set(s, as_id):
    """One set's indexes agree with each other and hold live, disjoint slots."""
    out, name = [], s.name
    if s.node_idx not in (0, 1) or s.as_id != as_id:
        out.append(f"{name}: wrong node_idx/as_id ({s.node_idx}, {s.as_id})")
    slots, prev = [], None
    for key, slot in s.gfn_tree.items():
        slots.append(slot)
        if key != slot.base_gfn:
            out.append(f"{name}: {slot.label} sits under gfn {key:#x} in the gfn tree but its base_gfn is "
                       f"{slot.base_gfn:#x} (modified while linked)")
        if slot.as_id != as_id:
            out.append(f"{name}: {slot.label} has as_id {slot.as_id}")
        if not slot.nodes >> s.node_idx & 1:
            out.append(f"{name}: {slot.label} is in the gfn tree but its node {s.node_idx} is not linked")
        out += _freed(name, slot)
        if prev is not None and prev.end_gfn > slot.base_gfn:
            out.append(f"{name}: {prev.label} (gfn {prev.base_gfn:#x}..{prev.end_gfn - 1:#x}) overlaps "
                       f"{slot.label} (gfn {slot.base_gfn:#x}..)")
        prev = slot
    ids = {id(x) for x in slots}
    out += _check_hash(s, ids)
    out += _check_hva(s, ids)
    if s.last_used_slot is not None and id(s.last_used_slot) not in ids:
        out.append(f"{name}: last_used_slot points to {s.last_used_slot.label}, which the set does not hold")
    return out


def _check_hash(s, ids):
    out, seen = [], set()
    for b, bucket in enumerate(s.id_hash):
        for key, slot in bucket.items():
            seen.add(id(slot))
            if key != slot.id or hash_32(slot.id) != b:
                out.append(f"{s.name}: {slot.label} is in id-hash bucket {b} under id {key}, "
                           f"but its id is {slot.id}")
    return out + _same_slots(s, "id hash", seen, ids)


def _same_slots(s, index, seen, ids):
    """The index ``index`` of set ``s`` links exactly the gfn tree's slots."""
    if seen == ids:
        return []
    return [f"{s.name}: the {index} holds {len(seen)} slots, the gfn tree {len(ids)}, not the same ones"]


def _check_hva(s, ids):
    out, seen = [], set()
    for start, last, slot in s.hva_tree:
        seen.add(id(slot))
        if (start, last) != (slot.userspace_addr, slot.hva_last):
            out.append(f"{s.name}: {slot.label} is linked under gfn {slot.base_gfn:#x} but its hva node covers "
                       f"{start:#x}..{last:#x}, not {slot.userspace_addr:#x}..{slot.hva_last:#x}")
    return out + _same_slots(s, "hva tree", seen, ids)


def _freed(name, slot):
    out = []
    if slot.freed:
        out.append(f"{name}: {slot.label} was freed but the set still links it (use after free)")
    for a in (slot.dirty_bitmap, slot.arch):
        if a is not None and a.freed:
            out.append(f"{name}: {slot.label} points to freed {a.kind} {a.label}")
    return out


def check_agreement(vm, as_id):
    """At rest both sets hold the same objects; mid-update they differ by one slot."""
    a, b = vm.sets[as_id]
    by_id_a = {x.id: x for x in a.gfn_tree.values()}
    by_id_b = {x.id: x for x in b.gfn_tree.values()}
    differ = sorted(i for i in by_id_a.keys() | by_id_b.keys() if by_id_a.get(i) is not by_id_b.get(i))
    if not differ:
        return []
    changing = vm.changing
    labels = "; ".join(f"id {i}: {_lab(by_id_a.get(i))} vs {_lab(by_id_b.get(i))}" for i in differ)
    if changing is None:
        return [f"as{as_id}: at rest both sets must hold the same slot objects, but they differ ({labels})"]
    if changing != (as_id, differ[0]) or len(differ) > 1:
        return [f"as{as_id}: mid-update the sets may differ only in slot {changing[1]} of "
                f"as{changing[0]}, but they differ in {labels}"]
    return []


def check_generation(vm, as_id):
    """Generation rules of reference §3.1: parity, swaps, in-progress bit."""
    active, inactive = vm.active_set(as_id), vm.inactive_set(as_id)
    ga, gi, swaps, N = active.generation, inactive.generation, vm.swaps[as_id], vm.address_spaces
    out, where = [], f"as{as_id}"
    if (ga & ~IP) % N != as_id:
        out.append(f"{where}: active generation {ga & ~IP:#x} is not {as_id} mod {N}")
    expect = as_id + N * swaps - (N if ga & IP else 0)
    if ga & ~IP != expect:
        out.append(f"{where}: active generation {_g(ga)} after {swaps} swap(s); expected "
                   f"{_g(expect | (ga & IP))} ({as_id} + {N} per completed swap)")
    if ga & IP:
        ok = gi == ga & ~IP
        if vm.changing is None:
            out.append(f"{where}: the in-progress bit is set but no update is running")
    else:
        ok = gi in ((ga - N) if swaps else ga, ga | IP)
        if gi & IP and vm.changing is None:
            out.append(f"{where}: {inactive.name} carries the in-progress bit at rest")
    if not ok:
        out.append(f"{where}: inactive {inactive.name} has generation {_g(gi)}, expected the stale "
                   f"{_g(ga - N if swaps else ga)} or {_g(ga | IP)} while a swap is being prepared "
                   f"(active {active.name}: {_g(ga)})")
    return out


def _g(g):
    return f"{g & ~IP:#x}|IP" if g & IP else f"{g:#x}"


def _lab(slot):
    return slot.label if slot is not None else "none"


def _fmt(v):
    return f"{v:#x}" if isinstance(v, int) else repr(v)
