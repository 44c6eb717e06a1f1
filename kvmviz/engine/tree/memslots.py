"""``struct kvm_memslots``: one memslot set (reference §1.3, §2.1, §5).

A set has a generation, a ``last_used_slot`` cache, a gfn-ordered tree, an hva
interval tree, an id hash of 128 buckets and a fixed ``node_idx``. Every edit
goes through ``replace`` (``kvm_replace_memslot``), which the protocol only
ever calls on the inactive set.

>>> from kvmviz.engine.memslot import Memslot
>>> s = MemslotSet(as_id=0, node_idx=1)
>>> a = Memslot(uid=1, id=1, base_gfn=0x100, npages=0x100, userspace_addr=0x10000000)
>>> s.replace(None, a)
>>> s.gfn_to_memslot(0x1ff) is a, s.gfn_to_memslot(0x200), s.last_used_slot is a
(True, None, True)
>>> [m.label for m in s.iter_gfn_range(0, 0x101)], s.id_to_memslot(1) is a
(['#1'], True)
"""

from collections import Counter

from sortedcontainers import SortedDict

from ..constants import GOLDEN_RATIO_32, ID_HASH_BITS
from ..errors import ModelBug
from ..history import MISSING, Journaled, swap_item, watched
from .interval_tree import IntervalTree


