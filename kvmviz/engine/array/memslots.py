"""``struct kvm_memslots`` of Linux 5.10-5.15: slot values in one sorted array (reference §6).

One allocated structure per address space holds a header (``generation``,
``last_used_slot`` as an array **index**, ``used_slots``, ``id_to_index`` of
``KVM_MEM_SLOTS_NUM`` shorts) and the slots themselves, by value, sorted by
``base_gfn`` **descending** (reference §6.1). Every update duplicates the
whole structure (``kvm_dup_memslots``), edits the copy (``update_memslots``,
which re-sorts by shifting entries) and installs it.

Entries are value records (``list``s indexed by the ``BASE``..``UID``
constants). The model never changes a record that a structure holds: an
edit stores a new record in the scratch copy (copy on write), so copying
the array's references is a copy of the values. ``kvm_dup_memslots`` and the
shifts of ``update_memslots`` thus run as C-level slice copies, at the speed
of the kernel's ``memcpy``/``memmove``, while the cost counters still count
every slot copied and every entry shifted (the O(n) work of 5.15). A write
into a held record (a broken variant, a test's corruption) is an in-place
write, seen by every structure and reader holding it, which the checker's
in-place rule reports. The overlap check of each ioctl is a real O(n) loop;
the hva walk of each MMU-notifier event is counted as O(n) but finds its
hits through ``HvaIndex``, since a memslot_perf_test iteration makes 65536
such walks. ``ArraySlot`` is a read/write view of one record for the public
API (``.id``, ``.base_gfn``, ``.label``, ...). A value has no identity:
compare views with ``.values()``, not ``is``. The ``label`` (``#uid``) names
the update that wrote the value, so a learner can follow an entry as it is
shifted and copied.

>>> s = ArrayMemslots(as_id=0)
>>> for uid, gfn in ((1, 0x100000), (2, 0xc0000), (3, 0x0), (4, 0x80000)):
...     _ = s.update_memslots(new_entry(uid=uid, id=uid, base_gfn=gfn, npages=0x10), "CREATE")
>>> [e.label for e in s.entries()], s.used_slots, s.id_to_index[4]
(['#1', '#2', '#4', '#3'], 4, 2)
>>> s.gfn_to_memslot(0x80001).label, s.last_used_slot
('#4', 2)
"""

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from itertools import accumulate, count
from operator import neg

from ..constants import KVM_MEM_SLOTS_NUM, KVM_MEMSLOT_INVALID, PAGE_SHIFT, SIZEOF_KVM_MEMORY_SLOT, flag_names
from ..history import Journaled, watched

#: The journal's key for a structure's whole contents (``ArrayMemslots[CONTENTS]``).
CONTENTS = "contents"
#: Fields of an entry record, in the order the record stores them.
BASE, NPAGES, FLAGS, HVA, ID, AS, BITMAP, ARCH, UID = range(9)

#: ``id_to_index``: one short per possible slot id (reference §6.1: ~64 KiB).
SIZEOF_ID_TO_INDEX = 2 * KVM_MEM_SLOTS_NUM
#: Header of ``struct kvm_memslots`` in 5.15: u64 generation, atomic_t
#: last_used_slot, int used_slots, then ``id_to_index``; padded to 8 bytes.
SIZEOF_MEMSLOTS_HEADER = (8 + 4 + 4 + SIZEOF_ID_TO_INDEX + 7) // 8 * 8


def kvm_memslots_size(nslots):
    """Bytes of a ``struct kvm_memslots`` holding ``nslots`` slot values.

    Models ``kvm_memslots_size`` of 5.15 (reference §6.1, §6.3): the header
    with ``id_to_index`` plus 88 bytes per slot.

    >>> kvm_memslots_size(0), kvm_memslots_size(32764)
    (65552, 2948784)
    """
    return SIZEOF_MEMSLOTS_HEADER + nslots * SIZEOF_KVM_MEMORY_SLOT


def new_entry(*, uid=0, id=0, as_id=0, base_gfn=0, npages=0, flags=0, userspace_addr=0):
    """A fresh, writable slot value record (a zeroed ``struct kvm_memory_slot`` filled in).

    >>> ArraySlot(new_entry(uid=7, id=2, base_gfn=0x10, npages=1))
    #7(id=2 as=0 gfn=0x10..0x10 hva=0x0 flags=-)
    """
    return [base_gfn, npages, flags, userspace_addr, id, as_id, None, None, uid]


