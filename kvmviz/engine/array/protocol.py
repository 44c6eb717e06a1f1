"""``kvm_set_memslot`` of Linux 5.15 (array memslots) as step generators (reference §6.3).

``ArrayProtocol`` subclasses ``MergedProtocol``: it keeps the ioctl and
validation (``run``), the step machinery, the swap (5.15's
``install_new_memslots`` does the same generation arithmetic, waits for
MMU-notifier invalidations and drops ``slots_arch_lock`` before the grace
period, reference §2.1, §6.3) and the commit hooks, and replaces the memslot
bookkeeping: one duplication of the whole structure per update, a second copy
for DELETE/MOVE, ``update_memslots`` shifting, revert by clearing INVALID.

Validation is shared with the tree model and runs the checks in 5.17 order
(reference §4.2). 5.15 has no ``nr_memslot_pages`` (the model leaves it at 0),
so the accounting checks of 5.17 are absent: no -EIO on DELETE (check 11) and
no wrap on CREATE (check 14 can never fire at 0); the ``npages`` limit sits
elsewhere, which no errno shows. The x86 arch hooks are those of ``arch.py``,
whose commit recomputes the MMU page budget on every change in 5.15.

The model follows 5.15.y stable (reference [A15], 5.15.85), not the v5.15 tag,
where a stable fix differs: ``old`` and ``new.arch`` are copied from the
structure after ``slots_arch_lock`` is taken again, and the flush is followed
by ``kvm_arch_guest_memory_reclaimed``.

>>> from kvmviz import VM
>>> vm = VM(implementation="array")
>>> steps = vm.set_user_memory_region(1, 0, 0x100000, 0x10000, 0x7f0000000000)
>>> [s.function for s in steps if s.stage == "replace"], vm.generation(0)
(['update_memslots'], 2)
>>> steps[2].cost["bytes_copied"]          # kvm_dup_memslots of the empty structure
65552
"""

from ..constants import KVM_MEMSLOT_INVALID, SIZEOF_KVM_MEMORY_SLOT
from .memslots import FLAGS, UID, ArraySlot, kvm_memslots_size, new_entry
from ..fmt import gen_text
from ..tree.protocol import SAL, MergedProtocol, _label
from ..validate import CREATE, DELETE, FLAGS_ONLY, MOVE


