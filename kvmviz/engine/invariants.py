"""The invariant checker: what must hold after every step (reference §1.7, §3.1).

``check_invariants(vm)`` returns the violated invariants as ``Violation``s
(sentences a learner reads, each filed under a key of ``RULES``), empty when
all hold. Every VM gets the design's own structural rules
(``tree/invariants.py`` for 5.17+, ``array/invariants.py`` for 5.15) and the
rules both designs share (this module: the active generation, locks, SRCU
readers' pins and caches, the grace period and the sets a swap unpublished,
the page count). The structure comes first in the list: a broken structure
is the direct cause, and what the shared rules then see follows from it (a
slot dropped from a set also leaves the page count wrong). It knows which rules apply mid-update: the two sets of an address space may
then differ by the one slot being changed, and the generation may carry the
in-progress bit during a swap.

>>> from kvmviz import VM
>>> vm = VM(); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
>>> all(check_invariants(vm) == [] for _ in upd)
True
>>> vm.memslots(0)[0].npages = 2          # edit a live slot in place
>>> v = check_invariants(vm)[0]; v.rule, v
('in-place', 'as0: #1.npages changed in place (0x1 -> 0x2) while readers could reach it (after event 15)')
"""

from .array import invariants as array_invariants
from .constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from .rules import RULES, Violation
from .tree import invariants as tree_invariants
from .fmt import gen_text
from .vcpu import snapshot

__all__ = ["RULES", "Checker", "Violation", "check_invariants"]

#: Each design's own rules, by ``vm.implementation``: a module with ``check_structure(vm)``
#: and ``check_other_generation(vm, as_id)``.
DESIGNS = {"tree": tree_invariants, "array": array_invariants}


def check_invariants(vm, cache=None):
    """All violated invariants of ``vm`` as ``Violation``s (empty list: all hold).

    ``cache``: a ``Checker``'s memory of the tree structure (see ``Checker``).

    >>> from kvmviz import VM
    >>> vm = VM(implementation="array"); vm.lock("slots_lock")
    >>> [(v.rule, v) for v in check_invariants(vm)]
    [('locks', 'no update is running but slots_lock is still held')]
    """
    design = DESIGNS[vm.implementation]
    out = design.check_structure(vm) if cache is None else design.check_structure(vm, cache)
    for as_id in range(len(vm.sets)):
        out += check_generation(vm, as_id) + design.check_other_generation(vm, as_id)
    return out + check_shared(vm)


class Checker:
    """``check_invariants`` for a caller that checks after every event: ``checker()`` is the same list.

    On the tree design it keeps each set's structural results until the
    journal shows a change to that set (``tree.invariants.StructureCache``),
    so a recipe of n calls costs O(n) per call, not per step. The array
    design is checked in full each time.

    >>> from kvmviz import VM
    >>> vm = VM(); checker = Checker(vm); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> all(checker() == check_invariants(vm) for _ in upd)
    True
    """

    def __init__(self, vm):
        self.vm = vm
        self.cache = tree_invariants.StructureCache(vm) if vm.implementation == "tree" else None

    def __call__(self):
        return check_invariants(self.vm, self.cache)


def check_shared(vm):
    """The rules both designs share, but the active generation (``check_generation``)."""
    return check_locks(vm) + check_readers(vm) + check_grace_period(vm) + check_unpublished(vm) + check_page_count(vm)


def check_locks(vm):
    """At rest no lock is held: the ioctl releases all it took (reference §1.5)."""
    if vm.changing is None and vm.locks:
        return [Violation("locks", f"no update is running but {', '.join(sorted(vm.locks))} is still held")]
    return []


def check_generation(vm, as_id):
    """The active generation: ``as_id`` + N per completed swap, IP only mid-update (reference §3.1).

    The other set's generation is a design rule (``check_other_generation``
    of the design module: a stale set in the tree, a copy of the header in 5.15).

    >>> from kvmviz import VM
    >>> vm = VM(implementation="array"); vm.active_set(0).generation = 4
    >>> check_generation(vm, 0)
    ['as0: active generation 0x4 after 0 swap(s); expected 0x0 (0 + 2 per completed swap)']
    """
    ga, swaps, n = vm.active_set(as_id).generation, vm.swaps[as_id], vm.address_spaces
    out, where = [], f"as{as_id}"
    if (ga & ~IP) % n != as_id:
        out.append(Violation("generation", f"{where}: active generation {ga & ~IP:#x} is not {as_id} mod {n}"))
    expect = as_id + n * swaps - (n if ga & IP else 0)
    if ga & ~IP != expect:
        out.append(Violation("generation", f"{where}: active generation {gen_text(ga)} after {swaps} swap(s); "
                                           f"expected {gen_text(expect | (ga & IP))} ({as_id} + {n} per completed swap)"))
    if ga & IP and vm.changing is None:
        out.append(Violation("generation", f"{where}: the in-progress bit is set but no update is running"))
    return out