def _field(i, doc):
    def get(self):
        return self.entry[i]

    def put(self, value):
        self.entry[i] = value
    return property(get, put, doc=doc)


class ArraySlot:
    """A view of one slot value (``struct kvm_memory_slot`` inside the array).

    Reads and writes go to the record it wraps; the protocol only writes
    records that no structure holds (the stack ``new``, the ``old`` copy).

    >>> v = ArraySlot(new_entry(uid=1, id=3, base_gfn=0x100, npages=2, flags=KVM_MEMSLOT_INVALID))
    >>> v.end_gfn, v.invalid, v.values()
    (258, True, (3, 0, 256, 2, 65536, 0))
    """

    __slots__ = ("entry",)
    freed = False          # values are never freed one by one: their structure is
    gmem = None            # 5.15 has no guest_memfd

    def __init__(self, entry):
        self.entry = entry

    base_gfn = _field(BASE, "First gfn.")
    npages = _field(NPAGES, "Size in pages.")
    flags = _field(FLAGS, "Slot flags (KVM_MEMSLOT_INVALID is bit 16).")
    userspace_addr = _field(HVA, "hva of the first page.")
    id = _field(ID, "Slot id.")
    as_id = _field(AS, "Address space.")
    dirty_bitmap = _field(BITMAP, "The dirty bitmap ``Allocation`` or None.")
    arch = _field(ARCH, "The x86 arch metadata ``Allocation`` or None.")
    uid = _field(UID, "Serial of the update that wrote this value.")

    @property
    def label(self):
        """Display name of the value, e.g. ``#7``."""
        return f"#{self.entry[UID]}"

    @property
    def end_gfn(self):
        """First gfn after the slot."""
        return self.entry[BASE] + self.entry[NPAGES]

    @property
    def hva_last(self):
        """Last byte of the slot's hva range (inclusive)."""
        return self.entry[HVA] + (self.entry[NPAGES] << PAGE_SHIFT) - 1

    @property
    def invalid(self):
        """True while ``KVM_MEMSLOT_INVALID`` is set on this value."""
        return bool(self.entry[FLAGS] & KVM_MEMSLOT_INVALID)

    def values(self):
        """The userspace-visible values, as ``Memslot.values()`` returns them."""
        e = self.entry
        return (e[ID], e[AS], e[BASE], e[NPAGES], e[FLAGS], e[HVA])

    def __repr__(self):
        return (f"{self.label}(id={self.id} as={self.as_id} gfn={self.base_gfn:#x}..{self.end_gfn - 1:#x} "
                f"hva={self.userspace_addr:#x} flags={flag_names(self.flags)})")


def _hva_end(entry):
    """First hva after the slot."""
    return entry[HVA] + (entry[NPAGES] << PAGE_SHIFT)


class GfnColumns:
    """Each entry's base gfn, end gfn and id in packed arrays, in the array's order (not a kernel structure).

    The records are objects scattered in memory, so a Python loop over them
    waits for the cache at every entry; the overlap scan, the search for the
    run of entries a shift moves and the ``id_to_index`` stores read these
    contiguous columns instead. ``ArrayMemslots`` edits them with its
    records (slice moves: a ``memmove``); ``entries``, the records they
    describe, is compared with the array (C speed, identity first) before
    use, so columns that missed a change behind the structure's back are
    rebuilt, never used.

    >>> c = GfnColumns([new_entry(id=1, base_gfn=0x20, npages=2), new_entry(id=2, base_gfn=0x10, npages=1)])
    >>> list(c.bases), list(c.ends), list(c.ids)
    ([32, 16], [34, 17], [1, 2])
    """

    __slots__ = ("entries", "bases", "ends", "ids")

    def __init__(self, entries=(), columns=None):
        self.entries = list(entries)
        self.bases, self.ends, self.ids = columns or (array("q", [e[BASE] for e in self.entries]),
                                                      array("q", [e[BASE] + e[NPAGES] for e in self.entries]),
                                                      array("h", [e[ID] for e in self.entries]))

    def copy(self):
        """A copy (C-level copies of the four sequences)."""
        return GfnColumns(self.entries, (self.bases[:], self.ends[:], self.ids[:]))

    def _all(self):
        return self.entries, self.bases, self.ends, self.ids

    def move(self, dst, start, end):
        """Move entries ``start..end-1`` to ``dst`` (one slice each)."""
        for column in self._all():
            column[dst:dst + end - start] = column[start:end]

    def put(self, i, entry):
        """Entry ``i`` is now ``entry``."""
        self.entries[i], self.bases[i], self.ends[i], self.ids[i] = entry, entry[BASE], entry[BASE] + entry[NPAGES], \
            entry[ID]

    def grow(self):
        """One more place at the end (filled by ``put``)."""
        for column, blank in zip(self._all(), (None, 0, 0, -1)):
            column.append(blank)

    def delete(self, i):
        """Drop entry ``i``; the later ones move one place forward."""
        for column in self._all():
            del column[i]


