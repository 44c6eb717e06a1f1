"""Sean Christopherson's 27 Oct 2021 "working slot" proposal (reference §7.2).

The proposal (Message-ID ``YXnmrqhvc4mzxZfn@google.com``, a reply on
"[PATCH v5 11/13] KVM: Keep memslots in tree-based structures instead of
array-based ones") is modelled as written, in our own words:

- ``kvm_set_memslot`` allocates one spare slot, ``working``, for *every*
  change type, before it takes ``slots_arch_lock``; ``new`` is a struct on
  the stack of ``__kvm_set_memory_region`` that is never linked anywhere.
- CREATE and FLAGS_ONLY copy ``new`` into ``working`` (``kvm_copy_memslot``)
  and install ``working``. DELETE and MOVE use ``working`` as the INVALID copy;
  DELETE frees it itself.
- MOVE reuses ``old``: its gfn node leaves the inactive set's tree, ``old`` is
  overwritten with the new values and linked again, ``kvm_activate_memslot(
  working, old)`` publishes it, and ``working``, with INVALID cleared, is
  handed back as the "old" slot that commit frees.
- A failed prepare reverts DELETE/MOVE with ``kvm_activate_memslot(working,
  old)``, drops ``slots_arch_lock`` for the others, and frees ``working``.

``SeedProtocol`` reads the sketch's change dispatch as intended (an
``else if`` chain). ``SeedAsPostedProtocol`` keeps the slip the reference
notes: a plain ``if`` starts the MOVE test, so after CREATE or DELETE has done
its work the second chain ends in ``BUG()``.

>>> from kvmviz import VM
>>> vm = VM(variant="seed")
>>> steps = vm.set_user_memory_region(1, 0, 0x100000, 0x10000, 0x7f0000000000)
>>> [s.label for s in vm.memslots(0)], vm.generation(0)
(['#1'], 2)
>>> steps = vm.set_user_memory_region(1, 0, 0x200000, 0x10000, 0x7f0000000000)   # MOVE
>>> [s.label for s in vm.memslots(0)]       # the same object, now at the new gfn
['#1']
"""

from ..engine.constants import KVM_MEMSLOT_INVALID
from ..engine.memslot import Memslot, kvm_copy_memslot
from ..engine.errors import ModelBug
from ..engine.tree.protocol import SAL, SL, MergedProtocol
from ..engine.validate import CREATE, DELETE, FLAGS_ONLY, MOVE

SOURCE = ("Sean Christopherson, 27 Oct 2021, reply to \"[PATCH v5 11/13] KVM: Keep memslots in "
          "tree-based structures instead of array-based ones\", Message-ID YXnmrqhvc4mzxZfn@google.com "
          "(https://lore.kernel.org/r/YXnmrqhvc4mzxZfn@google.com); reference §7.2")