def hash_32(val, bits=ID_HASH_BITS):
    """Bucket of a slot id in ``id_hash``: the kernel's ``hash_32``.

    >>> hash_32(0), hash_32(1), hash_32(2)
    (0, 48, 97)
    """
    return ((val * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def _tree_cost(n):
    # nodes a balanced search tree of n nodes visits on one descent
    return n.bit_length() or 1


def _gfn_apply(s, key, slot):
    """Journal apply: the gfn tree of set ``s`` maps ``key`` to ``slot`` (``MISSING``: to nothing); returns what it did."""
    old = s.gfn_tree.get(key, MISSING)
    if old is not MISSING:
        s._gfn_take(key)
    if slot is not MISSING:
        s._gfn_put(key, slot)
    return old


def _hva_apply(s, slot, span):
    """Journal apply: ``slot`` is in the hva tree of set ``s`` at ``span = (start, last)`` (``MISSING``: not).

    Returns the span it had. Finding the node is replay, not counted work.
    """
    visited = s.hva_tree.visited
    old = s._hva_take(slot)
    s.hva_tree.visited = visited
    if span is not MISSING:
        s._hva_put(slot, *span)
    return old


class MemslotSet(Journaled):
    """One of the two sets of an address space (``__memslots[as][node_idx]``)."""

    __slots__ = ("as_id", "node_idx", "name", "_generation", "last_used_slot",
                 "gfn_tree", "hva_tree", "id_hash", "cost", "edits", "_hva_spans")
    #: The set's generation (``watched``: ``VM.generations`` caches on it).
    generation = watched("generation")

    def __init__(self, history=None, *, as_id=0, node_idx=0, cost=None):
        super().__init__(history, as_id=as_id, node_idx=node_idx, name=f"as{as_id}/set{node_idx}", generation=as_id,
                         last_used_slot=None, gfn_tree=SortedDict(),
                         hva_tree=IntervalTree(tie=lambda slot: slot.uid),
                         id_hash=[{} for _ in range(1 << ID_HASH_BITS)],
                         cost=cost if cost is not None else Counter(), edits=0, _hva_spans={})

    # -- the three indexes, each change journaled (``_gfn_apply``, ``_hva_apply``) --
    def hash_add(self, slot):
        """``hash_add`` of ``slot.id_node[node_idx]`` (O(1)).

        The bucket keeps one slot per id, so a second slot with the same id
        (only a broken variant makes one) hides the first; the journal keeps
        the hidden one, so undo restores the bucket exactly.
        """
        id = slot.id
        bucket = self.id_hash[hash_32(id)]
        self.cost["hash_ops"] += 1
        old = bucket.get(id, MISSING)
        bucket[id] = slot
        if self._history is not None:
            self._history.log(swap_item, bucket, id, old)

    def hash_del(self, slot):
        """``hash_del`` of ``slot.id_node[node_idx]`` (O(1))."""
        bucket = self.id_hash[hash_32(slot.id)]
        key = slot.id if bucket.get(slot.id) is slot else next((k for k, v in bucket.items() if v is slot), MISSING)
        if key is MISSING:
            raise ModelBug(f"{slot.label} is not in the id hash of {self.name}")
        self.cost["hash_ops"] += 1
        del bucket[key]
        if self._history is not None:
            self._history.log(swap_item, bucket, key, slot)

    def hva_insert(self, slot):
        """Insert ``slot.hva_node[node_idx]`` into the interval tree (O(log n))."""
        self._hva_put(slot, slot.userspace_addr, slot.hva_last)
        self.cost["hva_tree_nodes"] += _tree_cost(len(self.hva_tree))
        if self._history is not None:
            self._history.log(_hva_apply, self, slot, MISSING)

    def hva_remove(self, slot):
        """Remove ``slot.hva_node[node_idx]`` from the interval tree (O(log n))."""
        n = len(self.hva_tree)
        span = self._hva_take(slot)
        if span is MISSING:
            raise ModelBug(f"{slot.label} is not in the hva tree of {self.name}")
        self.cost["hva_tree_nodes"] += _tree_cost(n)
        if self._history is not None:
            self._history.log(_hva_apply, self, slot, span)

    def _hva_put(self, slot, start, last):
        self.hva_tree.insert(start, last, slot)
        self._hva_spans[slot] = start

    def _hva_take(self, slot):
        """Take ``slot``'s node out of the hva tree; returns the ``(start, last)`` it had, or ``MISSING``.

        The node keeps the range it was inserted with, even if a broken
        variant later rewrote the slot's fields in place. The set knows where
        it inserted each slot (O(log n)); a tree edited behind the set's back
        (a corruption test) is searched.
        """
        start = self._hva_spans.pop(slot, None)
        if start is not None:
            try:
                return start, self.hva_tree.remove(start, slot)
            except KeyError:
                pass
        for start, last, value in self.hva_tree:
            if value is slot:
                self.hva_tree.remove(start, slot)
                return start, last
        return MISSING

    def gfn_insert(self, slot):
        """``kvm_insert_gfn_node``: O(log n); a duplicate base_gfn is a kernel BUG()."""
        key = slot.base_gfn
        tree = self.gfn_tree
        if key in tree:
            raise ModelBug(f"BUG: {self.name} already has a slot at gfn {key:#x}")
        self._gfn_put(key, slot)
        self.cost["gfn_tree_nodes"] += _tree_cost(len(tree))
        if self._history is not None:
            self._history.log(_gfn_apply, self, key, MISSING)

    def gfn_erase(self, slot):
        """``kvm_erase_gfn_node``: O(log n)."""
        key = self._gfn_key(slot)
        self.cost["gfn_tree_nodes"] += _tree_cost(len(self.gfn_tree))
        self._gfn_take(key)
        if self._history is not None:
            self._history.log(_gfn_apply, self, key, slot)

    def gfn_replace(self, old, new):
        """``kvm_replace_gfn_node``: O(1) ``rb_replace_node``; same base_gfn only."""
        key = self._gfn_key(old)
        if key != new.base_gfn:
            raise ModelBug(f"WARN: O(1) replace of {old.label} by {new.label} with a different base_gfn")
        self._gfn_take(key)
        self._gfn_put(key, new)
        self.cost["gfn_tree_nodes"] += 1
        if self._history is not None:
            self._history.log(_gfn_apply, self, key, old)

    def _gfn_key(self, slot):
        key = slot.base_gfn
        if self.gfn_tree.get(key) is slot:
            return key
        for key, value in self.gfn_tree.items():
            if value is slot:
                return key
        raise ModelBug(f"{slot.label} is not in the gfn tree of {self.name}")

    def _gfn_put(self, key, slot):
        self.gfn_tree[key] = slot
        object.__setattr__(slot, "nodes", slot.nodes | (1 << self.node_idx))

    def _gfn_take(self, key):
        slot = self.gfn_tree.pop(key)
        object.__setattr__(slot, "nodes", slot.nodes & ~(1 << self.node_idx))

    # -- kvm_replace_memslot -------------------------------------------------
    def replace(self, old, new):
        """Replace ``old`` by ``new`` in this set (either may be None).

        Models ``kvm_replace_memslot`` (reference §2.1) on the set it is given;
        the caller passes the inactive set. The gfn tree uses the O(1) replace
        when ``base_gfn`` is unchanged; the hva tree always removes and inserts.
        ``edits`` counts the calls, so a reader that pinned the set can tell.
        """
        self.edits += 1
        if old is not None:
            self.hash_del(old)
            self.hva_remove(old)
            if self.last_used_slot is old:
                self.last_used_slot = new
            if new is None:
                self.gfn_erase(old)
                return
        self.hash_add(new)
        self.hva_insert(new)
        if old is not None and old.base_gfn == new.base_gfn:
            self.gfn_replace(old, new)
        else:
            if old is not None:
                self.gfn_erase(old)
            self.gfn_insert(new)

    # -- lookups (reference §5) ---------------------------------------------
    def id_to_memslot(self, id):
        """``id_to_memslot``: walk the id's hash bucket (O(1) expected)."""
        self.cost["hash_ops"] += 1
        return self.id_hash[hash_32(id)].get(id)

    def search_memslots(self, gfn):
        """``search_memslots`` (non-approx): the slot containing ``gfn`` or None."""
        tree = self.gfn_tree
        self.cost["gfn_tree_nodes"] += _tree_cost(len(tree))
        i = tree.bisect_right(gfn) - 1
        if i < 0:
            return None
        slot = tree.values()[i]
        return slot if gfn < slot.end_gfn else None

    def gfn_to_memslot(self, gfn):
        """``____gfn_to_memslot``: try ``last_used_slot``, then search and cache."""
        cached = self.last_used_slot
        if cached is not None and cached.base_gfn <= gfn < cached.end_gfn:
            return cached
        slot = self.search_memslots(gfn)
        if slot is not None:
            self.last_used_slot = slot
        return slot

    def iter_gfn_range(self, start, end):
        """``kvm_for_each_memslot_in_gfn_range``: slots meeting ``[start, end)``.

        O(log n + k) (reference §5.2).
        """
        tree = self.gfn_tree
        n = len(tree)
        if not n:
            return
        self.cost["gfn_tree_nodes"] += _tree_cost(n)
        i = tree.bisect_right(start)
        i = n - 1 if i == n else max(i - 1, 0)
        values = tree.values()
        if values[i].end_gfn <= start:
            i += 1
        while i < n and values[i].base_gfn < end:
            self.cost["gfn_tree_nodes"] += 1
            yield values[i]
            i += 1

    def iter_hva_range(self, start, last):
        """``kvm_for_each_memslot_in_hva_range``: slots meeting ``[start, last]``."""
        before = self.hva_tree.visited
        hits = [slot for _, _, slot in self.hva_tree.query(start, last)]
        self.cost["hva_tree_nodes"] += self.hva_tree.visited - before
        return hits

    def slots(self):
        """All slots in gfn order."""
        return list(self.gfn_tree.values())

    def __len__(self):
        return len(self.gfn_tree)

    def __contains__(self, slot):
        return self.gfn_tree.get(slot.base_gfn) is slot

    def __repr__(self):
        return f"<{self.name} gen={self.generation:#x} slots={len(self)}>"