class HvaIndex:
    """The entries of one array sorted by hva: where the model's hva walk finds its hits.

    Not a kernel structure. 5.15 walks every entry for each MMU-notifier
    event (reference §5.3); the model counts that walk (``ArrayMemslots.
    iter_hva_range``) and answers it here in O(log n + hits). ``entries`` is
    the snapshot it was built from: comparing it with the array's entries
    (C speed, identity first) touches each entry, as the kernel's walk does,
    and finds any record stored since, so a stale index is never used
    (records are never changed in place, see the module doc).

    >>> e = [new_entry(id=i, base_gfn=i, npages=1, userspace_addr=0x1000 * (3 - i)) for i in range(3)]
    >>> HvaIndex(e).hits(0x1800, 0x2000)
    [1, 2]
    """

    __slots__ = ("entries", "order", "starts", "reach")

    def __init__(self, entries):
        self.entries = entries[:]
        self.order = sorted(range(len(entries)), key=lambda i: entries[i][HVA])
        self.starts = [entries[i][HVA] for i in self.order]
        # reach[j]: the furthest hva end among the j+1 lowest-starting entries
        self.reach = list(accumulate((_hva_end(entries[i]) for i in self.order), max))

    def hits(self, start, last):
        """Array indexes, ascending, of the entries whose hvas meet ``[start, last]``."""
        out, j = [], bisect_right(self.starts, last) - 1
        while j >= 0 and self.reach[j] > start:
            i = self.order[j]
            if _hva_end(self.entries[i]) > start:
                out.append(i)
            j -= 1
        return sorted(out)


