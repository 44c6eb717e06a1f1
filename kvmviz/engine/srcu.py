"""Sleepable RCU as the memslot code uses it (reference §1.5, §3.4).

Readers enter a read-side section and record the grace-period sequence they
entered under; a grace period started at sequence ``g`` ends once no reader
that entered before it is still inside. The writer starts the grace period
when it publishes the new active set (reference §3.4 step 3): readers that
enter afterwards see the new set and do not hold the writer up.

>>> s = Srcu()
>>> s.read_lock("vcpu0")
0
>>> gp = s.start_grace_period(); s.read_lock("vcpu1"); s.grace_period_done(gp)
1
False
>>> s.read_unlock("vcpu0"); s.grace_period_done(gp), s.holders(gp)
(True, ())
"""

from .history import Journaled, StateError, set_item


class Srcu(Journaled):
    """``kvm->srcu``: who is inside a read-side section, and since when."""

    __slots__ = ("seq", "completed", "entries", "_inside")

    def __init__(self, history=None):
        super().__init__(history, seq=0, completed=0, entries=0, _inside={})

    @property
    def readers(self):
        """``(reader, sequence entered under)`` of each reader inside, in the order they entered."""
        inside = sorted((order, i, reader, seq) for i, (reader, (order, seq)) in enumerate(self._inside.items())
                        if order is not None)
        return tuple((reader, seq) for _, _, reader, seq in inside)

    def read_lock(self, reader):
        """``srcu_read_lock``: returns the sequence the reader entered under (O(1))."""
        if self.inside(reader):
            raise StateError(f"{reader} is already inside an SRCU read-side section")
        self.entries += 1
        set_item(self._history, self._inside, reader, (self.entries, self.seq))
        return self.seq

    def read_unlock(self, reader):
        """``srcu_read_unlock`` (O(1)).

        A reader that left keeps its key (marked outside): deleting it and
        undoing that would reorder the dict, and history must be exact.
        """
        if not self.inside(reader):
            raise StateError(f"{reader} is not inside an SRCU read-side section")
        set_item(self._history, self._inside, reader, (None, None))

    def start_grace_period(self):
        """Begin a grace period; returns its sequence number."""
        self.seq += 1
        return self.seq

    def inside(self, reader):
        """True while ``reader`` is inside a read-side section."""
        return self._inside.get(reader, (None,))[0] is not None

    def holders(self, gp):
        """Readers that entered before grace period ``gp`` and are still inside, in the order they entered."""
        if not self._inside:
            return ()
        inside = sorted((order, i, reader) for i, (reader, (order, seq)) in enumerate(self._inside.items())
                        if order is not None and seq < gp)
        return tuple(reader for _, _, reader in inside)

    def synchronized(self, gp):
        """The writer waited for grace period ``gp`` (``synchronize_srcu`` returned).

        ``completed`` is the newest such period: the checker's measure of
        whether an unpublished set may be written (reference §3.4 step 5).
        """
        if gp > self.completed:
            self.completed = gp

    def grace_period_done(self, gp):
        """True when grace period ``gp`` has ended."""
        return not self.holders(gp)
