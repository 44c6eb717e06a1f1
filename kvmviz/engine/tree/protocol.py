"""``kvm_set_memslot`` and its helpers as step generators: 5.17 as merged.

Each method models the kernel function of the same name (reference §2.1-§2.4,
§3.4) and yields a ``Step`` after each observable change. Variants subclass
``MergedProtocol`` (public as ``kvmviz.MergedProtocol``) and override single
methods; ``docs/writing-a-variant.md`` walks through one.

>>> from kvmviz import VM
>>> vm = VM()
>>> steps = vm.set_user_memory_region(1, 0, 0x100000, 0x10000, 0x7f0000000000)
>>> [s.function for s in steps if s.stage == "activate"][:3]
['kvm_swap_active_memslots', 'rcu_assign_pointer', 'kvm_swap_active_memslots']
>>> vm.generation(0)
2
"""

import errno

from ..constants import (KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
                        KVM_MEMSLOT_INVALID, PAGE_SHIFT, SIZEOF_KVM_MEMORY_SLOT)
from ..errors import KvmError
from ..fmt import gen_text, result_text
from ..guest_memfd import FIRST_FD
from ..kernels import FEATURES, has
from ..memslot import kvm_copy_memslot
from ..validate import CREATE, DELETE, FLAGS_ONLY, MOVE, NONE, check_ioctl, check_memory_region
from ..step import DONE, PLAIN, SITES, TOUCHES, WAITING, Outcome, new_site

IP = KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
SL, SAL, MNL = "slots_lock", "slots_arch_lock", "mn_invalidate_lock"


def dirty_bitmap_bytes(npages):
    """``kvm_dirty_bitmap_bytes``: one bit per page, rounded up to longs.

    >>> dirty_bitmap_bytes(1), dirty_bitmap_bytes(65)
    (8, 16)
    """
    return (npages + 63) // 64 * 8