class ArrayMemslots(Journaled):
    """One allocated ``struct kvm_memslots`` of 5.15 (see module doc).

    ``node_idx`` is the structure's position in ``vm.sets[as_id]`` (0: the
    active one, 1: the scratch copy), kept so steps can name what they touched.

    ``memslots`` holds exactly ``used_slots`` records, highest ``base_gfn``
    first; ``id_to_index`` is an ``array('h')`` of 32767 shorts (-1: absent).
    Container edits are journaled as before/after snapshots when the VM keeps
    history (O(n) per edit, at C speed: the records are immutable and shared).

    >>> s = ArrayMemslots(as_id=0)
    >>> _ = s.update_memslots(new_entry(uid=1, id=5, base_gfn=0x10, npages=4), "CREATE")
    >>> dup = s.kvm_dup_memslots(seq=2, change="MOVE")
    >>> dup.name, dup.memslots == s.memslots, dup.memslots is s.memslots
    ('as0/memslots@2', True, False)
    >>> s.cost["bytes_copied"] - 2 * 88, s.cost["slots_copied"]      # header + one slot value
    (65552, 1)
    """

    __slots__ = ("as_id", "seq", "node_idx", "_generation", "used_slots", "last_used_slot",
                 "memslots", "id_to_index", "freed", "cost", "_hva_index", "_columns")
    #: The structure's generation (``watched``: ``VM.generations`` caches on it).
    generation = watched("generation")

    def __init__(self, history=None, *, as_id=0, seq=0, node_idx=0, cost=None):
        super().__init__(history, as_id=as_id, seq=seq, node_idx=node_idx, generation=as_id, used_slots=0,
                         last_used_slot=0, memslots=[], id_to_index=array("h", [-1]) * KVM_MEM_SLOTS_NUM,
                         freed=False, cost=cost if cost is not None else Counter(), _hva_index=None,
                         _columns=GfnColumns())

    @property
    def name(self):
        """Display name: address space and the update that allocated it."""
        return f"as{self.as_id}/memslots@{self.seq}"

    @property
    def label(self):
        """Same as ``name`` (``vm.free`` reports labels)."""
        return self.name

    # -- copies (reference §6.3 steps 1-2) -----------------------------------
    def kvm_dup_memslots(self, seq, change):
        """``kvm_dup_memslots``: allocate a new structure and copy this one into it.

        Copies the header with ``id_to_index`` and every slot value: O(n)
        on every update. The kernel sizes the copy for one more slot on CREATE.
        """
        dup = ArrayMemslots(self._history, as_id=self.as_id, seq=seq, node_idx=1, cost=self.cost)
        self.cost["arrays_allocated"] += 1
        self.cost["bytes_allocated"] += kvm_memslots_size(self.used_slots + (change == "CREATE"))
        dup._copy_containers(self)
        for name in ("generation", "used_slots", "last_used_slot"):
            object.__setattr__(dup, name, getattr(self, name))
        return dup

    def kvm_copy_memslots(self, src):
        """``kvm_copy_memslots``: overwrite this (scratch) structure with ``src``.

        The second O(n) copy of a 5.15 DELETE/MOVE, after retaking
        ``slots_arch_lock`` (reference §6.3 step 2).
        """
        self._edit(lambda: self._copy_containers(src))
        self.generation = src.generation
        self.used_slots = src.used_slots
        self.last_used_slot = src.last_used_slot

    def _copy_containers(self, src):
        # records are never written in place, so a slice copy of the array copies the values (a memcpy)
        object.__setattr__(self, "memslots", src.memslots[:])
        object.__setattr__(self, "_columns", src.columns().copy())
        object.__setattr__(self, "_hva_index", src._hva_index)        # still valid while nothing changes
        object.__setattr__(self, "id_to_index", array("h", src.id_to_index))
        self.cost["slots_copied"] += src.used_slots
        self.cost["bytes_copied"] += kvm_memslots_size(src.used_slots)

    def _edit(self, change):
        """Run ``change`` on the containers, journaling before/after snapshots as one item, ``CONTENTS``.

        An item, not a pair of callables, so ``History.peek`` can read what
        the structure held at any event.
        """
        h = self._history
        if h is None or not h.enabled:
            change()
            return
        before = self._containers()
        change()
        h.log_item(self, CONTENTS, before)

    def columns(self):
        """The ``GfnColumns`` of the entries (rebuilt if the array changed behind the structure's back)."""
        columns = self._columns
        if columns.entries != self.memslots:
            columns = GfnColumns(self.memslots)
            object.__setattr__(self, "_columns", columns)
        return columns

    def _containers(self):
        return tuple(self.memslots), self.id_to_index.tobytes()      # the records themselves never change

    def __getitem__(self, key):
        """``self[CONTENTS]``: the entries and ``id_to_index`` as immutable values (for the journal)."""
        if key != CONTENTS:
            raise KeyError(key)
        return self._containers()

    def __setitem__(self, key, state):
        """``self[CONTENTS] = state``: restore a snapshot (the journal's undo and redo)."""
        if key != CONTENTS:
            raise KeyError(key)
        entries, index = state
        object.__setattr__(self, "memslots", list(entries))
        restored = array("h")
        restored.frombytes(index)
        object.__setattr__(self, "id_to_index", restored)

    # -- edits on the scratch copy -----------------------------------------------
    def set_flags(self, id, flags):
        """Write ``flags`` into the entry of slot ``id`` (set/clear INVALID)."""
        i = self.id_to_index[id]
        entry = self.memslots[i].copy()                     # copy on write: other structures hold the record
        entry[FLAGS] = flags
        self.columns()
        self._edit(lambda: self._put(i, entry))
        return i

    def _put(self, i, entry):
        # the callers checked the columns once (``columns()``); the edits keep them in step
        self._columns.put(i, entry)
        self.memslots[i] = entry

    def update_memslots(self, new, change):
        """``update_memslots``: apply ``change`` for the slot value ``new``; O(n).

        DELETE drops the entry of ``new[ID]``; CREATE appends and moves it
        forward; MOVE/FLAGS_ONLY move it backward then forward, shifting the
        entries in between one place (reference §6.2). Returns
        ``(old_index, new_index, shifted)``.

        >>> s = ArrayMemslots()
        >>> [s.update_memslots(new_entry(id=i, base_gfn=0x10 * i, npages=1), "CREATE") for i in range(3)]
        [(0, 0, 0), (1, 0, 1), (2, 0, 2)]
        >>> s.update_memslots(new_entry(id=2, base_gfn=0x5, npages=1), "MOVE"), [e[ID] for e in s.memslots]
        ((0, 1, 1), [1, 2, 0])
        """
        result = []
        self._edit(lambda: result.append(self._update(new, change)))
        if change == "DELETE":
            self.used_slots -= 1
            if self.last_used_slot >= self.used_slots:
                self.last_used_slot = 0
        elif change == "CREATE":
            self.used_slots += 1
        return result[0]

    def _update(self, new, change):
        slots, index, columns = self.memslots, self.id_to_index, self.columns()
        if change == "DELETE":
            i = index[new[ID]]
            shifted = len(slots) - 1 - i
            del slots[i]                    # the later entries shift one place forward
            columns.delete(i)
            self._reindex(i, len(slots))
            index[new[ID]] = -1
            self._count_shifts(shifted)
            return i, -1, shifted
        if change == "CREATE":
            start = len(slots)
            slots.append(None)
            columns.grow()
            end = start
        else:
            start = index[new[ID]]
            end = self.kvm_memslot_move_backward(start, new[BASE])
        i = self.kvm_memslot_move_forward(end, new[BASE])
        self._put(i, new.copy())
        index[new[ID]] = i
        shifted = end - start + end - i
        self._count_shifts(shifted)
        return start, i, shifted

    def kvm_memslot_move_backward(self, i, gfn):
        """``kvm_memslot_move_backward``: entries after ``i`` at or above ``gfn`` shift one place forward.

        The kernel shifts them one by one; the entries that shift are a run
        (the array is sorted), found by binary search and moved as one slice.
        Returns the index of the hole left behind the run.

        >>> s = ArrayMemslots()
        >>> for i in range(4):
        ...     _ = s.update_memslots(new_entry(id=i, base_gfn=0x10 * i, npages=1), "CREATE")
        >>> s.kvm_memslot_move_backward(0, 0x15), [e[ID] for e in s.memslots], s.id_to_index[2]
        (1, [2, 2, 1, 0], 0)
        """
        slots, columns = self.memslots, self._columns         # checked by update_memslots
        end = bisect_right(columns.bases, -gfn, i + 1, len(slots), key=neg) - 1
        if end > i:
            slots[i:end] = slots[i + 1:end + 1]
            columns.move(i, i + 1, end + 1)
            self._reindex(i, end)
        return end

    def kvm_memslot_move_forward(self, i, gfn):
        """``kvm_memslot_move_forward``: entries before ``i`` at or below ``gfn`` shift one place back.

        As ``kvm_memslot_move_backward``, one slice move; returns the index
        where the value belongs.
        """
        slots, columns = self.memslots, self._columns
        start = bisect_left(columns.bases, -gfn, 0, i, key=neg)
        if start < i:
            slots[start + 1:i + 1] = slots[start:i]
            columns.move(start + 1, start, i)
            self._reindex(start + 1, i + 1)
        return start

    def _reindex(self, start, end):
        """``id_to_index`` follows the entries at ``start..end-1``: one store each, as in the kernel."""
        index = self.id_to_index
        for j, id in enumerate(self._columns.ids[start:end], start):
            index[id] = j

    def _count_shifts(self, shifted):
        # each shift is one struct assignment, plus the final write of the value
        self.cost["entries_shifted"] += shifted
        self.cost["bytes_copied"] += (shifted + 1) * SIZEOF_KVM_MEMORY_SLOT

    # -- lookups (reference §6.4, §5.3) -------------------------------------------
    def id_to_memslot(self, id):
        """``id_to_memslot``: ``id_to_index[id]``, O(1); None if absent."""
        self.cost["array_index_ops"] += 1
        i = self.id_to_index[id]
        return ArraySlot(self.memslots[i]) if i >= 0 else None

    def search_memslots(self, gfn):
        """``search_memslots``: binary search on the descending array; the index or -1.

        >>> s = ArrayMemslots()
        >>> for i, gfn in enumerate((0x0, 0x100)):
        ...     _ = s.update_memslots(new_entry(id=i, base_gfn=gfn, npages=0x10), "CREATE")
        >>> s.search_memslots(0x105), s.search_memslots(0x5), s.search_memslots(0x50)
        (0, 1, -1)
        """
        slots = self.memslots
        lo, hi = 0, len(slots)
        while lo < hi:
            mid = (lo + hi) // 2
            self.cost["array_search_probes"] += 1
            if gfn >= slots[mid][BASE]:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(slots) and gfn < slots[lo][BASE] + slots[lo][NPAGES]:
            return lo
        return -1

    def gfn_to_memslot(self, gfn):
        """``__gfn_to_memslot`` (5.15): try the cached index, then search and cache."""
        slots, i = self.memslots, self.last_used_slot
        if i < len(slots) and slots[i][BASE] <= gfn < slots[i][BASE] + slots[i][NPAGES]:
            return ArraySlot(slots[i])
        i = self.search_memslots(gfn)
        if i < 0:
            return None
        self.last_used_slot = i
        return ArraySlot(slots[i])

    def iter_gfn_range(self, start, end):
        """Slots meeting ``[start, end)``, ascending: a linear scan of every entry.

        Models the O(n) ``kvm_for_each_memslot`` walk of the 5.15 overlap
        check (reference §6.3).
        """
        slots, columns = self.memslots, self.columns()
        self.cost["array_entries_scanned"] += len(slots)
        hits = [j for j, base, stop in zip(count(), columns.bases, columns.ends) if base < end and start < stop]
        return [ArraySlot(slots[j]) for j in reversed(hits)]

    def iter_hva_range(self, start, last):
        """Slots whose hva range meets ``[start, last]``, in array order (reference §5.3).

        The kernel walks all entries; that O(n) walk is counted, and the hits
        come from the array's ``HvaIndex`` (rebuilt when the entries changed).

        >>> s = ArrayMemslots()
        >>> for i in range(3):
        ...     _ = s.update_memslots(new_entry(id=i, base_gfn=0x10 * i, npages=1, userspace_addr=0x1000 * i), "CREATE")
        >>> [v.id for v in s.iter_hva_range(0, 0x1000)], s.cost["array_entries_scanned"]
        ([1, 0], 3)
        """
        slots = self.memslots
        self.cost["array_entries_scanned"] += len(slots)
        index = self._hva_index
        if index is None or index.entries != slots:
            index = HvaIndex(slots)
            object.__setattr__(self, "_hva_index", index)
        return [ArraySlot(slots[i]) for i in index.hits(start, last)]

    def entries(self):
        """The array as the kernel holds it: views, highest gfn first."""
        return [ArraySlot(e) for e in self.memslots]

    def slots(self):
        """All slots in ascending gfn order (as ``MemslotSet.slots``)."""
        return self.entries()[::-1]

    def __len__(self):
        return self.used_slots

    def __repr__(self):
        return f"<{self.name} gen={self.generation:#x} used_slots={self.used_slots}>"


def initial_sets(history, cost, address_spaces=2):
    """``kvm_create_vm`` (5.15): one empty structure per address space.

    Returned in the ``vm.sets`` layout of the array model: per address space
    ``(active, inactive view)``, both the same structure at rest.

    >>> [(a.name, a is b, a.generation) for a, b in initial_sets(None, None)]
    [('as0/memslots@0', True, 0), ('as1/memslots@0', True, 1)]
    """
    return tuple((s, s) for s in (ArrayMemslots(history, as_id=a, cost=cost)
                                  for a in range(address_spaces)))

