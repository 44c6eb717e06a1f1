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

"""

from .constants import KVM_ADDRESS_SPACE_NUM, KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from .memslots import hash_32

N = KVM_ADDRESS_SPACE_NUM


def check_invariants(vm):
    """All violated invariants of ``vm``, as sentences (empty list: all hold)."""
    out = [f"as{w[0]}: {w[1]}.{w[2]} changed in place ({_fmt(w[3])} -> {_fmt(w[4])}) "
           f"while readers could reach it (after event {w[5]})" for w in vm.in_place_writes]
    for as_id in range(len(vm.sets)):
        for s in vm.sets[as_id]:
            out += check_set(s, as_id)
        out += check_agreement(vm, as_id)
        out += check_generation(vm, as_id)
    if vm.changing is None and vm.locks:
        out.append(f"no update is running but {', '.join(sorted(vm.locks))} is still held")
    return out


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
    if seen != ids:
        out.append(f"{s.name}: the id hash holds {len(seen)} slots, the gfn tree {len(ids)}, not the same ones")
    return out


def _check_hva(s, ids):
    out, seen = [], set()
    for start, last, slot in s.hva_tree:
        seen.add(id(slot))
        if (start, last) != (slot.userspace_addr, slot.hva_last):
            out.append(f"{s.name}: {slot.label} is linked under gfn {slot.base_gfn:#x} but its hva node covers "
                       f"{start:#x}..{last:#x}, not {slot.userspace_addr:#x}..{slot.hva_last:#x}")
    if seen != ids:
        out.append(f"{s.name}: the hva tree holds {len(seen)} slots, the gfn tree {len(ids)}, not the same ones")
    return out


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
    ga, gi, swaps = active.generation, inactive.generation, vm.swaps[as_id]
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
