"""``struct kvm_memory_slot`` and the objects it points to (reference §1.1, §2.1).

A ``Memslot`` is an object with identity, like a kernel pointer: at rest the
same object sits in both sets of its address space. ``nodes`` is a bit mask of
the sets (by ``node_idx``) the slot is linked into, standing for the kernel's
``gfn_node[2]``/``hva_node[2]``/``id_node[2]``.

>>> s = Memslot(uid=1, id=1, as_id=0, base_gfn=0x100, npages=0x10,
...             flags=0, userspace_addr=0x7f0000000000)
>>> s
#1(id=1 as=0 gfn=0x100..0x10f hva=0x7f0000000000 flags=-)
>>> c = Memslot(uid=2); kvm_copy_memslot(c, s); c.base_gfn == s.base_gfn, c is s
(True, False)
"""

from .constants import PAGE_SHIFT, KVM_MEMSLOT_INVALID, flag_names
from .history import Journaled

#: Fields a reader can observe; writing one of them while the slot is
#: reachable from a visible set is an in-place modification (invariant 1).
OBSERVED_FIELDS = frozenset(
    ("id", "as_id", "base_gfn", "npages", "flags", "userspace_addr", "dirty_bitmap", "arch", "gmem"))


#: The dirty pages of a clean bitmap: one shared empty set (every empty ``frozenset()`` is a new object).
CLEAN = frozenset()


class Allocation(Journaled):
    """A kernel allocation a slot points to: a dirty bitmap or arch metadata.

    Models the ``dirty_bitmap`` buffer and x86's ``kvm_arch_memory_slot``
    arrays; identity, size and whether it was freed matter here, and for a
    dirty bitmap the pages marked dirty (``dirty``: page indexes in the slot).

    >>> Allocation(label="bm1", kind="dirty_bitmap", nbytes=32)
    bm1
    """

    __slots__ = ("label", "kind", "nbytes", "freed", "dirty")

    def __init__(self, history=None, *, label, kind, nbytes=0):
        super().__init__(history, label=label, kind=kind, nbytes=nbytes, freed=False, dirty=CLEAN)

    def __repr__(self):
        return self.label + (" (freed)" if self.freed else "")


class Memslot(Journaled):
    """One memslot object (``struct kvm_memory_slot``).

    ``gmem`` is ``(guest_memfd fd, first page)`` for a GUEST_MEMFD slot (6.12), else None.
    ``owner`` (the VM) is told about writes to observed fields while the slot
    is linked into a set that readers can see, so the invariant checker can
    report them.
    """

    __slots__ = ("uid", "label", "id", "as_id", "base_gfn", "npages", "flags",
                 "userspace_addr", "dirty_bitmap", "arch", "gmem", "nodes", "freed", "_owner")

    def __init__(self, history=None, *, uid=0, owner=None, id=0, as_id=0,
                 base_gfn=0, npages=0, flags=0, userspace_addr=0):
        init = object.__setattr__           # a new slot is unlinked: nothing to journal or check
        init(self, "_history", history)
        init(self, "uid", uid)
        init(self, "label", f"#{uid}")
        init(self, "_owner", owner)
        init(self, "id", id)
        init(self, "as_id", as_id)
        init(self, "base_gfn", base_gfn)
        init(self, "npages", npages)
        init(self, "flags", flags)
        init(self, "userspace_addr", userspace_addr)
        init(self, "dirty_bitmap", None)
        init(self, "arch", None)
        init(self, "gmem", None)
        init(self, "nodes", 0)
        init(self, "freed", False)

    def __setattr__(self, name, value):
        owner = self._owner
        if self.nodes and owner is not None and name in OBSERVED_FIELDS and self.nodes & owner.visible_nodes(self.as_id):
            owner.note_in_place_write(self, name, getattr(self, name), value)
        super().__setattr__(name, value)

    @property
    def end_gfn(self):
        """First gfn after the slot."""
        return self.base_gfn + self.npages

    @property
    def hva_last(self):
        """Last byte of the slot's hva range (inclusive, as in ``hva_node``)."""
        return self.userspace_addr + (self.npages << PAGE_SHIFT) - 1

    @property
    def invalid(self):
        """True for the INVALID copy made by ``kvm_invalidate_memslot``."""
        return bool(self.flags & KVM_MEMSLOT_INVALID)

    def values(self):
        """The userspace-visible values as a tuple, for comparisons."""
        return (self.id, self.as_id, self.base_gfn, self.npages, self.flags, self.userspace_addr)

    def __repr__(self):
        return (f"{self.label}(id={self.id} as={self.as_id} "
                f"gfn={self.base_gfn:#x}..{self.end_gfn - 1:#x} "
                f"hva={self.userspace_addr:#x} flags={flag_names(self.flags)})")


def kvm_copy_memslot(dest, src):
    """Copy every field but the tree nodes from ``src`` into ``dest``.

    Models ``kvm_copy_memslot`` (reference §2.1): the dirty bitmap pointer and
    the arch data are shared, not duplicated.

    >>> a = Memslot(id=3, npages=2); a.dirty_bitmap = Allocation(label="bm", kind="dirty_bitmap")
    >>> b = Memslot(); kvm_copy_memslot(b, a); b.id, b.dirty_bitmap is a.dirty_bitmap
    (3, True)
    """
    for name in ("base_gfn", "npages", "dirty_bitmap", "arch", "gmem", "userspace_addr", "flags", "id", "as_id"):
        setattr(dest, name, getattr(src, name))
