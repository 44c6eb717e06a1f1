"""``struct kvm``: address spaces, active pointers, the ioctl entry points.

Each address space has two ``MemslotSet``s (``__memslots[as][0..1]``) and an
active pointer (``memslots[as]``), starting at set 0 with generation ``as``
(reference §1.4, §1.8). ``set_user_memory_region`` is the ioctl; it runs an
``Update`` of steps produced by the implementation (``protocol.py``).

>>> vm = VM()
>>> steps = vm.set_user_memory_region(0, 0, 0x0, 0x100000, 0x7f0000000000)
>>> vm.generation(0), vm.generation(1), [s.label for s in vm.memslots(0)]
(2, 1, ['#1'])
>>> vm.gfn_to_memslot(0x80).label
'#1'
>>> vm.set_user_memory_region(2, 0, 0x80000, 0x1000, 0x7f0000000000)
Traceback (most recent call last):
...
kvmviz.engine.errors.KvmError: [Errno 17] EEXIST: gfns 0x80..0x80 overlap slot 0 (#1, gfns 0x0..0xff) (slot 2, as 0) (reference §4.2#17)
"""

import errno
from collections import Counter
from typing import NamedTuple

from .arch import X86Arch
from .constants import GFN_LIMIT, PAGE_SHIFT, PAGE_SIZE, U64_MAX
from .dirty_log import get_dirty_log
from .history import EPOCH, History, Journaled, StateError, append_item, set_item, watched
from .errors import KvmError, ModelBug
from .guest_memfd import create_guest_memfd
from .kernels import KERNELS, has, kernel_for
from .memslot import Allocation, Memslot
from .tree.memslots import MemslotSet
from .numbers import check_number
from .events import ReaderAction
from .srcu import Srcu
from .step import Update, moved_counters
from .tree.protocol import MergedProtocol
from .array.protocol import ArrayProtocol
from .array.memslots import initial_sets
from .variant import make_protocol, resolve
from .vcpu import Vcpu
from .validate import NONE, check_ioctl, check_memory_region, make_region

#: gfns are 64-bit guest physical addresses shifted by PAGE_SHIFT


