"""vCPUs as SRCU readers of the memslots, and the caches keyed by the generation.

Reference §1.4, §1.5, §2.3, §3.2, §5.1. A vCPU enters an SRCU read-side
section (``srcu_read_lock``) and reads ``kvm->memslots[as]``. The model loads
that pointer once, at ``srcu_read_lock``, for every address space: the vCPU
*pins* the sets that were active then, and keeps using them until
``srcu_read_unlock``. That is the case the grace period exists for, a reader
still using the set it loaded. (Kernel code re-reads the pointer on each
``kvm_vcpu_memslots()`` call, so a real long section may also see a newer
set; SRCU only promises that what a reader loaded stays valid until it
unlocks.)

Caches that outlive a lookup are tagged with the generation they were filled
under and dropped when it changes: the per-vCPU ``last_used_slot``, the x86
MMIO SPTEs (19 generation bits) and MMIO info cache, and ``gfn_to_hva_cache``.

>>> from kvmviz import VM
>>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0x100000, 0x2000, 0x7f0000000000)
>>> v = vm.add_vcpu(); v.srcu_read_lock()
>>> upd = vm.begin_set_user_memory_region(1, 0, 0x100000, 0, 0)      # DELETE
>>> _ = upd.run_until(); upd.blocked                                # the writer waits for vcpu0
'SRCU readers still inside: vcpu0'
>>> v.access(0x100).reason         # vcpu0 still uses the set it pinned
'ok'
>>> v.srcu_read_unlock(); v.srcu_read_lock(); v.access(0x100).reason     # the INVALID copy: retried
'retry'
"""

import errno
from dataclasses import dataclass
from typing import NamedTuple

from .arch import MMIO_SPTE_GEN_MASK
from .array.memslots import ArraySlot
from .constants import KVM_MEM_READONLY, KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP
from .constants import GFN_LIMIT, PAGE_SHIFT
from .dirty_log import mark_page_dirty_in_slot
from .fmt import gen_text, result_text
from .history import Journaled, StateError, set_item
from .numbers import check_number
from .memslot import OBSERVED_FIELDS
from .events import ReaderAction

#: ``Access.reason`` values that the x86 MMU handles like MMIO (an exit to userspace).
#: A fault on an INVALID slot is not one of them since 5.13: it gives ``"retry"``.
MMIO_REASONS = ("no-slot", "readonly")

# arch is left out: x86 may write it in place under slots_arch_lock (lazy rmap
# allocation), and the checker's in-place-write rule already polices it
_SNAPSHOT_FIELDS = tuple(sorted(OBSERVED_FIELDS - {"arch"}))


def snapshot(slot):
    """The observed fields of ``slot`` but ``arch``, to tell later whether it changed.

    >>> from kvmviz.engine.memslot import Memslot
    >>> snapshot(Memslot(id=1, base_gfn=0x10))[:3]
    (0, 16, None)
    """
    return tuple(getattr(slot, name) for name in _SNAPSHOT_FIELDS)


def gfn_to_hva(slot, gfn, write):
    """``__gfn_to_hva_many``: the hva of ``gfn`` in ``slot``, or the reason it has none.

    Returns ``(reason, hva)``: an INVALID slot or no slot gives
    ``KVM_HVA_ERR_BAD``, a write to a READONLY slot ``KVM_HVA_ERR_RO_BAD``
    (reference §5.1). ``kvm_read_guest``-style paths and ``gfn_to_hva_cache``
    see ``"invalid-slot"`` as -EFAULT; the page-fault path never gets here
    for an INVALID slot, it retries first (``fault_verdict``).

    >>> from kvmviz.engine.memslot import Memslot
    >>> s = Memslot(base_gfn=0x10, npages=2, userspace_addr=0x7000000)
    >>> gfn_to_hva(s, 0x11, False), gfn_to_hva(None, 0x11, False)
    (('ok', 117444608), ('no-slot', None))
    """
    if slot is None:
        return "no-slot", None
    if slot.invalid:
        return "invalid-slot", None
    if write and slot.flags & KVM_MEM_READONLY:
        return "readonly", None
    return "ok", slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)