def check_unpublished(vm):
    """A set unpublished at grace period ``gp`` is not written or freed before the writer waited for ``gp``.

    Holds whether or not a reader is inside now: a reader the model does not
    show could be (reference §1.5, §3.4 step 5).

    >>> from kvmviz import VM
    >>> vm = VM(variant="no-srcu-wait"); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
    >>> v = check_unpublished(vm)[0]; v.rule, v[:95]
    ('grace-period', 'as0/set0 was written 1 time(s) after it was unpublished (grace period 1) before the writer wait')
    """
    out = []
    for entry in vm.unpublished:
        if entry is None or vm.srcu.completed >= entry[1]:
            continue
        s, gp, edits = entry
        # a tree set counts its edits and is never freed; a 5.15 structure is freed, never edited
        if getattr(s, "edits", 0) != edits:
            out.append(Violation("grace-period", f"{s.name} was written {s.edits - edits} time(s) after it was "
                                 f"unpublished (grace period {gp}) before the writer waited for that grace period: "
                                 "synchronize_srcu_expedited was skipped"))
        if getattr(s, "freed", False):
            out.append(Violation("free-after-gp", f"{s.name} was freed after it was unpublished (grace period {gp}) "
                                 "before the writer waited for that grace period: synchronize_srcu_expedited "
                                 "was skipped"))
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
    ['a swap finished (no in-progress generation) while vcpu0, inside since before its publish, may still use the old set: the final generation was stored before the grace period ended (synchronize_srcu_expedited skipped, or the in-progress mark never set)']
    """
    holders = vm.srcu.holders(vm.srcu.seq)
    if not holders or any(s.generation & IP for s in map(vm.active_set, range(len(vm.sets)))):
        return []
    # the state cannot tell a skipped wait from a missing in-progress mark: name both
    return [Violation("grace-period", f"a swap finished (no in-progress generation) while "
                      f"{', '.join(map(str, holders))}, inside since before its publish, may still use the old "
                      "set: the final generation was stored before the grace period ended "
                      "(synchronize_srcu_expedited skipped, or the in-progress mark never set)")]


def check_page_count(vm):
    """At rest ``nr_memslot_pages`` is the page total of all slots (reference §1.4).

    5.15 keeps no page count (reference §4.6): its model leaves the field at 0.

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x2000, 0x100000)
    >>> vm.nr_memslot_pages = 1; check_page_count(vm)
    ['nr_memslot_pages is 0x1 but the slots hold 0x2 pages (commit skipped or ran twice)']
    """
    if vm.changing is not None:
        return []
    total = sum(slot.npages for as_id in range(len(vm.sets)) for slot in vm.active_set(as_id).slots())
    if vm.implementation == "array":
        if vm.nr_memslot_pages == 0:
            return []
        return [Violation("accounting", f"nr_memslot_pages is {vm.nr_memslot_pages:#x} but 5.15 keeps no page "
                                        "count: the field must stay 0")]
    if total == vm.nr_memslot_pages:
        return []
    return [Violation("accounting", f"nr_memslot_pages is {vm.nr_memslot_pages:#x} but the slots hold {total:#x} "
                                    "pages (commit skipped or ran twice)")]


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
    >>> [(m.rule, m) for m in check_readers(vm) if m.startswith("vcpu0 can")]
    [('free-after-gp', 'vcpu0 can still reach #1 (inside its read section since event 16), but it was freed before vcpu0 left the section (its grace period had not ended)')]
    """
    out = []
    for vcpu in vm.vcpus:
        if vcpu.pinned is not None:
            out += _check_pinned(vcpu)
        out += _check_caches(vm, vcpu)
    return out


def _check_pinned(vcpu):
    out, since = [], f"inside its read section since event {vcpu.locked_at}"
    reachable = {}
    for as_id, s in enumerate(vcpu.pinned_sets):
        if getattr(s, "edits", 0) != vcpu.pinned_edits[as_id]:
            out.append(Violation("grace-period", f"{vcpu.name} pinned {s.name} ({since}) but the writer edited "
                                 f"that set {s.edits - vcpu.pinned_edits[as_id]} time(s) while it was pinned: "
                                 "kvm_replace_memslot ran on a set a reader still uses"))
        for slot in s.slots():
            reachable[id(slot)] = slot
    for slot, snap in vcpu.seen.values():
        reachable[id(slot)] = slot
        if snapshot(slot) != snap:
            out.append(Violation("in-place", f"{vcpu.name} looked up {slot.label} ({since}) and {slot.label} was "
                                 "modified after it was published: a reader may see a torn or changed slot"))
    for slot in reachable.values():
        freed = [slot.label] if slot.freed else []
        freed += [f"{slot.label}'s {a.kind} {a.label}" for a in (slot.dirty_bitmap, slot.arch)
                  if a is not None and a.freed]
        out += [Violation("free-after-gp", f"{vcpu.name} can still reach {what} ({since}), but it was freed "
                          f"before {vcpu.name} left the section (its grace period had not ended)") for what in freed]
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
                out.append(Violation("stale-cache", f"{vcpu.name}'s {what} holds {slot.label} under generation "
                                     f"{gen_text(gen)}, which is current for {s.name}, but {s.name} does not hold "
                                     f"{slot.label}: the stale entry would be used"))
    return out


def _same(slot):
    # an array-model slot is a view; its identity is the entry it shows
    return getattr(slot, "entry", slot)