class VM(Journaled):
    """A VM's memslot state (x86: two address spaces, 32764 user slots).

    ``kernel`` picks the modelled version (``kvmviz.KERNELS``: "5.15" is the
    array design, "5.17" and "6.12" the trees); ``implementation="array"`` is
    an alias of ``kernel="5.15"``. ``variant`` is an algorithm variant (see
    ``kvmviz.variants``); ``history`` turns the undo/redo journal on or off.

    Knobs a real host decides: ``address_spaces`` (1 or 2:
    ``kvm_arch_nr_memslot_as_ids``; 1 on kernels without SMM, where as_id 1
    is -EINVAL and each swap adds 1 to the generation) and ``max_gfn`` (the
    x86 ``kvm_mmu_max_gfn()`` that 6.x checks at prepare; versions without
    that check refuse the knob). ``kvmviz.host.model_for_host()`` sets them.
    6.12 only: ``private_mem`` (``kvm_arch_has_private_mem``: a VM with
    private memory, 6.12's KVM_X86_SW_PROTECTED_VM, accepts GUEST_MEMFD
    slots and has one address space) and ``slot_zap_all`` (the
    ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` quirk, on by default: a DELETE or MOVE
    zaps every shadow page; off, or on a private-memory VM, only the slot's).

    With ``implementation="array"`` (5.10-5.15, reference §6) ``sets[as_id]``
    is ``(active, inactive view)`` of ``ArrayMemslots`` structures and
    ``active_idx`` stays 0: the inactive view is the scratch copy made by
    ``kvm_dup_memslots`` while an update runs (then the structure that
    ``install_new_memslots`` replaced, until it is freed or reused), and the
    active structure itself at rest, since no second structure exists then.
    So ``active_set``, ``inactive_set``, ``memslots(which=...)``,
    ``generation(s)`` and the lookups work unchanged for both designs.
    """

    __slots__ = ("history", "cost", "_sets", "_active_idx", "nr_memslot_pages", "locks",
                 "mn_active_invalidate_count", "_mn", "swaps", "uid", "alloc_seq",
                 "in_place_writes", "arch", "srcu", "vcpus", "protocol", "update",
                 "implementation", "variant", "calls", "ulong_max", "changing", "_mmio",
                 "kernel", "address_spaces", "max_gfn", "unpublished", "private_mem", "slot_zap_all", "gmem_files",
                 "nr_memslots_dirty_logging", "writer_slots", "_gens_epoch", "_gens")
    #: ``__memslots[as_id]``: per address space the pair of sets (``watched``: ``generations`` caches on it).
    sets = watched("sets")
    #: ``kvm->memslots[as_id]`` as the index of the active set in ``sets[as_id]``.
    active_idx = watched("active_idx")

    def __init__(self, implementation=None, variant="merged", *, kernel=None, address_spaces=None,
                 max_gfn=None, private_mem=False, slot_zap_all=True, history=True):
        k = kernel_for(kernel, implementation)
        _check_612_knobs(k, private_mem, slot_zap_all)
        n = _address_spaces(k, address_spaces, private_mem)
        h = History(enabled=history)
        cost = Counter()
        super().__init__(h, history=h, cost=cost, active_idx=(0,) * n,
                         nr_memslot_pages=0, locks=frozenset(), mn_active_invalidate_count=0,
                         _mn={}, swaps=(0,) * n, uid=0, alloc_seq=0,
                         in_place_writes=(), vcpus=[], update=None, calls=0, changing=None, _mmio={},
                         implementation=k.implementation, variant=_variant_name(variant), ulong_max=U64_MAX,
                         kernel=k.name, address_spaces=n, max_gfn=_max_gfn(k, max_gfn),
                         private_mem=private_mem, slot_zap_all=slot_zap_all, gmem_files={},
                         nr_memslots_dirty_logging=0, writer_slots=(0, 0, ()))
        object.__setattr__(self, "sets", _make_sets(h, k.implementation, cost, n))
        object.__setattr__(self, "unpublished", (None,) * n)
        object.__setattr__(self, "_gens_epoch", None)
        object.__setattr__(self, "_gens", None)
        object.__setattr__(self, "arch", X86Arch(h, self))
        object.__setattr__(self, "srcu", Srcu(h))
        object.__setattr__(self, "protocol", _make_protocol(self, k.implementation, variant))
        h.on_truncate.append(self._abandon_update)

    # -- sets and generations -------------------------------------------------
    def active_set(self, as_id=0):
        """``kvm->memslots[as_id]``: the set readers see."""
        return self.sets[as_id][self.active_idx[as_id]]

    def inactive_set(self, as_id=0):
        """``kvm_get_inactive_memslots``: the set writers edit."""
        return self.sets[as_id][self.active_idx[as_id] ^ 1]

    def generation(self, as_id=0):
        """The active set's generation (bit 63 set while a swap is in progress)."""
        return self.active_set(self.check_as_id(as_id)).generation

    def check_as_id(self, as_id):
        """``as_id`` if this VM has that address space, else ``ValueError``/``TypeError``.

        >>> VM().check_as_id(-1)
        Traceback (most recent call last):
        ...
        ValueError: as_id: -1 is negative
        """
        return check_number(as_id, "as_id", self.address_spaces,
                            f" (this VM has {self.address_spaces} address space{'s' * (self.address_spaces > 1)})")

    def generations(self):
        """Per address space ``(set0.generation, set1.generation, active node_idx)``.

        Every recorded step keeps one, and the generations change only at
        swaps: the last result is kept (a cache, not state) until a
        generation, a set or an active pointer is stored, by a call or by
        an undo or redo (``EPOCH``), and a new result keeps the inner tuple
        of each address space that did not change.
        """
        if self._gens_epoch == EPOCH.n:
            return self._gens
        prev = self._gens or ()
        gens = tuple(_same_or_new(prev[a] if a < len(prev) else None, pair, active)
                     for a, (pair, active) in enumerate(zip(self.sets, self.active_idx)))
        object.__setattr__(self, "_gens", prev if gens == prev else gens)
        object.__setattr__(self, "_gens_epoch", EPOCH.n)
        return self._gens

    def memslots(self, as_id=0, which="active"):
        """Slots of the active or inactive set of ``as_id``, sorted by base_gfn."""
        if which not in ("active", "inactive"):
            raise ValueError(f"which must be 'active' or 'inactive', not {which!r}")
        return (self.active_set if which == "active" else self.inactive_set)(self.check_as_id(as_id)).slots()

    def gfn_to_memslot(self, gfn, as_id=0):
        """``__gfn_to_memslot`` on the active set: the slot holding ``gfn`` or None."""
        return self.active_set(self.check_as_id(as_id)).gfn_to_memslot(check_number(gfn, "gfn", GFN_LIMIT))

    def id_to_memslot(self, id, as_id=0):
        """``id_to_memslot`` on the active set."""
        return self.active_set(self.check_as_id(as_id)).id_to_memslot(check_number(id, "slot id", 1 << 32))

    def hva_to_memslots(self, hva_start, hva_end, as_id=0):
        """Slots of the active set whose hva range meets ``[hva_start, hva_end)``."""
        return self.active_set(as_id).iter_hva_range(hva_start, hva_end - 1)

    # -- the ioctl -------------------------------------------------------------
    def begin_set_user_memory_region(self, slot, flags, guest_phys_addr, memory_size,
                                     userspace_addr, fail_prepare=False):
        """Start ``KVM_SET_USER_MEMORY_REGION``; returns an ``Update`` to iterate.

        Kernel errors become the final step (``upd.result = -errno``); a value
        that does not fit its C field raises ``ValueError`` at once.
        """
        region = make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        return self._begin(region, fail_prepare)

    def begin_set_user_memory_region2(self, slot, flags, guest_phys_addr, memory_size, userspace_addr,
                                      guest_memfd=0, guest_memfd_offset=0, fail_prepare=False):
        """Start ``KVM_SET_USER_MEMORY_REGION2`` (6.8+): also a guest_memfd and its offset."""
        region = make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr,
                             guest_memfd_offset, guest_memfd, v2=True)
        return self._begin(region, fail_prepare)

    def _begin(self, region, fail_prepare, whole=False):
        """Checks that change nothing, then the ``Update``; ``whole``: the call runs to its end.

        A call run to its end is refused before anything changes (history
        included) when validation fails (``KvmError``) or when a reader would
        block its swap (``StateError``): the one-call API cannot wait.
        """
        fail = fail_errno(fail_prepare)
        self._check_idle()
        checked = self._refuse_early(region, fail) if whole else None
        self.history.truncate()
        upd = Update(self, region, lambda u: self.protocol.run(u, region, fail), checked)
        object.__setattr__(self, "update", upd)
        return upd

    def _check_idle(self):
        """Refuse a new call inside a stepped-back update or while one runs (``StateError``)."""
        self.guard("a new KVM_SET_USER_MEMORY_REGION")
        if self.update is not None and self.history.at_frontier:
            raise StateError(f"update {self.update.call} is still running (slots_lock is held); "
                             "finish it first")

    def set_user_memory_region(self, slot, flags, guest_phys_addr, memory_size, userspace_addr,
                               fail_prepare=False):
        """Run ``KVM_SET_USER_MEMORY_REGION`` to the end; returns its steps.

        Raises ``KvmError`` (an ``OSError`` with the kernel's errno) when the
        call fails; the VM is then as the kernel leaves it (unchanged, except
        that a DELETE/MOVE whose prepare failed swapped twice).
        """
        region = make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        return self._finish(self._begin(region, fail_prepare, whole=True))

    def set_user_memory_region2(self, slot, flags, guest_phys_addr, memory_size, userspace_addr,
                                guest_memfd=0, guest_memfd_offset=0, fail_prepare=False):
        """Run ``KVM_SET_USER_MEMORY_REGION2`` to the end; returns its steps (6.12).

        >>> vm = VM(kernel="6.12", private_mem=True); fd = vm.create_guest_memfd(0x2000)
        >>> _ = vm.set_user_memory_region2(1, 4, 0x100000, 0x2000, 0x7f0000000000, fd, 0)
        >>> vm.gmem_files[fd].bindings, vm.memslots()[0].gmem
        (((0, 2, '#1'),), (3, 0))
        """
        region = make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr,
                             guest_memfd_offset, guest_memfd, v2=True)
        return self._finish(self._begin(region, fail_prepare, whole=True))

    def dry_run(self, slot, flags, guest_phys_addr, memory_size, userspace_addr, fail_prepare=False,
                until=None, guest_memfd=None, guest_memfd_offset=0):
        """A preview: the steps the call would take now; the VM and its history stay exactly as they were.

        The call runs as ``begin_set_user_memory_region`` would (``_region2``
        when ``guest_memfd`` is given) up to ``until`` (as in
        ``Update.run_until``), its end, or a wait on a reader; then
        everything is undone: state, history (events ahead of a stepped-back
        cursor included), cost counters, the call serial, the running update
        and its protocol. A refusal is the first step's ``error``; a value no
        C caller could pass raises ``ValueError`` as ``begin`` does.

        >>> vm = VM(); steps = vm.dry_run(1, 0, 0, 0x1000, 0x10000)
        >>> steps[0].change, steps[-1].result, len(vm.history), vm.memslots(0), dict(vm.cost)
        ('CREATE', 0, 0, [], {})
        >>> vm.dry_run(1, 0, 0x1001, 0x1000, 0x10000)[0].error.errname
        'EINVAL'
        """
        v2 = guest_memfd is not None
        region = make_region(slot, flags, guest_phys_addr, memory_size, userspace_addr,
                             guest_memfd_offset, guest_memfd or 0, v2=v2)
        self._check_idle()
        saved = self.calls, self.update, dict(vars(self.protocol))
        with self.uncounted(), self.history.preview():
            try:
                object.__setattr__(self, "update", None)    # as begin abandons an update ahead of the cursor
                return self._begin(region, fail_prepare).run_until(until)
            finally:
                object.__setattr__(self, "calls", saved[0])
                object.__setattr__(self, "update", saved[1])
                vars(self.protocol).clear()
                vars(self.protocol).update(saved[2])

    def uncounted(self):
        """Work done inside the ``with`` block is not charged to ``vm.cost`` (a look, not the model's work).

        The ``as`` target is a dict that holds, after the block, what the
        block would have counted.

        >>> vm = VM()
        >>> with vm.uncounted():
        ...     vm.id_to_memslot(1)
        >>> dict(vm.cost)
        {}
        """
        return _Uncounted(self.cost)

    def create_guest_memfd(self, size, flags=0):
        """``KVM_CREATE_GUEST_MEMFD`` (6.8+): the new file's fd (``kvmviz.engine.guest_memfd``)."""
        if not has(self.kernel, "guest_memfd"):
            raise KvmError(errno.ENOTTY, f"KVM_CREATE_GUEST_MEMFD does not exist in {self.kernel} (added in 6.8)")
        return create_guest_memfd(self, size, flags)

    def _refuse_early(self, region, fail):
        """Raise what the call would fail with before changing anything, if anything; else ``Checked``.

        Runs the checks of ``__kvm_set_memory_region`` on the state as it is
        (they only read it), then asks the protocol who would block a swap. A
        call that would fail its prepare before the first swap is refused too
        while a reader blocks. The plan and the lookups the checks counted go
        to the protocol, which counts them once, where the kernel checks.
        """
        with self.uncounted() as counted:
            check_ioctl(region, self.kernel)
            plan = check_memory_region(self, region)
        blockers = self.protocol.swap_blockers() if plan.change != NONE else ()
        if blockers:
            raise StateError(f"this {plan.change} would be blocked at its swap ({'; '.join(blockers)}); nothing "
                             "was changed. Let the readers go on first, or step the call with "
                             "begin_set_user_memory_region while they act")
        return Checked(plan, counted)

    def _finish(self, upd):
        upd.run()
        if upd.error is not None:
            raise upd.error
        return upd.steps

    def get_dirty_log(self, slot):
        """``KVM_GET_DIRTY_LOG``: the dirty page indexes of ``slot``, then cleared (``kvmviz.engine.dirty_log``)."""
        return get_dirty_log(self, slot)

    def end_update(self, upd):
        """Called by ``Update`` after its last step."""
        object.__setattr__(self, "update", None)

    def next_call(self):
        """Serial number for a new update."""
        object.__setattr__(self, "calls", self.calls + 1)
        return self.calls

    def record(self, event):
        """Record a step or reader action in the history."""
        event.index = self.history.record(event)

    def rewind(self, n):
        """Go back to the state after ``n`` history events and forget the rest; the running update goes on.

        For explorers that try reader actions one by one from the same state
        (``kvmviz.check``): only reader actions may lie after event ``n``,
        since the writer's steps come from a generator that cannot go back
        (``StateError`` otherwise, nothing changed).

        >>> vm = VM(); v = vm.add_vcpu(); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
        >>> _ = next(upd); n = len(vm.history); v.srcu_read_lock(); vm.rewind(n)
        >>> v.inside, len(vm.history) == n, vm.update is upd
        (False, True, True)
        >>> vm.rewind(0)
        Traceback (most recent call last):
        ...
        kvmviz.engine.history.StateError: rewind to event 0: event 2 is a writer step (__kvm_set_memory_region), and a writer cannot go back
        """
        h = self.history
        step = next((e for e in h.events[n:] if e.stage != "reader"), None)
        if step is not None:
            raise StateError(f"rewind to event {n}: event {step.index + 1} is a writer step ({step.function}), "
                             "and a writer cannot go back")
        h.goto(n)
        h.truncate(notify=False)

    def _abandon_update(self):
        if self.update is not None:
            self.update.abandoned = True
            object.__setattr__(self, "update", None)

    def guard(self, what):
        """Refuse ``what`` (``StateError``) if it would cut the history inside an update.

        After ``history.back()`` into the middle of an update, its locks are
        held and its remaining steps exist only ahead in the history; a new
        action there would discard them and leave the update half done. Going
        forward to its end, or back before it, is always possible.

        >>> vm = VM(); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x100000)
        >>> _ = [next(upd) for _ in range(3)]; _ = vm.history.back()
        >>> vm.add_vcpu()
        Traceback (most recent call last):
        ...
        kvmviz.engine.history.StateError: add_vcpu: the VM was stepped back into the middle of an update (update 1, slots_lock held); step forward to its end (history.goto(len(history))) or back before it first
        """
        h = self.history
        if h.at_frontier or not (self.locks or self.changing is not None):
            return
        call = next((h.events[k].call for k in range(h.cursor - 1, -1, -1) if h.events[k].call), "?")
        held = ", ".join(sorted(self.locks)) or "no lock"
        raise StateError(f"{what}: the VM was stepped back into the middle of an update (update {call}, {held} held); step "
                         "forward to its end (history.goto(len(history))) or back before it first")

    # -- state primitives used by the protocol -------------------------------------
    def lock(self, name):
        """Take a mutex (recorded in each step's ``locks``)."""
        if name in self.locks:
            raise ModelBug(f"BUG: {name} is already held: self-deadlock")
        self.locks = _lock_change(self.locks, name, True)

    def unlock(self, name):
        """Release a mutex."""
        if name not in self.locks:
            raise ModelBug(f"BUG: {name} released while not held")
        self.locks = _lock_change(self.locks, name, False)

    def publish(self, as_id, node_idx):
        """``rcu_assign_pointer(kvm->memslots[as_id], ...)``; counts swaps."""
        self.active_idx = _intern(_with(self.active_idx, as_id, node_idx))
        self.swaps = _with(self.swaps, as_id, self.swaps[as_id] + 1)

    def note_unpublished(self, as_id, old_active, gp):
        """``old_active`` stopped being the active set of ``as_id`` at grace period ``gp``.

        Kept with the set's edit count, for the grace-period invariant: until
        the writer has waited for ``gp``, the set must not be written or freed.
        """
        self.unpublished = _with(self.unpublished, as_id, (old_active, gp, getattr(old_active, "edits", 0)))

    def alloc_memslot(self, plan=None):
        """``kzalloc`` a slot struct, filled from ``plan`` if given."""
        self.uid += 1
        self.cost["slots_allocated"] += 1
        if plan is None:
            slot = Memslot(self.history, uid=self.uid, owner=self)
        else:
            slot = Memslot(self.history, uid=self.uid, owner=self, id=plan.id, as_id=plan.as_id,
                           base_gfn=plan.base_gfn, npages=plan.npages, flags=plan.flags,
                           userspace_addr=plan.userspace_addr)
        call, as_id, held = self.writer_slots
        if call != self.calls:
            as_id, held = (self.changing or (0,))[0], ()
        self.writer_slots = (self.calls, as_id, held + (slot,))
        return slot

    def unlinked_slots(self, as_id=0):
        """Slot structs the running call allocated that no set of ``as_id`` holds yet (and not freed).

        ``new`` of ``__kvm_set_memory_region`` and ``invalid_slot`` of
        ``kvm_set_memslot`` live on the writer's stack until
        ``kvm_replace_memslot`` links them (reference §2.2); pictures draw them
        beside the sets. Kept per call in the journaled ``writer_slots``, so
        stepping back shows them again.

        >>> vm = VM(); upd = vm.begin_set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
        >>> _ = next(upd), next(upd); [s.label for s in vm.unlinked_slots()]
        ['#1']
        >>> _ = upd.run(); vm.unlinked_slots()
        []
        """
        _call, held_as, held = self.writer_slots
        if held_as != as_id or self.implementation != "tree":
            return []
        linked = {s.uid for st in self.sets[as_id] for s in st.slots()}
        return [s for s in held if s.uid not in linked and not s.freed]

    def alloc(self, kind, nbytes):
        """Allocate a dirty bitmap or arch metadata (``Allocation``)."""
        self.alloc_seq += 1
        prefix = {"dirty_bitmap": "bm", "arch": "arch"}[kind]
        return Allocation(self.history, label=f"{prefix}{self.alloc_seq}", kind=kind, nbytes=nbytes)

    def free(self, obj):
        """``kfree``: mark ``obj`` freed; the checker reports it if still reachable."""
        if obj.freed:
            raise ModelBug(f"BUG: double free of {obj.label}")
        obj.freed = True

    # -- what readers can see, for the in-place-write check ------------------------
    def visible_nodes(self, as_id):
        """Bit mask of the sets of ``as_id`` that readers can reach now.

        The active set, plus every set an SRCU reader pinned and still holds
        (it may be the old active set while a grace period runs).
        """
        mask = 1 << self.active_idx[as_id]
        for vcpu in self.vcpus:
            if vcpu.pinned is not None:
                mask |= 1 << vcpu.pinned[as_id]
        return mask

    # -- vCPUs (reference §1.4, §5.1) ---------------------------------------------
    def add_vcpu(self):
        """``KVM_CREATE_VCPU``: a new vCPU, an SRCU reader of the memslots.

        >>> vm = VM(); vm.add_vcpu(), vm.add_vcpu().vcpu_id, len(vm.vcpus)
        (vcpu0, 1, 2)
        """
        self.guard("add_vcpu")
        vcpu = Vcpu(self, len(self.vcpus))
        append_item(self.history, self.vcpus, vcpu)
        vcpu.record("kvm_vm_ioctl_create_vcpu", f"create {vcpu.name}: outside any SRCU read-side "
                                                "section, empty slot cache, not in SMM.")
        return vcpu

    def note_in_place_write(self, slot, name, old, new):
        """Record a write to a slot that readers can reach (invariant 1)."""
        self.in_place_writes = self.in_place_writes + ((slot.as_id, slot.label, name, old, new, len(self.history)),)

    # -- MMU notifier (reference §5.3) ----------------------------------------------
    def mmu_notifier_invalidate_range_start(self, hva_start, hva_end):
        """Begin an invalidation of ``[hva_start, hva_end)``: a swap now waits.

        Returns the ``(as_id, slot, gfn_start, gfn_end)`` ranges hit. The
        range must be ``0 <= hva_start < hva_end <= 2**64``.
        """
        key = self._hva_range(hva_start, hva_end)
        self.guard("mmu_notifier_invalidate_range_start")
        self.mn_active_invalidate_count += 1
        set_item(self.history, self._mn, key, self._mn.get(key, 0) + 1)
        hits = self.hva_range_hits(hva_start, hva_end)
        self._record_notifier("kvm_mmu_notifier_invalidate_range_start", hva_start, hva_end, hits,
                              "mn_active_invalidate_count++: a memslot swap now waits before publishing")
        return hits

    def mmu_notifier_invalidate_range_end(self, hva_start, hva_end):
        """End an invalidation; a waiting swap may go on when none is left."""
        key = self._hva_range(hva_start, hva_end)
        if not self._mn.get(key):
            raise StateError(f"no invalidation of {hva_start:#x}..{hva_end:#x} is in progress")
        self.guard("mmu_notifier_invalidate_range_end")
        set_item(self.history, self._mn, key, self._mn[key] - 1)
        self.mn_active_invalidate_count -= 1
        hits = self.hva_range_hits(hva_start, hva_end)
        self._record_notifier("kvm_mmu_notifier_invalidate_range_end", hva_start, hva_end, hits,
                              f"mn_active_invalidate_count-- (now {self.mn_active_invalidate_count})"
                              + ("" if self.mn_active_invalidate_count else
                                 ": a waiting memslot swap may publish"))
        return hits

    @property
    def mn_ranges(self):
        """The invalidations in progress, ``(hva_start, hva_end)`` each, in the order the ranges first ran.

        Ranges that ended keep their key at count 0: deleting a key and
        undoing that would move it to the end, and history must be exact.
        """
        return tuple(key for key, count in self._mn.items() for _ in range(count))

    @staticmethod
    def _hva_range(hva_start, hva_end):
        start = check_number(hva_start, "hva_start", 1 << 64)
        end = check_number(hva_end, "hva_end", (1 << 64) + 1)
        if end <= start:
            raise ValueError(f"hva_end {end:#x} must be above hva_start {start:#x}")
        return start, end

    # -- x86 MMIO SPTEs (reference §3.2, §3.5), one per (as_id, gfn) ----------------------
    @property
    def mmio_sptes(self):
        """The MMIO SPTEs that are not obsolete (made under the current ``mmu_valid_gen``)."""
        valid = self.arch.mmu_valid_gen
        return tuple(s for s in self._mmio.values() if s.mmu_valid_gen == valid)

    def mmio_spte(self, as_id, gfn):
        """The usable MMIO SPTE of ``gfn`` in ``as_id``, or None (O(1))."""
        spte = self._mmio.get((as_id, gfn))
        return spte if spte is not None and spte.mmu_valid_gen == self.arch.mmu_valid_gen else None

    def set_mmio_spte(self, spte):
        """Install ``spte`` for its gfn, replacing the previous one (O(1))."""
        set_item(self.history, self._mmio, (spte.as_id, spte.gfn), spte)

    def _record_notifier(self, function, hva_start, hva_end, hits, what):
        where = "; ".join(map(str, hits)) or "no memslot"
        self.record(ReaderAction("mmu_notifier", function,
                                 f"hva {hva_start:#x}..{hva_end - 1:#x}: {what}. Hits: {where}.",
                                 result=tuple(hits), gens=self.generations()))

    def hva_range_hits(self, hva_start, hva_end):
        """``__kvm_handle_hva_range``: clip ``[start, end)`` to each slot, in gfns.

        Walks the hva tree of each address space's active set (the MMU
        notifier is an SRCU reader, reference §5.3). INVALID copies are in
        that tree too, so an invalidation in the DELETE/MOVE window hits the
        INVALID copy (``hit.invalid``).
        """
        hits = []
        for as_id in range(self.address_spaces):
            for slot in self.active_set(as_id).iter_hva_range(hva_start, hva_end - 1):
                first = max(hva_start, slot.userspace_addr)
                end = min(hva_end, slot.hva_last + 1)
                gfn_start = slot.base_gfn + ((first - slot.userspace_addr) >> PAGE_SHIFT)
                gfn_end = slot.base_gfn + ((end - slot.userspace_addr + PAGE_SIZE - 1) >> PAGE_SHIFT)
                hits.append(HvaHit(as_id, slot, gfn_start, gfn_end))
        return hits

    def __repr__(self):
        gens = ", ".join(f"as{a}: gen {self.generation(a):#x}, {len(self.active_set(a))} slots"
                         for a in range(self.address_spaces))
        return f"<VM {self.kernel} {self.implementation}/{self.variant}: {gens}>"