def fault_verdict(slot, gfn, write):
    """How the x86 page-fault path resolves ``gfn``: ``(reason, hva)``.

    Models the order of ``kvm_faultin_pfn`` (arch/x86/kvm/mmu/mmu.c; 6.12
    ``kvm_faultin_pfn``, later ``kvm_mmu_faultin_pfn``): no slot is an MMIO
    fault; an INVALID slot (between the two swaps of a DELETE or MOVE) gives
    ``RET_PF_RETRY``, ``"retry"``, since 5.13 (e0c378684b65 "KVM: x86/mmu:
    Retry page faults that hit an invalid memslot"); otherwise the slot is
    filtered as ``__gfn_to_hva_many`` does (reference §2.3).

    >>> from kvmviz.engine.memslot import Memslot
    >>> fault_verdict(Memslot(base_gfn=0x10, npages=2, flags=1 << 16), 0x10, False)
    ('retry', None)
    """
    if slot is not None and slot.invalid:
        return "retry", None
    return gfn_to_hva(slot, gfn, write)


_VERDICT_TEXT = {
    "ok": "a normal access",
    "no-slot": "no memslot: the access is emulated as MMIO (KVM_EXIT_MMIO)",
    "retry": ("the lookup finds the INVALID copy, so kvm_faultin_pfn returns RET_PF_RETRY: no exit to "
              "userspace, no MMIO SPTE, nothing cached; the vCPU re-enters the guest and faults again until "
              "the update is over (x86 since 5.13, e0c378684b65; before, it was handled like MMIO; retrying "
              "makes sure the old slot's SPTEs are zapped before any MMIO SPTE is installed for the gfn)"),
    "readonly": "a write to a READONLY slot: KVM_HVA_ERR_RO_BAD, emulated and exits as MMIO (KVM_EXIT_MMIO)",
}


@dataclass(frozen=True)
class Access:
    """The outcome of one guest access by a vCPU (or through a ``gfn_to_hva_cache``).

    ``reason`` is ``"ok"`` (with ``hva``), ``"no-slot"``, ``"readonly"``,
    ``"retry"`` (the fault hit an INVALID slot; no exit), or for the hva cache
    ``"efault"``/``"einval"``;
    ``generation`` is the generation the access was made under; ``path`` says
    how it was resolved (``"memslot"`` lookup, ``"mmio-spte"`` fast path,
    ``"gfn_to_hva_cache"``); ``notes`` lists cache decisions, including stale
    entries that were rejected.

    >>> a = Access("vcpu0", 0x100, False, 0, "no-slot", 2)
    >>> a.exit_reason, str(a), Access("vcpu0", 0x100, False, 0, "retry", 4).exit_reason
    ('KVM_EXIT_MMIO', 'vcpu0 read gfn 0x100 (as0, gen 0x2): no-slot', None)
    """

    vcpu: str
    gfn: int
    write: bool
    as_id: int
    reason: str
    generation: int
    slot: object = None
    hva: object = None
    path: str = "memslot"
    notes: tuple = ()

    @property
    def exit_reason(self):
        """``"KVM_EXIT_MMIO"`` when userspace has to emulate the access, else None."""
        return "KVM_EXIT_MMIO" if self.reason in MMIO_REASONS else None

    def __str__(self):
        rw = "write" if self.write else "read"
        hva = f" hva {self.hva:#x}" if self.hva is not None else ""
        slot = f" ({self.slot.label})" if self.slot is not None else ""
        return (f"{self.vcpu} {rw} gfn {self.gfn:#x} (as{self.as_id}, gen {gen_text(self.generation)}): "
                f"{self.reason}{slot}{hva}")


class MmioSpte(NamedTuple):
    """An x86 MMIO SPTE: a gfn known to have no usable memslot (reference §3.2, §3.5).

    ``generation`` holds only the 19 MMIO bits (``make_mmio_spte``: bit 63 is
    not in the mask); ``mmu_valid_gen`` ties it to the shadow pages a zap-all
    makes obsolete; ``reason`` is the model's note of why it was made.
    """

    as_id: int
    gfn: int
    generation: int
    mmu_valid_gen: int
    reason: str


def check_mmio_spte(spte, gen):
    """``check_mmio_spte``: may this MMIO SPTE be trusted under generation ``gen``?

    Returns ``(ok, why)``. While ``gen`` has the in-progress bit every MMIO
    SPTE counts as stale; otherwise the stored 19 bits must equal the low 19
    bits of ``gen``.

    >>> s = MmioSpte(0, 0x100, 2, 0, "no-slot")
    >>> check_mmio_spte(s, 2)[0], check_mmio_spte(s, 4)[0], check_mmio_spte(s, 2 | 1 << 63)[0]
    (True, False, False)
    """
    if gen & IP:
        return False, f"the current generation {gen_text(gen)} has the in-progress bit set"
    current = gen & MMIO_SPTE_GEN_MASK
    if spte.generation != current:
        return False, f"its generation {spte.generation:#x} differs from the current {current:#x}"
    return True, f"its generation {spte.generation:#x} matches"


