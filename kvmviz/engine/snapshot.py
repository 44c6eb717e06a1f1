"""The VM as it was right after history event k, read without moving anything (``state_at``).

Not a kernel concept: pictures of steps other than the current one (the
HTML player's frames, the reader lanes of a timeline) need the memslot
sets, generations, locks and SRCU readers at any event. ``state_at`` reads
them from the journal (``History.peek``): the VM, its history cursor and
its objects stay exactly as they are. The result answers the read-only
questions pictures ask a VM (``sets``, ``active_idx``, ``generations()``,
``active_set``, ``unlinked_slots``, ``locks``, ``history.events``, the
version), so the plotting functions take it in place of the VM.

>>> from kvmviz import VM
>>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
>>> then = state_at(vm, 6)          # after kvm_create_memslot: only the inactive set holds #1
>>> [len(s) for s in then.sets[0]], then.active_idx[0], [len(s) for s in vm.sets[0]], vm.history.cursor
([0, 1], 0, [1, 1], 15)
"""

from collections import namedtuple

from .array.memslots import CONTENTS, ArraySlot

#: The part of ``History`` pictures read: the events, and the cursor (= the event looked at).
HistoryView = namedtuple("HistoryView", "events cursor")


def state_at(vm, k):
    """``vm`` right after its history event ``k`` (0: before the first), as a read-only ``VmState``.

    >>> from kvmviz import VM
    >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> state_at(vm, 0).generations()[0], state_at(vm, 8).generations()[0], vm.generations()[0]
    ((0, 0, 0), (0, 9223372036854775808, 1), (0, 2, 1))
    """
    return VmState(vm, k)


class VmState:
    """What ``vm`` held after event ``k``; built lazily from ``vm.history.peek(k)``."""

    def __init__(self, vm, k):
        self._vm, self._peek = vm, vm.history.peek(k)
        self.history = HistoryView(vm.history.events, k)
        self.kernel, self.variant = vm.kernel, vm.variant
        self.address_spaces, self.implementation = vm.address_spaces, vm.implementation
        self.active_idx = self._peek.attr(vm, "active_idx")
        self.locks = self._peek.attr(vm, "locks")
        self._sets = None

    @property
    def sets(self):
        """Per address space, the two sets (5.15: the structure and its scratch view), as they were."""
        if self._sets is None:
            seen = {}
            read = _TreeSet if self.implementation == "tree" else _Structure
            self._sets = tuple(tuple(seen.setdefault(id(s), read(s, self._peek)) for s in pair)
                               for pair in self._peek.attr(self._vm, "sets"))
        return self._sets

    def active_set(self, as_id=0):
        """The set ``kvm->memslots[as_id]`` pointed to."""
        return self.sets[as_id][self.active_idx[as_id]]

    def generations(self):
        """Per address space: (set0 generation, set1 generation, active node_idx), as ``VM.generations``."""
        return tuple((self._peek.attr(a, "generation"), self._peek.attr(b, "generation"), active)
                     for (a, b), active in zip(self._peek.attr(self._vm, "sets"), self.active_idx))

    def generation(self, as_id=0):
        """The active set's generation of ``as_id``."""
        return self.generations()[as_id][self.active_idx[as_id]]

    def unlinked_slots(self, as_id=0):
        """Slot structs the call had allocated and no set held yet (see ``VM.unlinked_slots``)."""
        _call, held_as, held = self._peek.attr(self._vm, "writer_slots")
        if held_as != as_id or self.implementation != "tree":
            return []
        linked = {s.uid for st in self.sets[as_id] for s in st.slots()}
        return [_slot_at(s, self._peek) for s in held if s.uid not in linked and not self._peek.attr(s, "freed")]

    @property
    def readers(self):
        """``((name, pinned node_idx per address space or None), ...)`` of the SRCU readers inside, in order."""
        inside = self._peek.items(self._vm.srcu._inside)
        entered = sorted((order, i, reader) for i, (reader, (order, _seq)) in enumerate(inside.items())
                         if order is not None)
        out = []
        for _order, _i, reader in entered:
            pinned = self._peek.attr(reader, "pinned") if hasattr(reader, "pinned") else None
            out.append((str(getattr(reader, "name", reader)), tuple(pinned) if pinned is not None else None))
        return tuple(out)


class _TreeSet:
    """A ``MemslotSet`` as it was: its slots read from the id hash (items in the journal)."""

    def __init__(self, st, peek):
        self.name, self.as_id, self.node_idx = st.name, st.as_id, st.node_idx
        self.generation = peek.attr(st, "generation")
        held = [s for bucket in st.id_hash for s in peek.items(bucket).values()]
        self._slots = sorted((_slot_at(s, peek) for s in held), key=lambda s: s.base_gfn)

    def slots(self):
        """The slots in ascending gfn order."""
        return list(self._slots)

    def __len__(self):
        return len(self._slots)


class _Structure:
    """A 5.15 ``ArrayMemslots`` as it was: its entries from the journal's ``CONTENTS`` item."""

    def __init__(self, st, peek):
        self.as_id, self.node_idx = st.as_id, peek.attr(st, "node_idx")
        self.seq, self.generation = peek.attr(st, "seq"), peek.attr(st, "generation")
        self.used_slots = peek.attr(st, "used_slots")
        self.name = f"as{self.as_id}/memslots@{self.seq}"
        entries, _index = peek.item(st, CONTENTS)
        self._entries = [ArraySlot(list(e)) for e in entries]

    def entries(self):
        """The array as the kernel held it, highest gfn first."""
        return list(self._entries)

    def slots(self):
        """All slots in ascending gfn order."""
        return self._entries[::-1]

    def __len__(self):
        return self.used_slots


def _slot_at(slot, peek):
    """``slot`` itself, or a detached copy with the field values it had then if any changed since."""
    if not peek.changed(slot):
        return slot
    copy = object.__new__(type(slot))
    for cls in type(slot).__mro__:
        for name in getattr(cls, "__slots__", ()):
            object.__setattr__(copy, name, peek.attr(slot, name))
    object.__setattr__(copy, "_history", None)
    object.__setattr__(copy, "_owner", None)
    return copy