class _Uncounted:
    """``VM.uncounted``'s context: restores the counters on exit, keeping what moved in ``counted``."""

    __slots__ = ("cost", "saved", "counted")

    def __init__(self, cost):
        self.cost, self.saved, self.counted = cost, dict(cost), {}

    def __enter__(self):
        return self.counted

    def __exit__(self, *exc):
        cost, saved = self.cost, self.saved
        moved = moved_counters(saved, cost)
        self.counted.update(moved)
        for k, _ in moved:                  # put back only what moved (a look moves one or two counters)
            if k in saved:
                cost[k] = saved[k]
            else:
                del cost[k]
        if len(cost) != len(saved):
            cost.clear()
            dict.update(cost, saved)


class Checked(NamedTuple):
    """A call's checks, done before it started: its ``Plan`` and the cost counters they moved."""

    plan: object
    counted: dict


class HvaHit(NamedTuple):
    """One slot an hva-range walk hits: ``struct kvm_gfn_range`` (reference §5.3).

    >>> from kvmviz.engine.memslot import Memslot
    >>> hit = HvaHit(0, Memslot(uid=3, id=1, base_gfn=0x100, npages=4), 0x101, 0x103)
    >>> str(hit), hit.invalid
    ('as0 #3 (id 1) gfn 0x101..0x102', False)
    """

    as_id: int
    slot: object
    gfn_start: int
    gfn_end: int

    @property
    def invalid(self):
        """True when the walk hit the INVALID copy of a slot being deleted or moved."""
        return self.slot.invalid

    def __str__(self):
        tag = " INVALID" if self.invalid else ""
        return (f"as{self.as_id} {self.slot.label} (id {self.slot.id}{tag}) "
                f"gfn {self.gfn_start:#x}..{self.gfn_end - 1:#x}")