class Vcpu(Journaled):
    """A vCPU (``struct kvm_vcpu``) reading the memslots under SRCU.

    ``pinned`` is None outside a read-side section, else the ``node_idx`` of
    the set it loaded for each address space; ``smm`` selects address space 1
    (x86 System Management Mode). Every action is recorded in ``vm.history``.
    """

    __slots__ = ("vm", "vcpu_id", "name", "smm", "pinned", "pinned_sets", "pinned_gens", "pinned_edits",
                 "locked_at", "seen", "last_used_slot", "last_used_slot_gen",
                 "mmio_gfn", "mmio_gen", "hva_caches")

    def __init__(self, vm, vcpu_id):
        # 5.15 kept an array index per vCPU (starting at 0), 5.17 a slot pointer
        cache = 0 if vm.implementation == "array" else None
        super().__init__(vm.history, vm=vm, vcpu_id=vcpu_id, name=f"vcpu{vcpu_id}", smm=False,
                         pinned=None, pinned_sets=None, pinned_gens=None, pinned_edits=None, locked_at=None,
                         seen={}, last_used_slot=cache, last_used_slot_gen=0, mmio_gfn=None, mmio_gen=None,
                         hva_caches=())

    def __repr__(self):
        return self.name

    # -- bookkeeping ---------------------------------------------------------------
    def record(self, function, text, result=None):
        """Record one action of this vCPU as a history event; returns it."""
        action = ReaderAction(self.name, function, text, result=result, gens=self.vm.generations())
        self.vm.record(action)
        return action

    def _start(self):
        if not self.vm.history.at_frontier:
            raise StateError("the VM was stepped back; use vm.history.forward() to replay recorded "
                             "steps before a vCPU acts again")

    @property
    def inside(self):
        """True inside an SRCU read-side section."""
        return self.pinned is not None

    @property
    def address_space(self):
        """The address space this vCPU uses now: 1 in SMM, else 0 (``kvm_arch_vcpu_memslots_id``)."""
        return 1 if self.smm else 0

    def memslots(self, as_id=None):
        """``kvm_vcpu_memslots``: the pinned set inside a section, the active set outside.

        >>> from kvmviz import VM
        >>> v = VM().add_vcpu(); v.memslots().name, v.memslots(1).name
        ('as0/set0', 'as1/set0')
        """
        as_id = self.address_space if as_id is None else as_id
        if self.pinned is None:
            return self.vm.active_set(as_id)
        return self.pinned_sets[as_id]

    def generation(self, as_id=None):
        """The generation of the set this vCPU reads (pinned inside a section)."""
        return self.memslots(as_id).generation

    def current_generation(self, as_id=None):
        """The generation of the set ``kvm->memslots`` points to right now.

        The MMIO caches and ``gfn_to_hva_cache`` read the pointer afresh when
        they check or store a generation, as the kernel does on every
        ``kvm_memslots()``/``kvm_vcpu_memslots()`` call; they keep no slot
        pointer from a pinned set, so the model lets them see the newest set.
        """
        return self.vm.active_set(self._as(as_id)).generation

    # -- SRCU ------------------------------------------------------------------------
    def srcu_read_lock(self):
        """``srcu_read_lock(&kvm->srcu)``: enter a section and pin the active sets.

        >>> from kvmviz import VM
        >>> v = VM().add_vcpu(); v.srcu_read_lock(); v.pinned, v.pinned_gens
        ((0, 0), (0, 1))
        """
        self._start()
        vm = self.vm
        if vm.srcu.inside(self):
            raise StateError(f"{self.name} is already inside an SRCU read-side section; "
                             "call srcu_read_unlock first")
        idx = vm.srcu.read_lock(self)
        sets = [vm.active_set(a) for a in range(len(vm.sets))]
        self.pinned = tuple(s.node_idx for s in sets)
        self.pinned_sets = tuple(sets)
        self.pinned_gens = tuple(s.generation for s in sets)
        self.pinned_edits = tuple(getattr(s, "edits", 0) for s in sets)
        self.locked_at = len(vm.history)
        self.seen = {}
        pins = ", ".join(f"{s.name} (gen {gen_text(s.generation)})" for s in sets)
        late = ""
        if vm.update is not None and vm.update.blocked and "SRCU" in vm.update.blocked:
            late = (" It enters after the pointer was published, so it sees the new set and the "
                    "writer's grace period does not wait for it.")
        self.record("srcu_read_lock", f"enter an SRCU read-side section (idx {idx}); it loads "
                                      f"kvm->memslots: {pins}.{late}", result=idx)

    def srcu_read_unlock(self):
        """``srcu_read_unlock``: leave the section; a waiting writer may go on."""
        self._start()
        vm = self.vm
        if not vm.srcu.inside(self):
            raise StateError(f"{self.name} is not inside an SRCU read-side section; "
                             "call srcu_read_lock first")
        upd = vm.update
        blocked = upd is not None and upd.blocked
        vm.srcu.read_unlock(self)
        self.pinned = self.pinned_sets = self.pinned_gens = self.pinned_edits = self.locked_at = None
        self.seen = {}
        tail = ""
        if blocked and not upd.blocked:
            tail = " It was the last reader the writer waited for: the grace period can end."
        self.record("srcu_read_unlock", f"leave the SRCU read-side section; the sets it loaded may now "
                                        f"be reused or freed.{tail}")

    def set_smm(self, smm=True):
        """Enter or leave SMM (``kvm_smm_changed``): address space 1 or 0.

        >>> from kvmviz import VM
        >>> v = VM().add_vcpu(); v.set_smm(); v.address_space
        1
        >>> v.set_smm("off")
        Traceback (most recent call last):
        ...
        TypeError: set_smm takes True or False, not 'off'
        """
        if not isinstance(smm, bool):
            raise TypeError(f"set_smm takes True or False, not {smm!r}")
        if smm and self.vm.address_spaces == 1:
            raise ValueError(f"this VM has one address space (no SMM): {self.name} cannot enter SMM")
        self._start()
        self.smm = smm
        what = "enters SMM: its lookups use address space 1" if smm else "leaves SMM: back to address space 0"
        self.record("kvm_smm_changed", f"{self.name} {what}.")

    # -- lookups (reference §5.1) ------------------------------------------------------
    def _lookup(self, gfn, as_id):
        """``kvm_vcpu_gfn_to_memslot`` without recording; returns ``(slot, notes)``."""
        slots = self.memslots(as_id)
        slot, notes = (self._lookup_array if self.vm.implementation == "array" else self._lookup_tree)(slots, gfn)
        if slot is not None and self.pinned is not None and _key(slot) not in self.seen:
            self._remember(slot)
        if self.pinned is None:
            notes.append("outside an SRCU read-side section: kernel code must hold kvm->srcu here "
                         "(lockdep would warn); the model reads the active set")
        return slot, notes

    def _lookup_array(self, slots, gfn):
        """5.15: the per-vCPU cache is an array *index*, checked against the current array.

        No generation is involved (reference §6.4): the index is simply tried
        on whatever array the vCPU reads, then ``search_memslots`` runs.
        """
        i, entries = self.last_used_slot, slots.memslots
        if i < len(entries) and ArraySlot(entries[i]).base_gfn <= gfn < ArraySlot(entries[i]).end_gfn:
            return ArraySlot(entries[i]), [f"hit in the vCPU slot-index cache (index {i})"]
        j = slots.search_memslots(gfn)
        if j < 0:
            return None, [f"binary search in {slots.name}: no slot"]
        self.last_used_slot = j
        return ArraySlot(entries[j]), [f"binary search in {slots.name}: index {j}; cached per vCPU"]

    def _lookup_tree(self, slots, gfn):
        """5.17: the per-vCPU slot pointer is valid for one generation only (reference §5.1)."""
        gen, notes = slots.generation, []
        if gen != self.last_used_slot_gen:
            if self.last_used_slot is not None:
                notes.append(f"the vCPU slot cache ({self.last_used_slot.label}, gen "
                             f"{gen_text(self.last_used_slot_gen)}) is stale: the generation is now {gen_text(gen)}, "
                             "so the cached pointer is dropped")
                self.last_used_slot = None
            self.last_used_slot_gen = gen
        cached = self.last_used_slot
        if cached is not None and cached.base_gfn <= gfn < cached.end_gfn:
            notes.append(f"hit in the vCPU slot cache ({cached.label})")
            slot = cached
        else:
            slot = slots.search_memslots(gfn)
            notes.append(f"search_memslots in {slots.name}: " + (slot.label if slot else "no slot")
                         + " (the VM-wide last_used_slot is left alone)")
            if slot is not None:
                self.last_used_slot = slot
        return slot, notes

    def _remember(self, slot):
        """Note a slot pointer this reader now holds (for the reader invariants); O(1)."""
        set_item(self._history, self.seen, _key(slot), (slot, snapshot(slot)))

    def _as(self, as_id):
        return self.address_space if as_id is None else self.vm.check_as_id(as_id)

    def gfn_to_memslot(self, gfn, as_id=None):
        """``kvm_vcpu_gfn_to_memslot``: the slot holding ``gfn``, or None.

        Looks in the pinned set inside a section, the active set outside; uses
        the per-vCPU ``last_used_slot``, dropped whenever the generation it was
        filled under is not the current one. INVALID copies are returned like
        any slot (callers filter them).

        >>> from kvmviz import VM
        >>> vm = VM(); _ = vm.set_user_memory_region(0, 0, 0, 0x1000, 0x100000)
        >>> v = vm.add_vcpu(); v.srcu_read_lock(); v.gfn_to_memslot(0).label, v.gfn_to_memslot(1)
        ('#1', None)
        """
        gfn, as_id = check_number(gfn, "gfn", GFN_LIMIT), self._as(as_id)
        self._start()
        slot, notes = self._lookup(gfn, as_id)
        found = slot.label + (" (INVALID copy)" if slot.invalid else "") if slot else "None"
        self.record("kvm_vcpu_gfn_to_memslot", f"gfn {gfn:#x} in as{as_id} -> {found}; {'; '.join(notes)}.",
                    result=slot)
        return slot

    def access(self, gfn, write=False, as_id=None):
        """A guest access to ``gfn`` that faults into KVM: returns an ``Access``.

        Models the x86 page-fault path: a matching MMIO SPTE short-cuts to MMIO
        emulation (``handle_mmio_page_fault``); a stale one is rejected and the
        slow path looks the slot up and resolves it as ``kvm_faultin_pfn``
        does (``fault_verdict``, reference §2.3, §5.1). A fault with no slot
        fills the MMIO info cache (not while bit 63 is set) and makes an MMIO
        SPTE; a fault on an INVALID slot is retried (``"retry"``, no exit, no
        MMIO SPTE, nothing cached). SPTEs that map memory are not modelled:
        until ``kvm_arch_flush_shadow_memslot`` zaps them, a real guest could
        still reach a slot's memory without faulting.

        >>> from kvmviz import VM
        >>> vm = VM(); _ = vm.set_user_memory_region(0, 2, 0, 0x1000, 0x100000)   # READONLY
        >>> v = vm.add_vcpu(); v.srcu_read_lock()
        >>> v.access(0).reason, hex(v.access(0).hva), v.access(0, write=True).reason, v.access(7).reason
        ('ok', '0x100000', 'readonly', 'no-slot')
        """
        gfn, as_id = check_number(gfn, "gfn", GFN_LIMIT), self._as(as_id)
        if not isinstance(write, bool):
            raise TypeError(f"write must be True or False, not {write!r}")
        self._start()
        gen = self.current_generation(as_id)
        notes = []
        spte = self.vm.mmio_spte(as_id, gfn)
        if spte is not None:
            ok, why = check_mmio_spte(spte, gen)
            if ok:
                notes.append(f"MMIO SPTE for gfn {gfn:#x} is trusted: {why}; no memslot lookup")
                notes.append(self._cache_mmio_info(gfn))
                return self._done(Access(self.name, gfn, write, as_id, spte.reason, gen, path="mmio-spte",
                                         notes=tuple(notes)))
            notes.append(f"stale MMIO SPTE for gfn {gfn:#x} rejected: {why}; take the slow path")
        slot, lookup_notes = self._lookup(gfn, as_id)
        notes += lookup_notes
        gen = self.generation(as_id)
        reason, hva = fault_verdict(slot, gfn, write)
        notes.append(_VERDICT_TEXT[reason])
        if reason == "ok" and write:
            notes.append(mark_page_dirty_in_slot(slot, gfn) or "the slot does not log dirty pages")
        if reason == "no-slot":
            notes.append(self._cache_mmio_info(gfn))
            notes.append(self._make_mmio_spte(as_id, gfn, reason))
        return self._done(Access(self.name, gfn, write, as_id, reason, gen, slot=slot, hva=hva,
                                 notes=tuple(notes)))

    def _done(self, outcome):
        self.record("kvm_mmu_page_fault", f"{outcome}. " + "; ".join(outcome.notes) + ".", result=outcome)
        return outcome

    # -- x86 MMIO caches (reference §3.2, §3.5) -------------------------------------------
    def _make_mmio_spte(self, as_id, gfn, reason):
        """``make_mmio_spte``: keep only the 19 MMIO generation bits."""
        gen = self.current_generation(as_id)
        spte = MmioSpte(as_id, gfn, gen & MMIO_SPTE_GEN_MASK, self.vm.arch.mmu_valid_gen, reason)
        self.vm.set_mmio_spte(spte)
        return (f"make_mmio_spte for gfn {gfn:#x} with MMIO generation {spte.generation:#x} "
                f"(= {gen_text(gen)} & 0x{MMIO_SPTE_GEN_MASK:x}; bit 63 is not stored)")

    def _cache_mmio_info(self, gfn):
        """``vcpu_cache_mmio_info``: refuses while bit 63 is set; returns a note."""
        gen = self.current_generation(0)      # x86 reads address space 0 here
        if gen & IP:
            return (f"vcpu_cache_mmio_info refuses to cache gfn {gfn:#x}: generation {gen_text(gen)} "
                    "has the in-progress bit")
        self.mmio_gfn, self.mmio_gen = gfn, gen
        return f"vcpu_cache_mmio_info caches gfn {gfn:#x} as MMIO under generation {gen_text(gen)}"

    def match_mmio_gfn(self, gfn):
        """``vcpu_match_mmio_gpa``: may the emulator treat ``gfn`` as MMIO from the cache?

        True only if this gfn is cached and its generation equals the current
        one of address space 0 (``vcpu_match_mmio_gen``); a stale entry is
        rejected and the emulator falls back to a memslot lookup.

        >>> from kvmviz import VM
        >>> v = VM().add_vcpu(); v.srcu_read_lock(); _ = v.access(0x10); v.match_mmio_gfn(0x10)
        True
        """
        gfn = check_number(gfn, "gfn", GFN_LIMIT)
        self._start()
        current = self.current_generation(0)
        if self.mmio_gfn != gfn:
            ok, text = False, f"gfn {gfn:#x} is not in the MMIO info cache"
        elif self.mmio_gen != current:
            ok, text = False, (f"stale MMIO info for gfn {gfn:#x} rejected: cached under generation "
                               f"{gen_text(self.mmio_gen)}, now {gen_text(current)}")
        else:
            ok, text = True, f"gfn {gfn:#x} is MMIO per the cache (generation {gen_text(current)} matches)"
        self.record("vcpu_match_mmio_gpa", text + ".", result=ok)
        return ok

    # -- gfn_to_hva_cache --------------------------------------------------------------------
    def gfn_to_hva_cache_init(self, gpa, length):
        """``kvm_gfn_to_hva_cache_init``: a cached gpa -> hva translation; see ``GfnToHvaCache``.

        ``gpa`` and ``length`` are checked first (64-bit unsigned, as in the
        kernel), so a bad one changes nothing.
        """
        gpa, length = check_number(gpa, "gpa", 1 << 64), check_number(length, "len", 1 << 64)
        self._start()
        ghc = GfnToHvaCache(self, gpa, length)
        r, notes = ghc.init()
        self.hva_caches = self.hva_caches + (ghc,)
        self.record("kvm_gfn_to_hva_cache_init", f"gpa {gpa:#x} len {length:#x}: "
                                                 f"{'ok' if not r else result_text(r)}; {'; '.join(notes)}.", result=r)
        return ghc