class MergedProtocol:
    """The memslot update as merged for Linux 5.17, with the 5.17.y fix c87661f855c3 (the default).

    Subclass it to model a patch: override the method of each kernel helper
    the patch changes and call ``super()`` for what stays. Every helper is a
    generator: it changes ``self.vm`` and yields ``self.step(function, text)``
    after each observable change, ``function`` naming the kernel function;
    ``yield from`` runs another helper inline. ``self.stage`` is the stage of
    the steps that follow. The helpers, in the order a call runs them:

    - ``run`` (``__kvm_set_memory_region``) -> ``kvm_set_memslot``
    - ``kvm_set_memslot`` -> ``kvm_invalidate_memslot`` (DELETE, MOVE),
      ``kvm_prepare_memory_region`` (a failure reverts with
      ``kvm_activate_memslot``), then one of ``kvm_create_memslot``,
      ``kvm_delete_memslot``, ``kvm_move_memslot``,
      ``kvm_update_flags_memslot``, then ``kvm_commit_memory_region``
    - those four -> ``kvm_replace_memslot`` (edit the inactive set), then
      ``kvm_activate_memslot`` -> ``kvm_swap_active_memslots`` and the
      catch-up ``kvm_replace_memslot``
    - ``kvm_swap_active_memslots`` -> ``publish`` (``rcu_assign_pointer``) ->
      ``synchronize_srcu_expedited``

    >>> from kvmviz import VM
    >>> class Loud(MergedProtocol):
    ...     def kvm_create_memslot(self, old, new, invalid):
    ...         yield self.step("kvm_create_memslot", f"about to install {new.label}")
    ...         yield from super().kvm_create_memslot(old, new, invalid)
    >>> steps = VM(variant=Loud).set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> [s.text for s in steps if s.function == "kvm_create_memslot"][0]
    'about to install #1'
    """


    name = "merged"
    #: Kernel function that swaps the active set (5.10-5.15: ``install_new_memslots``).
    swap_function = "kvm_swap_active_memslots"

    def __init__(self, vm):
        self.vm = vm
        self.stage = "validate"
        self.upd = None

    # -- helpers -------------------------------------------------------------
    def step(self, function, text, *args, touched=(), waiting=False, result=None, error=None):
        """Record the step describing what just happened (``Update.push``); returns its record to yield.

        ``text`` is a template filled from ``args`` when the step is read
        (``{:gen}`` formats a generation), or a ``(template, *args)`` tuple;
        without ``args`` it is the text. ``touched=TOUCHES``: the step edited
        a set, named by its first four arguments (as_id, node_idx, old label,
        new label).
        """
        if text.__class__ is tuple:         # a helper's (template, *args)
            text, args = text[0], text[1:]
        if result is None and error is None:
            detail = WAITING if waiting else touched
        else:
            detail = DONE if result == 0 and error is None else Outcome(waiting, result, error)
        if not args:
            text, args = PLAIN, (text,)
        site = SITES.get((self.stage, function, text)) or new_site(self.stage, function, text, len(args))
        return self.upd.push(site, detail, args)

    def kvm_replace_memslot(self, as_id, old, new, function="kvm_replace_memslot", why=""):
        """``kvm_replace_memslot``: ``old`` -> ``new`` in the inactive set of ``as_id``; yields one step.

        Either slot may be None (insert, erase). ``function`` names the
        kernel helper that called it (the step's ``function``), ``why``
        starts the step's text.
        """
        s = self.vm.inactive_set(as_id)
        s.replace(old, new)
        same = old is not None and new is not None and old.base_gfn == new.base_gfn
        how = ("O(1) rb_replace_node in the gfn tree" if same else
               "erase + insert in the gfn tree" if old and new else
               "insert into" if new else "erase from")
        where = (" the gfn tree, the hva tree and the id hash" if old is None or new is None else
                 "; remove + insert in the hva tree; id hash del + add")
        yield self.step(function, "{4}{2} -> {3} in inactive {7}: {5}{6}.", as_id, s.node_idx,
                        _label(old), _label(new), why, how, where, s.name, touched=TOUCHES)

    # -- the ioctl -----------------------------------------------------------
    def run(self, upd, region, fail):
        """``kvm_vm_ioctl_set_memory_region`` -> ``__kvm_set_memory_region``.

        When the checks already passed (``upd.checked``, a whole call that
        ``vm._refuse_early`` checked) they are not run again; the lookups
        they did are counted here.
        """
        vm = self.vm
        self.stage = "validate"
        checked, upd.checked = upd.checked, None
        if checked is not None:
            vm.lock(SL)
            vm.cost.update(checked.counted)
            plan = checked.plan
        else:
            try:
                check_ioctl(region, vm.kernel)
            except KvmError as e:
                yield self.step("kvm_vm_ioctl_set_memory_region", f"refused before taking any lock: {e}",
                                result=-e.errno, error=e)
                return
            vm.lock(SL)
            try:
                plan = check_memory_region(vm, region)
            except KvmError as e:
                vm.unlock(SL)
                yield self.step("__kvm_set_memory_region", f"check failed, nothing changed: {e}",
                                result=-e.errno, error=e)
                return
        upd.change = plan.change
        vm.changing = (plan.as_id, plan.id)
        if plan.change == NONE:
            vm.changing = None
            vm.unlock(SL)
            yield self.step("__kvm_set_memory_region",
                            "same values as the existing slot: nothing to do, return 0 "
                            "(no swap, the generation stays)", result=0)
            return
        yield self.step("__kvm_set_memory_region", *_plan_text(plan))
        new = None
        if plan.change != DELETE:
            new, text = self.new_memslot(plan)
            yield self.step("__kvm_set_memory_region", text)
        if new is not None and new.flags & KVM_MEM_GUEST_MEMFD:
            error = self.kvm_gmem_bind(new, region)
            yield self.step("kvm_gmem_bind", error.message if error else
                            f"bind pages {region.guest_memfd_offset >> 12:#x}.. of guest_memfd {region.guest_memfd} "
                            f"to {new.label} ({FEATURES['guest_memfd'].cite()}).")
            if error:
                text = self.drop_new(new)
                vm.unlock(SL)
                vm.changing = None
                yield self.step("__kvm_set_memory_region", f"{text}release slots_lock; the ioctl returns "
                                                           f"{result_text(-error.errno)}.", result=-error.errno, error=error)
                return
        r = yield from self.kvm_set_memslot(plan.old, new, plan.change, fail)
        freed = self.drop_new(new) if r and new is not None else ""
        vm.unlock(SL)
        vm.changing = None
        yield self.step("kvm_set_memory_region", "{}release slots_lock; the ioctl returns {}.", freed, result_text(r),
                        result=r,
                        error=KvmError(-r, f"kvm_prepare_memory_region failed for {region.where()} "
                                           f"({upd.change}; {_revert_note(upd.change, vm.address_spaces)})"
                                           f"{_prepare_reason(upd.steps)}", rule="4.4", slot=region.id) if r else None)

    def new_memslot(self, plan):
        """The ``new`` slot of ``__kvm_set_memory_region``: on the heap since [P30].

        Returns ``(new, text)``; variants that keep ``new`` elsewhere override it.
        """
        new = self.vm.alloc_memslot(plan)
        return new, ("allocate {} and fill it with the new values; no set links it yet.", new.label)

    def kvm_gmem_bind(self, new, region):
        """``kvm_gmem_bind``: tie ``new`` to pages of a guest_memfd; returns None or the ``KvmError``.

        -EBADF for an fd that is not open, -EINVAL for one that is no
        guest_memfd of this VM, a range beyond the file or pages bound to
        another slot (docs/kernel-6.12.md §2.4). The model knows no files but
        its guest_memfds and the three standard streams every process has
        open: fds 0-2 are open files that are no guest_memfd, others not open.
        """
        fd, offset = region.guest_memfd, region.guest_memfd_offset
        gmem = self.vm.gmem_files.get(fd)
        if gmem is None and fd < FIRST_FD:
            return KvmError(errno.EINVAL, f"kvm_gmem_bind: fd {fd} is open but not a guest_memfd "
                                          f"({region.where()})", rule="4.5", slot=region.id)
        if gmem is None:
            return KvmError(errno.EBADF, f"kvm_gmem_bind: fd {fd} is not open (no guest_memfd of this VM has "
                                         f"it) ({region.where()})", rule="4.5", slot=region.id)
        why = gmem.bind(offset, new.npages, new.label)
        if why:
            return KvmError(errno.EINVAL, f"kvm_gmem_bind: {why} ({region.where()})", rule="4.5", slot=region.id)
        new.gmem = (fd, offset >> PAGE_SHIFT)
        return None

    def kvm_gmem_unbind(self, slot):
        """``kvm_gmem_unbind``: release the guest_memfd pages of ``slot``; returns a text."""
        if slot.gmem is None:
            return ""
        self.vm.gmem_files[slot.gmem[0]].unbind(slot.label)
        return f"unbind {slot.label} from guest_memfd {slot.gmem[0]}; "

    def drop_new(self, new):
        """Free ``new`` after ``kvm_set_memslot`` failed; returns the text for the last step."""
        unbound = self.kvm_gmem_unbind(new)
        self.vm.free(new)
        return f"{unbound}free {new.label} (it was never reachable); "

    # -- kvm_set_memslot -------------------------------------------------------
    def kvm_set_memslot(self, old, new, change, fail):
        """``kvm_set_memslot``: invalidate, prepare, replace, activate, commit; returns 0 or -errno.

        ``old``/``new``: the slot before and after (None for CREATE and
        DELETE respectively), ``change``: ``"CREATE"``, ``"DELETE"``,
        ``"MOVE"`` or ``"FLAGS_ONLY"``; ``fail``: the errno prepare is made to
        fail with (0: none). Called with slots_lock held.
        """

        vm = self.vm
        as_id = (old or new).as_id
        self.stage = "invalidate" if change in (DELETE, MOVE) else "prepare"
        vm.lock(SAL)
        invalid = None
        if change in (DELETE, MOVE):
            invalid = vm.alloc_memslot()
            yield self.step("kvm_set_memslot", "take slots_arch_lock; allocate {} to become the INVALID copy of {}.",
                            invalid.label, old.label)
            yield from self.kvm_invalidate_memslot(old, invalid)
        else:
            yield self.step("kvm_set_memslot", "take slots_arch_lock: arch data of live slots may not "
                                               "change until the new set is published.")
        self.stage = "prepare"
        r = yield from self.kvm_prepare_memory_region(old, new, change, fail)
        if r:
            if invalid is None:
                vm.unlock(SAL)
                yield self.step("kvm_set_memslot", f"prepare failed: release slots_arch_lock; no swap "
                                                   f"happened, so the generation stays at {gen_text(vm.generation(as_id))}.")
                return r
            self.stage = "activate"
            yield from self.kvm_activate_memslot(invalid, old)
            vm.free(invalid)
            yield self.step("kvm_set_memslot", f"revert done: {old.label} is active again; free "
                                               f"{invalid.label}. Two swaps happened, so the generation moved "
                                               f"by {2 * self.vm.address_spaces} although no slot changed.")
            return r
        self.stage = "replace"
        helper = {CREATE: self.kvm_create_memslot, DELETE: self.kvm_delete_memslot,
                  MOVE: self.kvm_move_memslot, FLAGS_ONLY: self.kvm_update_flags_memslot}[change]
        yield from helper(old, new, invalid)
        if invalid is not None:
            vm.free(invalid)
            yield self.step("kvm_set_memslot", "free the INVALID copy {}: the grace period of the last swap "
                                               "guarantees no reader still uses it.", invalid.label)
        self.stage = "commit"
        yield from self.kvm_commit_memory_region(old, new, change)
        return 0

    def kvm_invalidate_memslot(self, old, invalid):
        """``kvm_invalidate_memslot``: publish an INVALID copy of ``old`` (DELETE, MOVE).

        Copies ``old`` into the fresh ``invalid``, flags it, replaces ``old``
        by it in the inactive set, swaps, flushes the shadow pages and takes
        slots_arch_lock again.
        """
        vm = self.vm
        kvm_copy_memslot(invalid, old)
        vm.cost["slots_copied"] += 1
        vm.cost["bytes_copied"] += SIZEOF_KVM_MEMORY_SLOT
        invalid.flags |= KVM_MEMSLOT_INVALID
        yield self.step("kvm_copy_memslot", "copy {} into {} (sharing its dirty bitmap and arch data) and set "
                                            "KVM_MEMSLOT_INVALID on the copy.", old.label, invalid.label)
        yield from self.kvm_replace_memslot(old.as_id, old, invalid, function="kvm_replace_memslot",
                                            why="kvm_invalidate_memslot: ")
        yield from self.kvm_swap_active_memslots(old.as_id)
        text = vm.arch.flush_shadow_memslot(old)
        yield self.step("kvm_arch_flush_shadow_memslot",
                        "{} Until swap #2 a guest fault on these gfns finds the INVALID copy and is retried "
                        "(RET_PF_RETRY, x86 5.13+: no exit, no MMIO SPTE; before 5.13 it was handled like MMIO); "
                        "kvm_read_guest-style reads get -EFAULT.", text)
        if has(vm.kernel, "guest_memory_reclaimed"):
            yield self.step("kvm_arch_guest_memory_reclaimed", _RECLAIMED)
        vm.lock(SAL)
        old.arch = invalid.arch
        yield self.step("kvm_invalidate_memslot",
                        "take slots_arch_lock again; {0}.arch = {1}.arch: while the lock was dropped x86 may have "
                        "written the live copy's arch data (lazy rmap allocation under slots_arch_lock); {0} is only "
                        "in the inactive set.", old.label, invalid.label)

    def kvm_create_memslot(self, old, new, invalid):
        """``kvm_create_memslot``: add ``new`` to both sets, one at a time (``old``, ``invalid``: None)."""
        yield from self.kvm_replace_memslot(new.as_id, None, new, function="kvm_create_memslot")
        self.stage = "activate"
        yield from self.kvm_activate_memslot(None, new)

    def kvm_delete_memslot(self, old, new, invalid):
        """``kvm_delete_memslot``: drop ``old`` from the inactive set, then the INVALID copy (``new``: None)."""
        yield from self.kvm_replace_memslot(old.as_id, old, None, function="kvm_delete_memslot")
        self.stage = "activate"
        yield from self.kvm_activate_memslot(invalid, None)

    def kvm_move_memslot(self, old, new, invalid):
        """``kvm_move_memslot``: ``new`` replaces ``old``, then the INVALID copy."""
        yield from self.kvm_replace_memslot(old.as_id, old, new, function="kvm_move_memslot")
        self.stage = "activate"
        yield from self.kvm_activate_memslot(invalid, new)

    def kvm_update_flags_memslot(self, old, new, invalid):
        """``kvm_update_flags_memslot``: ``new`` replaces ``old`` (same gfn)."""
        yield from self.kvm_replace_memslot(old.as_id, old, new, function="kvm_update_flags_memslot")
        self.stage = "activate"
        yield from self.kvm_activate_memslot(old, new)

    def kvm_activate_memslot(self, old, new):
        """``kvm_activate_memslot``: swap, then replay ``old`` -> ``new`` on the set that became inactive."""
        as_id = (old or new).as_id
        yield from self.kvm_swap_active_memslots(as_id)
        yield from self.kvm_replace_memslot(as_id, old, new, function="kvm_activate_memslot",
                                            why="catch up the set that just became inactive: ")

    # -- the swap ----------------------------------------------------------------
    def kvm_swap_active_memslots(self, as_id):
        """``kvm_swap_active_memslots``: publish the inactive set of ``as_id`` (reference §3.4).

        In-progress generation, wait for MMU-notifier invalidations, publish,
        drop the locks, ``synchronize_srcu_expedited``, final generation.
        """
        vm = self.vm
        active, inactive = vm.active_set(as_id), vm.inactive_set(as_id)
        gen = active.generation
        warn = " WARN: the active generation already had the in-progress bit!" if gen & IP else ""
        inactive.generation = gen | IP
        yield self.step(self.swap_function, "mark {} in progress: generation {:gen}.{}", inactive.name,
                        inactive.generation, warn, touched=_gen_touched(as_id, inactive.node_idx))
        vm.lock(MNL)
        while vm.mn_active_invalidate_count:
            vm.unlock(MNL)
            yield self._wait("rcuwait_wait_event",
                             lambda: (f"{vm.mn_active_invalidate_count} MMU-notifier invalidation(s) in "
                                      "progress" if vm.mn_active_invalidate_count else None),
                             "sleep until mn_active_invalidate_count drops to 0: start and end of an "
                             "invalidation must see the same memslots.")
            vm.lock(MNL)
        gp = self.publish(as_id, inactive)
        yield self.step("rcu_assign_pointer",
                        "publish {} as the active set of as{} (no MMU-notifier invalidation is running). "
                        "New SRCU readers see it and generation {:gen}.", inactive.name, as_id, inactive.generation)
        vm.unlock(MNL)
        vm.unlock(SAL)
        yield self.step(self.swap_function,
                        "release mn_invalidate_lock and slots_arch_lock (an SRCU reader may be waiting for "
                        "slots_arch_lock: holding it across the grace period could deadlock).")
        yield from self.synchronize_srcu_expedited(gp, active)
        final = (inactive.generation & ~IP) + vm.address_spaces
        yield self.step("kvm_arch_memslots_updated", vm.arch.memslots_updated(final))
        inactive.generation = final
        yield self.step(self.swap_function,
                        "store the final generation {:#x} (= {:#x} + {}) in {}; {} is now inactive with stale "
                        "generation {:gen}.", final, gen, vm.address_spaces, inactive.name, active.name,
                        active.generation,
                        touched=_gen_touched(as_id, inactive.node_idx))

    def publish(self, as_id, new_active):
        """``rcu_assign_pointer``: make ``new_active`` active; start the grace period."""
        old_active = self.vm.active_set(as_id)
        self.vm.publish(as_id, new_active.node_idx)
        gp = self.vm.srcu.start_grace_period()
        self.vm.note_unpublished(as_id, old_active, gp)
        return gp

    def swap_blockers(self):
        """Why a swap started now would wait (for a call that must not block): a list of reasons."""
        vm = self.vm
        n = vm.mn_active_invalidate_count
        return ([f"{n} MMU-notifier invalidation(s) in progress"] if n else []) + self.reader_blockers()

    def reader_blockers(self):
        """The SRCU readers inside now, whom ``synchronize_srcu_expedited`` would wait for."""
        readers = self.vm.srcu.holders(self.vm.srcu.seq + 1)
        return [f"SRCU readers inside: {', '.join(map(str, readers))}"] if readers else []

    def synchronize_srcu_expedited(self, gp, old_active):
        """``synchronize_srcu_expedited``: wait until readers that entered before grace period ``gp`` left.

        ``old_active`` is the set that stopped being active at ``gp``.
        """
        srcu = self.vm.srcu
        while not srcu.grace_period_done(gp):
            yield self._wait("synchronize_srcu_expedited",
                             lambda: (f"SRCU readers still inside: {', '.join(map(str, srcu.holders(gp)))}"
                                      if not srcu.grace_period_done(gp) else None),
                             f"wait for the grace period: readers that entered before the swap may still "
                             f"use {old_active.name}.")
        srcu.synchronized(gp)
        yield self.step("synchronize_srcu_expedited", "grace period over: no reader can still be using {}.",
                        old_active.name)

    def _wait(self, function, reason, text):
        self.upd.wait_reason = reason
        return self.step(function, f"{text} Blocked: {reason()}.", waiting=True)

    # -- prepare / commit ----------------------------------------------------------
    def kvm_prepare_memory_region(self, old, new, change, fail):
        """``kvm_prepare_memory_region``: dirty bitmap rules, then the arch hook; returns 0 or -errno."""
        vm = self.vm
        allocated = None
        if change != DELETE:
            allocated, text = self.prepare_dirty_bitmap(old, new)
            yield self.step("kvm_prepare_memory_region", text)
        r, text = vm.arch.prepare_memory_region(old, new, change, fail)
        yield self.step("kvm_arch_prepare_memory_region", text)
        if r and allocated is not None:
            vm.free(allocated)
            new.dirty_bitmap = None
            yield self.step("kvm_prepare_memory_region",
                            f"prepare failed: free the dirty bitmap {allocated.label} it allocated "
                            "(5.17 as first merged leaked it for CREATE; fixed by c87661f855c3 in 5.17.y).")
        return r

    def prepare_dirty_bitmap(self, old, new):
        """The dirty-bitmap table of reference §2.1; returns (allocated, text)."""
        if not new.flags & KVM_MEM_LOG_DIRTY_PAGES:
            new.dirty_bitmap = None
            if old and old.dirty_bitmap:
                return None, ("{} has no LOG_DIRTY_PAGES: no dirty bitmap. {}'s bitmap is freed at commit.",
                              new.label, old.label)
            return None, ("{} has no LOG_DIRTY_PAGES: no dirty bitmap.", new.label)
        if old is not None and old.dirty_bitmap is not None:
            new.dirty_bitmap = old.dirty_bitmap
            return None, ("{} shares {}'s dirty bitmap {} (not copied).", new.label, old.label,
                          old.dirty_bitmap.label)
        new.dirty_bitmap = self.vm.alloc("dirty_bitmap", 2 * dirty_bitmap_bytes(new.npages))
        return new.dirty_bitmap, ("allocate dirty bitmap {} for {}: 2 x {} bytes (second half is scratch).",
                                  new.dirty_bitmap.label, new.label, dirty_bitmap_bytes(new.npages))

    def kvm_commit_memory_region(self, old, new, change):
        """``kvm_commit_memory_region``: page count, arch commit, then frees what became unreachable."""
        vm = self.vm
        if change == DELETE:
            vm.nr_memslot_pages -= old.npages
        elif change == CREATE:
            vm.nr_memslot_pages += new.npages
        logging = self.count_dirty_logging(old, new)
        text = vm.arch.commit_memory_region(old, new, change)
        yield self.step("kvm_arch_commit_memory_region", "nr_memslot_pages = {:#x}.{} {}", vm.nr_memslot_pages,
                        logging, text)
        if change == CREATE:
            return
        if change == DELETE:
            freed = [a for a in (old.dirty_bitmap, old.arch) if a is not None]
            for a in freed:
                vm.free(a)
            unbound = self.kvm_gmem_unbind(old)
            vm.free(old)
            yield self.step("kvm_free_memslot", "{}free {} with {}: no set reaches it and its grace period is over.",
                            unbound, old.label, _list(freed))
            return
        freed = []
        if old.dirty_bitmap is not None and new.dirty_bitmap is None:
            vm.free(old.dirty_bitmap)
            freed.append(old.dirty_bitmap)
        vm.free(old)
        if freed:
            yield self.step("kfree", "free the {} struct only ({} may share its data), and its dirty bitmap {}.",
                            old.label, new.label, freed[0].label)
        else:
            yield self.step("kfree", "free the {} struct only ({} may share its data).", old.label, new.label)


    def count_dirty_logging(self, old, new):
        """6.12 ``nr_memslots_dirty_logging``: +1/-1 when LOG_DIRTY_PAGES turns on/off; returns a text."""
        if not has(self.vm.kernel, "dirty_logging_count"):
            return ""
        delta = (bool(new and new.flags & KVM_MEM_LOG_DIRTY_PAGES)
                 - bool(old and old.flags & KVM_MEM_LOG_DIRTY_PAGES))
        if not delta:
            return ""
        self.vm.nr_memslots_dirty_logging += delta
        return (f" Dirty logging turned {'on' if delta > 0 else 'off'}: nr_memslots_dirty_logging = "
                f"{self.vm.nr_memslots_dirty_logging} ({FEATURES['dirty_logging_count'].cite()}).")