_INTERNED = {}


def _intern(value):
    """One shared object per distinct value (lock sets, generation tuples), so history keeps few."""
    if len(_INTERNED) > 4096:
        _INTERNED.clear()
    return _INTERNED.setdefault(value, value)


_LOCK_CHANGES = {}


def _lock_change(locks, name, take):
    """``locks`` with ``name`` taken or released: one shared set per result (few lock sets exist)."""
    key = (locks, name, take)
    new = _LOCK_CHANGES.get(key)
    if new is None:
        new = _LOCK_CHANGES[key] = _intern(locks | {name} if take else locks - {name})
    return new


def _same_or_new(prev, pair, active):
    gens = (pair[0].generation, pair[1].generation, active)
    return prev if gens == prev else gens


def _with(tup, i, value):
    return tup[:i] + (value,) + tup[i + 1:]


def fail_errno(fail_prepare):
    """The errno a ``fail_prepare`` argument injects: True is ``ENOMEM``, False/None/0 none.

    >>> fail_errno(True), fail_errno(False), fail_errno(22)
    (12, 0, 22)
    """
    if fail_prepare is True:
        return errno.ENOMEM
    if fail_prepare is False or fail_prepare is None or fail_prepare == 0:
        return 0
    if isinstance(fail_prepare, int) and fail_prepare > 0 and fail_prepare in errno.errorcode:
        return fail_prepare
    raise ValueError(f"fail_prepare must be True/False or a positive errno, not {fail_prepare!r}")