class SeedProtocol(MergedProtocol):
    """The 27 Oct 2021 proposal with its dispatch read as intended.

    Models the sketched ``kvm_set_memslot`` and its helpers (reference §7.2).

    >>> from kvmviz import VM
    >>> vm = VM(variant="seed")
    >>> steps = vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0x7f0000000000)
    >>> steps[2].text.split(":")[0]
    'allocate the working slot #1 up front for every change type'
    """

    name = "seed"

    def new_memslot(self, plan):
        """``new`` lives on the stack of ``__kvm_set_memory_region``: no allocation."""
        new = Memslot(self.vm.history, uid=0)
        object.__setattr__(new, "label", "new")
        for field in ("as_id", "id", "base_gfn", "npages", "flags", "userspace_addr"):
            object.__setattr__(new, field, getattr(plan, field))
        return new, ("fill the struct `new` on the stack with the new values; it is never linked "
                     "into a set (kvm_set_memslot copies it into a working slot).")

    def drop_new(self, new):
        """Nothing to free: ``new`` was on the stack."""
        return "nothing to free for `new` (it was on the stack); "

    def kvm_set_memslot(self, old, new, change, fail):
        """``kvm_set_memslot`` of the sketch: ``working`` first, then the usual stages."""
        vm = self.vm
        self.stage = "invalidate" if change in (DELETE, MOVE) else "prepare"
        working = vm.alloc_memslot()
        yield self.step("kvm_set_memslot", f"allocate the working slot {working.label} up front for every change "
                                           "type: nothing can then fail after prepare. slots_arch_lock "
                                           "is not held yet.")
        vm.lock(SAL)
        yield self.step("kvm_set_memslot", "take slots_arch_lock.")
        if change in (DELETE, MOVE):
            yield from self.kvm_invalidate_memslot(old, working)
        self.stage = "prepare"
        r = yield from self.kvm_prepare_memory_region(old, new, change, fail)
        if r:
            yield from self.revert(old, working, change)
            return r
        self.stage = "replace"
        old = yield from self.dispatch(old, new, working, change)
        self.stage = "commit"
        yield from self.kvm_commit_memory_region(old, new, change)
        return 0

    def revert(self, old, working, change):
        """Prepare failed: undo the INVALID copy (DELETE/MOVE) and free ``working``."""
        vm = self.vm
        if change in (DELETE, MOVE):
            self.stage = "activate"
            yield from self.kvm_activate_memslot(working, old)
            how = f"{old.label} is active again after a second swap"
        else:
            vm.unlock(SAL)
            how = "release slots_arch_lock; no swap happened"
        vm.free(working)
        yield self.step("kvm_set_memslot", f"prepare failed: {how}; free the working slot {working.label}.")

    def dispatch(self, old, new, working, change):
        """The per-change helper call, one ``else if`` chain; returns commit's ``old``."""
        if change in (CREATE, DELETE):
            yield from self.create_or_delete(old, new, working, change)
            return old
        return (yield from self.move_or_flags(old, new, working, change))

    def create_or_delete(self, old, new, working, change):
        """The first half of the dispatch: CREATE, else if DELETE."""
        if change == CREATE:
            yield from self.kvm_create_memslot(old, new, working)
        elif change == DELETE:
            yield from self.kvm_delete_memslot(old, new, working)

    def move_or_flags(self, old, new, working, change):
        """The second half: MOVE, else if FLAGS_ONLY, else ``BUG()``."""
        if change == MOVE:
            return (yield from self.kvm_move_memslot(old, new, working))
        if change == FLAGS_ONLY:
            yield from self.kvm_update_flags_memslot(old, new, working)
            return old
        yield from self.kernel_bug(change)
        return old

    def kernel_bug(self, change):
        """``BUG()``: the task dies; the update ends here without an errno."""
        vm = self.vm
        vm.unlock(SL)
        vm.changing = None
        text = (f"BUG(): after the {change} helper finished, the second `if` chain (MOVE? FLAGS_ONLY?) "
                "found neither and hit its final BUG(). The kernel oopses: the ioctl never returns, "
                "commit never runs (nr_memslot_pages is not updated"
                + (", the old slot is never freed" if change == DELETE else "")
                + ") and slots_lock stays locked, so every later memslot change would hang. kvmviz "
                  "releases slots_lock only so you can keep exploring.")
        yield self.step("BUG", text, result="BUG",
                        error=ModelBug(f"kernel BUG() in kvm_set_memslot after {change}: the dispatch of the "
                                       "27 Oct 2021 sketch has `if` where `else if` is needed (reference §7.2)"))

    def fill_working(self, new, working):
        """``kvm_copy_memslot(working, new)``: the step that fills ``working``."""
        kvm_copy_memslot(working, new)
        return self.step("kvm_copy_memslot", f"copy `new` into the working slot {working.label} (sharing the "
                                             "dirty bitmap and arch data prepare gave it).")

    def kvm_create_memslot(self, old, new, working):
        """``kvm_create_memslot``: install a copy of ``new`` in both sets."""
        yield self.fill_working(new, working)
        yield from super().kvm_create_memslot(old, working, None)

    def kvm_update_flags_memslot(self, old, new, working):
        """``kvm_update_flags_memslot``: a copy of ``new`` replaces ``old``."""
        yield self.fill_working(new, working)
        yield from super().kvm_update_flags_memslot(old, working, None)

    def kvm_delete_memslot(self, old, new, working):
        """``kvm_delete_memslot``: as merged, then it frees the INVALID copy itself."""
        yield from super().kvm_delete_memslot(old, new, working)
        self.vm.free(working)
        yield self.step("kvm_delete_memslot", f"free the INVALID copy {working.label} here, inside "
                                              f"kvm_delete_memslot; commit frees {old.label}.")

    def kvm_move_memslot(self, old, new, working):
        """``kvm_move_memslot``: reuse ``old`` at the new gfn; return ``working``."""
        s = self.vm.inactive_set(old.as_id)
        where = (old.as_id, s.node_idx)
        s.gfn_erase(old)
        kvm_copy_memslot(old, new)
        s.gfn_insert(old)
        yield self.step("kvm_move_memslot",
                        f"reuse {old.label}: erase its gfn node from inactive {s.name} (its gfn changes, so no "
                        f"in-place replace), overwrite it with the new values and insert it again at gfn "
                        f"{old.base_gfn:#x}. Its id-hash and hva nodes stay. No reader can reach {old.label}: "
                        f"the active set holds the INVALID copy {working.label}.",
                        touched=(where + (old.label, old.label),))
        self.stage = "activate"
        yield from self.kvm_activate_memslot(working, old)
        working.flags &= ~KVM_MEMSLOT_INVALID
        yield self.step("kvm_move_memslot",
                        f"clear INVALID on {working.label}: it is now an exact copy of the slot before the "
                        "move, and goes back to kvm_set_memslot as the `old` slot that commit frees.")
        return working


class SeedAsPostedProtocol(SeedProtocol):
    """The proposal with its dispatch exactly as posted: CREATE/DELETE reach ``BUG()``.

    Models the ``if`` that should have been ``else if`` (reference §7.2). The
    update ends with a ``BUG`` step: ``result`` is the string ``"BUG"`` (the
    ioctl never returns, so there is no errno) and ``error`` a ``ModelBug``.

    >>> from kvmviz import VM
    >>> upd = VM(variant="seed-as-posted").begin_set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> last = list(upd)[-1]; last.function, upd.result
    ('BUG', 'BUG')
    """

    name = "seed-as-posted"

    def dispatch(self, old, new, working, change):
        """Two chains where one was meant: CREATE and DELETE fall into ``BUG()``."""
        yield from self.create_or_delete(old, new, working, change)
        # the posted `if` (not `else if`) starts a second chain for every change
        return (yield from self.move_or_flags(old, new, working, change))