#: The text of the 6.12 ``kvm_arch_guest_memory_reclaimed`` step (the same every time).
_RECLAIMED = ("tell the arch the slot's memory may have been reclaimed: x86 calls the vendor's guest_memory_reclaimed "
              "hook (SVM flushes caches for SEV guests; nothing for others) "
              f"({FEATURES['guest_memory_reclaimed'].cite()}).")
#: ``touched`` of a generation store: one shared tuple per (as_id, node_idx).
_GEN_TOUCHED = {}


def _gen_touched(as_id, node_idx):
    touched = _GEN_TOUCHED.get((as_id, node_idx))
    if touched is None:
        touched = _GEN_TOUCHED[as_id, node_idx] = ((as_id, node_idx, "gen", "gen"),)
    return touched


def _label(slot):
    return slot.label if slot is not None else "NULL"


def _list(objs):
    return ", ".join(o.label for o in objs) if objs else "nothing else"


def _prepare_reason(steps):
    """The arch prepare step's own words when it refused (not for an injected failure)."""
    text = next((s.text for s in reversed(steps) if s.function == "kvm_arch_prepare_memory_region"), "")
    return f": {text}" if "refuses" in text else ""


def _revert_note(change, address_spaces):
    if change in (DELETE, MOVE):
        return f"the INVALID copy was reverted: two swaps, generation +{2 * address_spaces}"
    return "no swap happened, the generation is unchanged"


def _plan_text(plan):
    """The plan step's ``(template, *args)``."""
    if plan.change == DELETE:
        return "all checks passed: DELETE slot {} of as{} ({}).", plan.id, plan.as_id, plan.old.label
    last = plan.base_gfn + plan.npages - 1
    if plan.old is None:
        return "all checks passed: {} slot {} of as{} at gfn {:#x}..{:#x}.", plan.change, plan.id, plan.as_id, \
            plan.base_gfn, last
    return "all checks passed: {} slot {} of as{} ({}) at gfn {:#x}..{:#x}.", plan.change, plan.id, plan.as_id, \
        plan.old.label, plan.base_gfn, last