def _check_612_knobs(kernel, private_mem, slot_zap_all):
    for name, value, default in (("private_mem", private_mem, False), ("slot_zap_all", slot_zap_all, True)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, not {value!r}")
        if value != default and not has(kernel.name, "guest_memfd"):
            raise ValueError(f"{name}={value} is a 6.12 knob; kernel {kernel.name} has no such choice")


def _address_spaces(kernel, n, private_mem):
    if n is None:
        return 1 if private_mem else kernel.address_spaces
    if type(n) is not int or n not in (1, 2):
        raise ValueError(f"address_spaces must be 1 (no SMM) or 2 (x86 with SMM), not {n!r}")
    if n != kernel.address_spaces and not has(kernel.name, "as_ids_per_vm"):
        raise ValueError(f"x86 {kernel.name} always has {kernel.address_spaces} memslot address spaces "
                         "(KVM_ADDRESS_SPACE_NUM; a kernel without SMM, CONFIG_KVM_SMM, exists from 6.2)")
    if private_mem and n != 1:
        raise ValueError("a VM with private memory has one memslot address space (kvm_arch_nr_memslot_as_ids)")
    return n


def _max_gfn(kernel, max_gfn):
    if max_gfn is None:
        return kernel.default_max_gfn
    if not kernel.max_gfn_check:
        raise ValueError(f"kernel {kernel.name} has no max-gfn check at prepare; max_gfn applies to "
                         f"{', '.join(k.name for k in KERNELS.values() if k.max_gfn_check)}")
    if isinstance(max_gfn, bool) or not isinstance(max_gfn, int) or not 0 < max_gfn < 1 << 52:
        raise ValueError(f"max_gfn must be a positive gfn below 2**52, not {max_gfn!r}")
    return max_gfn


def _make_sets(h, implementation, cost, n):
    if implementation == "array":
        return initial_sets(h, cost, n)
    return tuple(tuple(MemslotSet(h, as_id=a, node_idx=j, cost=cost) for j in (0, 1))
                 for a in range(n))


def _variant_name(variant):
    return variant if isinstance(variant, str) else resolve(variant).name


def _make_protocol(vm, implementation, variant):
    if implementation == "array":
        if variant not in ("merged", MergedProtocol):
            raise ValueError(f"variant {variant!r} is a change to the tree (5.17) protocol; "
                             "use implementation='tree'")
        return ArrayProtocol(vm)
    return make_protocol(vm, variant)