class GfnToHvaCache(Journaled):
    """``struct gfn_to_hva_cache``: a gpa -> hva translation kept across calls.

    It stores the generation of address space 0 at init, and
    ``read``/``write`` (``kvm_{read,write}_guest_offset_cached``) init it
    again whenever the current generation differs (plain equality, reference
    §3.2). A range that crosses a page boundary keeps ``memslot = None`` and
    uses the slow path.

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.set_user_memory_region(0, 0, 0, 0x2000, 0x100000)
    >>> v = vm.add_vcpu(); ghc = v.gfn_to_hva_cache_init(0x1008, 8)
    >>> hex(ghc.hva), ghc.generation, ghc.read().reason
    ('0x101008', 2, 'ok')
    >>> _ = vm.set_user_memory_region(0, 0, 0, 0, 0)          # DELETE
    >>> r = ghc.read(); r.reason, r.notes[0]
    ('efault', 'stale cache: made under generation 0x2, now 0x6; init again')
    """

    __slots__ = ("vcpu", "gpa", "len", "generation", "hva", "memslot", "inits")

    def __init__(self, vcpu, gpa, length):
        super().__init__(vcpu.vm.history, vcpu=vcpu, gpa=gpa, len=length, generation=None, hva=None,
                         memslot=None, inits=0)

    def init(self):
        """``__kvm_gfn_to_hva_cache_init``: returns ``(0 or -errno, notes)``."""
        slots = self.vcpu.vm.active_set(0)      # kvm_memslots(kvm), read afresh
        self.generation = slots.generation
        self.inits += 1
        self.hva, self.memslot = None, None
        first, last = self.gpa >> PAGE_SHIFT, (self.gpa + self.len - 1) >> PAGE_SHIFT
        if self.len <= 0 or last < first:
            return -errno.EINVAL, ["empty or wrapping range"]
        gfn, hva0, slot0 = first, None, None
        while gfn <= last:
            slot = slots.gfn_to_memslot(gfn)        # __gfn_to_memslot: the VM-wide cache
            reason, hva = gfn_to_hva(slot, gfn, True)
            if reason != "ok":
                return -errno.EFAULT, [f"gfn {gfn:#x}: {reason} (KVM_HVA_ERR_BAD)"]
            if slot0 is None:
                hva0, slot0 = hva, slot
            gfn = slot.end_gfn
        if first == last:
            self.hva, self.memslot = hva0 + (self.gpa & ((1 << PAGE_SHIFT) - 1)), slot0
            return 0, [f"cached hva {self.hva:#x} in {slot0.label} under generation {gen_text(self.generation)}"]
        self.hva = hva0
        return 0, ["the range crosses a page: memslot = NULL, reads and writes use the slow path"]

    def read(self, offset=0, length=None):
        """``kvm_read_guest_offset_cached``: returns an ``Access`` (reason ok/efault/einval)."""
        return self._use(offset, length, write=False)

    def write(self, offset=0, length=None):
        """``kvm_write_guest_offset_cached``: like ``read``; marks the page dirty if logging."""
        return self._use(offset, length, write=True)

    def _use(self, offset, length, write):
        vcpu = self.vcpu
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {offset!r}")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise TypeError(f"length must be an int or None, not {length!r}")
        vcpu._start()
        length = self.len - offset if length is None else length
        gen = vcpu.current_generation(0)
        notes, reason, hva = [], "ok", None
        if offset < 0 or length <= 0 or offset + length > self.len:
            reason = "einval"
            notes.append(f"offset {offset:#x} + len {length:#x} exceeds the cached len {self.len:#x}")
        else:
            if gen != self.generation:
                notes.append(f"stale cache: made under generation {gen_text(self.generation)}, now {gen_text(gen)}; "
                             "init again")
                r, more = self.init()
                notes += more
                if r:
                    reason = "efault"
            if reason == "ok" and self.hva is None:
                reason = "efault"
                notes.append("the cached hva is KVM_HVA_ERR_BAD")
            elif reason == "ok" and self.memslot is None:
                notes.append("slow path: kvm_read_guest/kvm_write_guest look the pages up again")
            elif reason == "ok":
                hva = self.hva + offset
        gfn = (self.gpa + offset) >> PAGE_SHIFT
        if reason == "ok" and write and self.memslot is not None:
            notes.append(mark_page_dirty_in_slot(self.memslot, gfn) or "the slot does not log dirty pages")
        out = Access(vcpu.name, gfn, write, 0, reason, gen, slot=self.memslot, hva=hva,
                     path="gfn_to_hva_cache", notes=tuple(notes))
        fn = "kvm_write_guest_offset_cached" if write else "kvm_read_guest_offset_cached"
        vcpu.record(fn, f"{out}. " + "; ".join(notes) + ("." if notes else ""), result=out)
        return out


def _key(slot):
    # an array-model slot is a fresh view per lookup; its identity is the entry it shows
    return id(getattr(slot, "entry", slot))