class ArrayProtocol(MergedProtocol):
    """The memslot update of Linux 5.15: array structure, copy, shift, install.

    >>> from kvmviz import VM
    >>> vm = VM(implementation="array")
    >>> _ = vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0x7f0000000000)
    >>> steps = vm.set_user_memory_region(1, 0, 0, 0, 0)           # DELETE
    >>> [s.function for s in steps if s.function in ("kvm_dup_memslots", "kvm_copy_memslots")]
    ['kvm_dup_memslots', 'kvm_copy_memslots']
    >>> [s.function for s in steps].count("rcu_assign_pointer"), vm.generation(0)
    (2, 6)
    """

    name = "array"
    swap_function = "install_new_memslots"
    old = None             # the validated old slot of the running call (for ``drop_new``)

    # -- __kvm_set_memory_region ------------------------------------------------
    def new_memslot(self, plan):
        """5.15 ``__kvm_set_memory_region``: ``new`` is a struct on the stack.

        It starts with ``old``'s dirty bitmap; then the bitmap rules run here,
        before ``kvm_set_memslot`` (5.17 moved them into prepare).
        """
        vm = self.vm
        vm.uid += 1
        self.old = plan.old
        new = ArraySlot(new_entry(uid=vm.uid, id=plan.id, as_id=plan.as_id, base_gfn=plan.base_gfn,
                                  npages=plan.npages, flags=plan.flags, userspace_addr=plan.userspace_addr))
        new.dirty_bitmap = plan.old.dirty_bitmap if plan.old is not None else None
        _, (template, *args) = self.prepare_dirty_bitmap(plan.old, new)
        return new, ("fill the on-stack value {} (5.15 allocates no slot struct). " + template, new.label, *args)

    def drop_new(self, new):
        """``out_bitmap``: free a dirty bitmap allocated for ``new`` (it is on the stack)."""
        old_bitmap = self.old.dirty_bitmap if self.old is not None else None
        if new.dirty_bitmap is None or new.dirty_bitmap is old_bitmap:
            return ""
        self.vm.free(new.dirty_bitmap)
        return f"free the dirty bitmap {new.dirty_bitmap.label} allocated for {new.label}; "

    # -- kvm_set_memslot ------------------------------------------------------------
    def kvm_set_memslot(self, old, new, change, fail):
        """5.15 ``kvm_set_memslot``: dup, invalidate, copy again, prepare, update, install."""
        vm = self.vm
        as_id, id = (old or new).as_id, (old or new).id
        self.stage = "invalidate" if change in (DELETE, MOVE) else "prepare"
        vm.lock(SAL)
        yield self.kvm_dup_memslots(as_id, change)
        if change in (DELETE, MOVE):
            yield from self.invalidate(as_id, id)
        self.stage = "prepare"
        scratch = vm.inactive_set(as_id)
        old = ArraySlot(scratch.memslots[scratch.id_to_index[id]].copy()) if old is not None else None
        if old is not None:
            vm.cost["slots_copied"] += 1
            vm.cost["bytes_copied"] += SIZEOF_KVM_MEMORY_SLOT
        if new is not None:
            new.arch = old.arch if old is not None else None
        yield self.step("kvm_set_memslot", _old_copy_text(old, new))
        r, text = vm.arch.prepare_memory_region(old, new, change, fail)
        yield self.step("kvm_arch_prepare_memory_region", text)
        if r:
            yield from self.revert(as_id, id, change)
            return r
        self.stage = "replace"
        yield self.update_memslots(as_id, old, new, change)
        self.stage = "activate"
        yield from self.kvm_swap_active_memslots(as_id)
        self.stage = "commit"
        yield from self.kvm_commit_memory_region(old, new, change)
        return 0

    def kvm_dup_memslots(self, as_id, change):
        """``kvm_dup_memslots``: the whole active structure copied into a new allocation."""
        vm = self.vm
        active = vm.active_set(as_id)
        scratch = active.kvm_dup_memslots(vm.calls, change)
        vm.sets = _with(vm.sets, as_id, (active, scratch))
        n = active.used_slots
        return self.step("kvm_dup_memslots",
                         f"take slots_arch_lock; copy all of {active.name} into the new {scratch.name}: "
                         f"{kvm_memslots_size(n)} bytes (generation, id_to_index of 32767 shorts, {n} x "
                         f"{SIZEOF_KVM_MEMORY_SLOT}-byte slot values). O(n) on every update.")

    def invalidate(self, as_id, id):
        """DELETE/MOVE: install a copy with the entry INVALID, flush, copy again."""
        vm = self.vm
        scratch = vm.inactive_set(as_id)
        entry = scratch.memslots[scratch.id_to_index[id]]
        i = scratch.set_flags(id, entry[FLAGS] | KVM_MEMSLOT_INVALID)
        label = f"#{entry[UID]}"
        yield self.step("kvm_set_memslot", f"set KVM_MEMSLOT_INVALID on entry {i} ({label}) of the copy "
                                           f"{scratch.name}, not on the live structure.",
                        touched=((as_id, 1, label, label),))
        yield from self.kvm_swap_active_memslots(as_id)
        text = vm.arch.flush_shadow_memslot(ArraySlot(entry))
        yield self.step("kvm_arch_flush_shadow_memslot",
                        f"{text} (5.15.y, e.g. 5.15.85, then calls kvm_arch_guest_memory_reclaimed.) Until the "
                        "next install, guest faults on the slot's gfns are retried (RET_PF_RETRY, 5.13+).")
        vm.lock(SAL)
        reused, active = vm.inactive_set(as_id), vm.active_set(as_id)
        reused.kvm_copy_memslots(active)
        yield self.step("kvm_copy_memslots",
                        f"take slots_arch_lock again; reuse {reused.name}, which install_new_memslots returned, "
                        f"as the scratch buffer: copy {active.name} into it again ({kvm_memslots_size(active.used_slots)} "
                        "bytes), since x86 may have written arch data of live slots while the lock was dropped "
                        "(lazy rmap allocation). The second O(n) copy.")

    def revert(self, as_id, id, change):
        """Prepare failed: DELETE/MOVE clear INVALID in the scratch copy and install it."""
        vm = self.vm
        if change in (DELETE, MOVE):
            self.stage = "activate"
            scratch = vm.inactive_set(as_id)
            entry = scratch.memslots[scratch.id_to_index[id]]
            i = scratch.set_flags(id, entry[FLAGS] & ~KVM_MEMSLOT_INVALID)
            label = f"#{entry[UID]}"
            yield self.step("kvm_set_memslot", f"prepare failed: clear KVM_MEMSLOT_INVALID on entry {i} "
                                               f"({label}) of the scratch copy {scratch.name}; install it.",
                            touched=((as_id, 1, label, label),))
            yield from self.kvm_swap_active_memslots(as_id)
            how = (f"the slot is valid again; two installs moved the generation by "
                   f"{2 * vm.address_spaces} although no slot changed")
        else:
            vm.unlock(SAL)
            how = f"release slots_arch_lock; nothing was installed, the generation stays {gen_text(vm.generation(as_id))}"
        yield self.kvfree(as_id, f"prepare failed: {how}.")

    def update_memslots(self, as_id, old, new, change):
        """``update_memslots`` on the scratch copy: O(n) shifting (reference §6.2)."""
        scratch = self.vm.inactive_set(as_id)
        value = new.entry if new is not None else new_entry(id=old.id, as_id=as_id)
        start, i, shifted = scratch.update_memslots(value, change)
        if change == DELETE:
            how = f"kvm_memslot_delete: entry {start} removed, {shifted} later entries shift one place forward"
        elif change == CREATE:
            how = f"kvm_memslot_insert_back at {start}, then move forward: {shifted} entries shift back; it lands at {i}"
        else:
            how = f"move backward then forward from entry {start}: {shifted} entries shift; it lands at {i}"
        return self.step("update_memslots",
                         f"{how} in {scratch.name} (sorted by base_gfn, highest first; id_to_index follows).",
                         touched=((as_id, 1, _label(old), _label(new)),))

    def publish(self, as_id, new_active):
        """``rcu_assign_pointer(kvm->memslots[as_id], slots)``; starts the grace period."""
        vm = self.vm
        replaced = vm.active_set(as_id)
        vm.sets = _with(vm.sets, as_id, (new_active, replaced))
        new_active.node_idx, replaced.node_idx = 0, 1
        vm.swaps = _with(vm.swaps, as_id, vm.swaps[as_id] + 1)
        gp = vm.srcu.start_grace_period()
        vm.note_unpublished(as_id, replaced, gp)
        return gp

    def kvfree(self, as_id, why):
        """``kvfree`` of the structure ``install_new_memslots`` returned (or the unused copy)."""
        vm = self.vm
        active, dropped = vm.sets[as_id]
        vm.free(dropped)
        vm.sets = _with(vm.sets, as_id, (active, active))
        return self.step("kvfree", f"{why} kvfree {dropped.name}: no reader can reach it any more.")

    # -- commit -------------------------------------------------------------------
    def kvm_commit_memory_region(self, old, new, change):
        """5.15 tail: arch commit, ``kvm_free_memslot`` (DELETE), ``kvfree``, bitmap.

        No page count is kept: ``nr_memslot_pages`` came with 5.17.
        """
        vm = self.vm
        as_id = (old or new).as_id
        yield self.step("kvm_arch_commit_memory_region", vm.arch.commit_memory_region(old, new, change))
        if change == DELETE:
            freed = [a for a in (old.dirty_bitmap, old.arch) if a is not None]
            for a in freed:
                vm.free(a)
            yield self.step("kvm_free_memslot", f"free what the old value {old.label} pointed to: "
                                                f"{', '.join(a.label for a in freed) or 'nothing'}.")
        yield self.kvfree(as_id, "the update is installed;")
        if change in (MOVE, FLAGS_ONLY) and old.dirty_bitmap is not None and new.dirty_bitmap is None:
            vm.free(old.dirty_bitmap)
            yield self.step("kvm_destroy_dirty_bitmap", f"__kvm_set_memory_region frees {old.label}'s dirty "
                                                        f"bitmap {old.dirty_bitmap.label}: logging was turned off.")


def _with(tup, i, value):
    return tup[:i] + (value,) + tup[i + 1:]


def _old_copy_text(old, new):
    if old is None:
        return "no old slot (CREATE): old is a zeroed value; new.arch starts empty."
    tail = f"; copy old.arch into {new.label}" if new is not None else ""
    return (f"copy entry {old.label} by value into old ({SIZEOF_KVM_MEMORY_SLOT} bytes, flags "
            f"{old.flags:#x}): re-sorting will move entries{tail}. 5.15.y takes both copies here, with "
            "slots_arch_lock held again, so arch data is fresh; the v5.15 tag copied old earlier, in "
            "__kvm_set_memory_region.")
