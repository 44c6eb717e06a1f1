"""Recorded steps with an undo/redo journal: step back, jump to step N.

Not a kernel concept: the kernel never goes back in time. Every mutation of
engine state is logged as one journal entry (an attribute store or a container
operation with its inverse), and each recorded event (a writer ``Step`` or a
reader action) owns the entries logged since the previous event. Recording
costs O(1) per mutation; moving one event back or forth replays only that
event's entries.

>>> h = History()
>>> class Box(Journaled):
...     __slots__ = ("v",)
>>> b = Box(h, v=0)
>>> b.v = 1; h.record("set v=1")
0
>>> b.v = 2; h.record("set v=2")
1
>>> h.back(); b.v
'set v=2'
1
>>> h.forward(); b.v
'set v=2'
2
>>> h.goto(0); b.v, len(h)
(0, 2)
"""

_ATTR = 0
_OP = 1


class History:
    """The journal and the list of recorded events of one VM."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.entries = []        # journal: (_ATTR, obj, name, old, new) | (_OP, undo, redo)
        self.events = []
        self.bounds = []         # bounds[k] = len(entries) after events[k]
        self.cursor = 0          # events applied
        self.on_truncate = []    # callbacks: the future was discarded
        self._replaying = False

    # -- logging (called by Journaled objects and containers) -------------
    def log_attr(self, obj, name, old, new):
        """Log an attribute store that already happened."""
        if self._replaying or not self.enabled:
            return
        self._truncate_future()
        self.entries.append((_ATTR, obj, name, old, new))

    def log_op(self, undo, redo):
        """Log a container operation that already happened, as two callables."""
        if self._replaying or not self.enabled:
            return
        self._truncate_future()
        self.entries.append((_OP, undo, redo))

    def truncate(self):
        """Discard the recorded events ahead of the current state."""
        self._truncate_future()

    def _truncate_future(self):
        if self.cursor == len(self.events):
            return
        del self.events[self.cursor:]
        del self.bounds[self.cursor:]
        del self.entries[self._base(self.cursor):]
        for callback in self.on_truncate:
            callback()

    def _base(self, k):
        return self.bounds[k - 1] if k else 0

    # -- events ------------------------------------------------------------
    def record(self, event):
        """Close the current group of entries as ``event``; returns its index."""
        if not self.enabled:
            return None
        self._truncate_future()
        self.events.append(event)
        self.bounds.append(len(self.entries))
        self.cursor = len(self.events)
        return self.cursor - 1

    @property
    def at_frontier(self):
        """True when no recorded event lies ahead of the current state."""
        return self.cursor == len(self.events)

    def back(self):
        """Undo the last applied event; returns it, or None at the start."""
        if self.cursor == 0:
            return None
        if self.cursor == len(self.events):
            self._undo_loose()
        self.cursor -= 1
        self._apply(range(self.bounds[self.cursor] - 1, self._base(self.cursor) - 1, -1), undo=True)
        return self.events[self.cursor]

    def forward(self):
        """Redo the next recorded event; returns it, or None at the frontier."""
        if self.cursor == len(self.events):
            return None
        self._apply(range(self._base(self.cursor), self.bounds[self.cursor]), undo=False)
        self.cursor += 1
        return self.events[self.cursor - 1]

    def goto(self, n):
        """Move to the state right after ``n`` events (0 = the beginning)."""
        if not 0 <= n <= len(self.events):
            raise IndexError(f"step {n} is outside 0..{len(self.events)}")
        while self.cursor > n:
            self.back()
        while self.cursor < n:
            self.forward()

    def _undo_loose(self):
        """Drop mutations logged after the last event (e.g. a cache fill)."""
        end = self.bounds[-1] if self.bounds else 0
        self._apply(range(len(self.entries) - 1, end - 1, -1), undo=True)
        del self.entries[end:]

    def _apply(self, indexes, undo):
        self._replaying = True
        try:
            for i in indexes:
                entry = self.entries[i]
                if entry[0] == _ATTR:
                    object.__setattr__(entry[1], entry[2], entry[3] if undo else entry[4])
                else:
                    (entry[1] if undo else entry[2])()
        finally:
            self._replaying = False

    def __len__(self):
        return len(self.events)

    def __getitem__(self, k):
        return self.events[k]


class Journaled:
    """Base class whose attribute stores are logged in a ``History``.

    Subclasses declare ``__slots__``. The constructor takes the history (or
    None for a free-standing object) and initial field values, which are not
    logged: creating an object changes nothing until something links to it.
    """

    __slots__ = ("_history",)

    def __init__(self, journal=None, /, **fields):
        object.__setattr__(self, "_history", journal)
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        old = getattr(self, name, None)
        object.__setattr__(self, name, value)
        if self._history is not None:
            self._history.log_attr(self, name, old, value)
