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

from array import array
from contextlib import contextmanager

_ATTR = 0
_OP = 1
_ITEM = 2
#: ``log_item``'s marker for a key that was (or becomes) absent.
MISSING = object()
#: Slots per journal entry in ``History.entries``, a flat list (see ``History``).
WIDTH = 5


class StateError(ValueError, RuntimeError):
    """An operation the model's current state does not allow; nothing was changed.

    A ``ValueError`` (a refusal of the request) and, for older callers, a
    ``RuntimeError``.

    >>> issubclass(StateError, ValueError), issubclass(StateError, RuntimeError)
    (True, True)
    """


class HistoryRangeError(IndexError, ValueError):
    """``History.goto`` to a position outside ``0..len(history)``."""


class History:
    """The journal and the list of recorded events of one VM.

    The journal is one flat list, ``WIDTH`` slots per entry: ``_ATTR, obj,
    name, old, new`` (an attribute store), ``_ITEM, container, key, old, new``
    (a mapping or list item; ``MISSING`` for absent) or ``_OP, undo, redo,
    None, None`` (two callables). Entries are not objects of their own, so
    the cyclic garbage collector has nothing per entry to track, and an
    entry costs five list slots.
    """

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.entries = []        # flat journal, WIDTH slots per entry
        self.events = []
        self.bounds = array("q")  # bounds[k] = len(entries) after events[k]
        self.cursor = 0          # events applied
        self.on_truncate = []    # callbacks: the future was discarded
        self._replaying = False

    # -- logging (called by Journaled objects and containers) -------------
    def log_attr(self, obj, name, old, new):
        """Log an attribute store that already happened."""
        if self._replaying or not self.enabled:
            return
        self._truncate_future()
        self.entries += (_ATTR, obj, name, old, new)

    def log_op(self, undo, redo):
        """Log a container operation that already happened, as two callables."""
        if self._replaying or not self.enabled:
            return
        self._truncate_future()
        self.entries += (_OP, undo, redo, None, None)

    def log_item(self, container, key, old, new):
        """Log ``container[key]`` going from ``old`` to ``new`` (either may be ``MISSING``)."""
        if self._replaying or not self.enabled:
            return
        self._truncate_future()
        self.entries += (_ITEM, container, key, old, new)

    def truncate(self, notify=True):
        """Discard the recorded events ahead of the current state.

        ``notify=False`` skips the ``on_truncate`` callbacks, for a caller
        that knows the discarded events leave nothing half done.
        """
        self._truncate_future(notify)

    def _truncate_future(self, notify=True):
        if self.cursor == len(self.events):
            return
        del self.events[self.cursor:]
        del self.bounds[self.cursor:]
        del self.entries[self._base(self.cursor):]
        for callback in self.on_truncate if notify else ():
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
        self._apply(range(self.bounds[self.cursor] - WIDTH, self._base(self.cursor) - 1, -WIDTH), undo=True)
        return self.events[self.cursor]

    def forward(self):
        """Redo the next recorded event; returns it, or None at the frontier."""
        if self.cursor == len(self.events):
            return None
        self._apply(range(self._base(self.cursor), self.bounds[self.cursor], WIDTH), undo=False)
        self.cursor += 1
        return self.events[self.cursor - 1]

    def goto(self, n):
        """Move to the state right after ``n`` events (0 = the beginning).

        >>> History().goto("1")
        Traceback (most recent call last):
        ...
        TypeError: history.goto takes a number of events (an int), not '1'
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"history.goto takes a number of events (an int), not {n!r}")
        if not 0 <= n <= len(self.events):
            raise HistoryRangeError(f"step {n} is outside 0..{len(self.events)}")
        while self.cursor > n:
            self.back()
        while self.cursor < n:
            self.forward()

    @contextmanager
    def preview(self):
        """Run the ``with`` block, then undo everything it logged: a look ahead that leaves no trace.

        Journaled state, the events and the cursor are as before the block,
        and so are events recorded ahead of the cursor after a step back
        (they are set aside, not truncated: nothing is abandoned). The
        journal is on inside the block even when the history is off.
        Non-journaled state (cost counters, call serials) is the caller's.

        >>> h = History()
        >>> class Box(Journaled):
        ...     __slots__ = ("v",)
        >>> b = Box(h, v=0); b.v = 1; _ = h.record("v=1"); _ = h.back()
        >>> with h.preview():
        ...     b.v = 5; _ = h.record("v=5")
        >>> b.v, len(h), h.cursor, h.forward(), b.v
        (0, 1, 0, 'v=1', 1)
        """
        cursor, enabled = self.cursor, self.enabled
        base = len(self.entries) if self.at_frontier else self._base(cursor)   # loose entries stay
        future = self.events[cursor:], self.bounds[cursor:], self.entries[base:]
        del self.events[cursor:], self.bounds[cursor:], self.entries[base:]
        self.enabled = True
        try:
            yield
        finally:
            self._apply(range(len(self.entries) - WIDTH, base - 1, -WIDTH), undo=True)
            del self.events[cursor:], self.bounds[cursor:], self.entries[base:]
            self.events += future[0]
            self.bounds += future[1]
            self.entries += future[2]
            self.cursor, self.enabled = cursor, enabled

    def peek(self, k):
        """The state right after ``k`` events, read from the journal: nothing is applied, nothing moves.

        Returns a ``Peek`` whose ``attr``/``item``/``items`` answer as the
        objects would after ``goto(k)``; the cursor and every object stay as
        they are. Container operations logged as two callables (``log_op``)
        cannot be read this way: state that pictures need is kept readable
        (the trees' id hash, the array's contents).

        >>> h = History()
        >>> class Box(Journaled):
        ...     __slots__ = ("v",)
        >>> b = Box(h, v=0); d = {}
        >>> b.v = 1; set_item(h, d, "k", "x"); _ = h.record("one")
        >>> b.v = 2; set_item(h, d, "k", MISSING); _ = h.record("two")
        >>> p = h.peek(1); p.attr(b, "v"), p.items(d), b.v, d, h.cursor
        (1, {'k': 'x'}, 2, {}, 2)
        >>> h.goto(0); h.peek(2).attr(b, "v"), b.v
        (2, 0)
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(self.events):
            raise HistoryRangeError(f"peek at event {k!r}: outside 0..{len(self.events)}")
        now = len(self.entries) if self.at_frontier else self._base(self.cursor)
        at = self._base(k)
        if at < now:               # back in time: the oldest entry after ``at`` holds the value then
            return Peek(self.entries, range(now - WIDTH, at - 1, -WIDTH), 3)
        return Peek(self.entries, range(now, at, WIDTH), 4)

    def _undo_loose(self):
        """Drop mutations logged after the last event (e.g. a cache fill)."""
        end = self.bounds[-1] if self.bounds else 0
        self._apply(range(len(self.entries) - WIDTH, end - 1, -WIDTH), undo=True)
        del self.entries[end:]

    def _apply(self, indexes, undo):
        entries = self.entries
        self._replaying = True
        try:
            for i in indexes:
                kind, target, key = entries[i], entries[i + 1], entries[i + 2]
                value = entries[i + 3] if undo else entries[i + 4]
                if kind == _ATTR:
                    object.__setattr__(target, key, value)
                elif kind == _ITEM:
                    _set_item(target, key, value)
                else:
                    (target if undo else key)()
        finally:
            self._replaying = False

    def entry_list(self, end=None):
        """The journal as ``(kind, a, b, c, d)`` tuples, up to slot ``end`` (for checkers)."""
        e = self.entries[:end]
        return list(zip(e[0::WIDTH], e[1::WIDTH], e[2::WIDTH], e[3::WIDTH], e[4::WIDTH]))

    def __len__(self):
        return len(self.events)

    def __getitem__(self, k):
        return self.events[k]


class Peek:
    """Values of journaled attributes and items at another point of the history (``History.peek``).

    Built from the journal entries between the current state and that
    point, without applying them; values nothing changed in between are
    read from the objects themselves.
    """

    def __init__(self, entries, indexes, column):
        self._attrs, self._items, self._objs = {}, {}, set()
        for i in indexes:
            kind, target, key, value = entries[i], entries[i + 1], entries[i + 2], entries[i + column]
            if kind == _ATTR:
                self._attrs[id(target), key] = value
                self._objs.add(id(target))
            elif kind == _ITEM:
                self._items.setdefault(id(target), {})[key] = value

    def attr(self, obj, name):
        """``getattr(obj, name)`` then."""
        value = self._attrs.get((id(obj), name), MISSING)
        return getattr(obj, name) if value is MISSING else value

    def changed(self, obj):
        """True when some attribute of ``obj`` had another value then."""
        return id(obj) in self._objs

    def item(self, container, key, default=None):
        """``container[key]`` then (``default`` if absent)."""
        value = self._items.get(id(container), {}).get(key, _UNREAD)
        if value is _UNREAD:
            return container.get(key, default) if isinstance(container, dict) else container[key]
        return default if value is MISSING else value

    def items(self, container):
        """The dict ``container`` then, as a new dict."""
        out = dict(container)
        for key, value in self._items.get(id(container), {}).items():
            if value is MISSING:
                out.pop(key, None)
            else:
                out[key] = value
        return out


_UNREAD = object()


def _set_item(container, key, value):
    if value is MISSING:
        del container[key]
    else:
        container[key] = value


def set_item(history, container, key, value):
    """``container[key] = value`` (``MISSING`` deletes it), logged in ``history`` if given.

    >>> h = History(); d = {}
    >>> set_item(h, d, "a", 1); _ = h.record("a=1"); h.back(); d
    'a=1'
    {}
    """
    old = container.get(key, MISSING) if isinstance(container, dict) else container[key]
    _set_item(container, key, value)
    if history is not None:
        history.log_item(container, key, old, value)


def append_item(history, items, value):
    """``items.append(value)`` on a list, logged in ``history`` if given (O(1))."""
    items.append(value)
    if history is not None:
        history.log_op(items.pop, lambda: items.append(value))


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
