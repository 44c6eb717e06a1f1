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
from operator import attrgetter

from .events import EventList, EventSource

#: ``set_item``'s marker for a key that was (or becomes) absent.
MISSING = object()
#: Slots per journal entry in ``History.entries``, a flat list (see ``History``).
WIDTH = 4


def _swap_attr(obj, name, value):
    old = getattr(obj, name, None)
    object.__setattr__(obj, name, value)
    return old


#: The apply function of an attribute store (a ``setattr`` that bypasses logging).
SET_ATTR = _swap_attr


class _Epoch:
    __slots__ = ("n",)


#: ``EPOCH.n`` moves at every store of a ``watched`` attribute, an undo or redo included (they store through
#: the property): a value derived from watched attributes (``VM.generations``) is right while it has not moved.
EPOCH = _Epoch()
EPOCH.n = 0


def watched(name):
    """A property ``name`` kept in slot ``_name`` whose stores move ``EPOCH`` (journaled as ``name``).

    >>> class Box(Journaled):
    ...     __slots__ = ("_v",)
    ...     v = watched("v")
    >>> h = History(); b = Box(h, v=1); before = EPOCH.n
    >>> b.v = 2; EPOCH.n - before
    1
    >>> _ = h.record("v=2"); _ = h.back(); b.v, EPOCH.n - before
    (1, 2)
    """
    private = "_" + name

    def store(obj, value):
        object.__setattr__(obj, private, value)
        EPOCH.n += 1
    return property(attrgetter(private), store, doc=f"``{name}`` (a store moves ``EPOCH``).")


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

    The journal is one flat list, ``WIDTH`` slots per entry: ``apply,
    target, key, value``. ``apply(target, key, value)`` puts ``value`` back
    and returns the value it replaced, which the entry keeps instead: the old
    value while the entry is applied (undo puts it back), the new one after
    an undo (redo puts it back). ``apply`` is a module-level function
    (``SET_ATTR`` for an attribute store, ``set_item``'s for a mapping item, a
    container's own operation such as a tree insert), never a closure. So an
    entry is no object of its own: the cyclic garbage collector has nothing
    per entry to track, and an entry costs four list slots.

    ``recording`` is True while a mutation is logged as it is: the journal is
    on, not replaying, and no undone event lies ahead (else the first new
    mutation discards them).
    """

    def __init__(self, enabled=True):
        self._enabled = enabled
        self.entries = []        # flat journal, WIDTH slots per entry
        self.raw = []            # per event: the event, or the EventSource (an Update) that builds it
        self.bounds = array("q")  # bounds[k] = len(entries) after events[k]
        self.cursor = 0          # events applied
        self.on_truncate = []    # callbacks: the future was discarded
        self._replaying = False
        self.recording = enabled
        self.cuts = 0            # times recorded entries were dropped (truncation, loose undo, preview)

    @property
    def enabled(self):
        """True when mutations and events are recorded (``VM(history=False)`` turns it off)."""
        return self._enabled

    @enabled.setter
    def enabled(self, on):
        self._enabled = on
        self._sync()

    def _sync(self):
        self.recording = self._enabled and not self._replaying and self.cursor == len(self.raw)

    # -- logging (called by Journaled objects and containers) -------------
    def log(self, apply, target, key, old):
        """Log a mutation that already happened: ``apply(target, key, old)`` undoes it (see class doc)."""
        if not self.recording:
            if self._replaying or not self._enabled:
                return
            self._truncate_future()
        self.entries += (apply, target, key, old)

    def log_item(self, container, key, old):
        """Log ``container[key]`` that was ``old`` (``MISSING``: absent) and changed already; ``History.peek`` reads it."""
        self.log(_swap_item, container, key, old)

    def truncate(self, notify=True):
        """Discard the recorded events ahead of the current state.

        ``notify=False`` skips the ``on_truncate`` callbacks, for a caller
        that knows the discarded events leave nothing half done.
        """
        self._truncate_future(notify)

    def _truncate_future(self, notify=True):
        if self.cursor == len(self.raw):
            return
        self._freeze(self.cursor)
        self.cuts += 1
        del self.raw[self.cursor:]
        del self.bounds[self.cursor:]
        del self.entries[self._base(self.cursor):]
        self._sync()
        for callback in self.on_truncate if notify else ():
            callback()

    def _base(self, k):
        return self.bounds[k - 1] if k else 0

    # -- events ------------------------------------------------------------
    def record(self, event):
        """Close the current group of entries as ``event``; returns its index.

        ``event`` is a ``HistoryEvent``, or an ``EventSource`` whose next event
        it is (an ``Update`` records itself once per step and builds the
        ``Step`` when ``events[k]`` is read).
        """
        if not self._enabled:
            return None
        if not self.recording:
            self._truncate_future()
        self.raw.append(event)
        self.bounds.append(len(self.entries))
        self.cursor = len(self.raw)
        return self.cursor - 1

    @property
    def events(self):
        """The recorded events, oldest first (a read-only list; slices are lists)."""
        return Events(self)

    @property
    def at_frontier(self):
        """True when no recorded event lies ahead of the current state."""
        return self.cursor == len(self.raw)

    def back(self):
        """Undo the last applied event; returns it, or None at the start."""
        return self[self.cursor] if self._back() else None

    def forward(self):
        """Redo the next recorded event; returns it, or None at the frontier."""
        return self[self.cursor - 1] if self._forward() else None

    def _back(self):
        if self.cursor == 0:
            return False
        if self.cursor == len(self.raw):
            self._undo_loose()
        self.cursor -= 1
        self._apply(self._base(self.cursor), self.bounds[self.cursor], undo=True)
        return True

    def _forward(self):
        if self.cursor == len(self.raw):
            return False
        self._apply(self._base(self.cursor), self.bounds[self.cursor], undo=False)
        self.cursor += 1
        self._sync()
        return True

    def goto(self, n):
        """Move to the state right after ``n`` events (0 = the beginning).

        >>> History().goto("1")
        Traceback (most recent call last):
        ...
        TypeError: history.goto takes a number of events (an int), not '1'
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"history.goto takes a number of events (an int), not {n!r}")
        if not 0 <= n <= len(self.raw):
            raise HistoryRangeError(f"step {n} is outside 0..{len(self.raw)}")
        while self.cursor > n:
            self._back()
        while self.cursor < n:
            self._forward()

    @contextmanager
    def preview(self):
        """Run the ``with`` block, then undo everything it logged: a look ahead that leaves no trace.

        Journaled state, the events and the cursor are as before the block,
        and so are events recorded ahead of the cursor after a step back
        (they are set aside, not truncated: nothing is abandoned). The
        journal is on inside the block even when the history is off.
        Non-journaled state (cost counters, call serials) is the caller's.
        Steps recorded inside are built before their places are dropped.

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
        future = self.raw[cursor:], self.bounds[cursor:], self.entries[base:]
        del self.raw[cursor:], self.bounds[cursor:], self.entries[base:]
        self.enabled = True
        try:
            yield
        finally:
            self._apply(base, len(self.entries), undo=True)
            self._freeze(cursor)
            self.cuts += 1
            del self.raw[cursor:], self.bounds[cursor:], self.entries[base:]
            self.raw += future[0]
            self.bounds += future[1]
            self.entries += future[2]
            self.cursor, self.enabled = cursor, enabled

    def peek(self, k):
        """The state right after ``k`` events, read from the journal: nothing is applied, nothing moves.

        Returns a ``Peek`` whose ``attr``/``item``/``items`` answer as the
        objects would after ``goto(k)``; the cursor and every object stay as
        they are. Container operations with an apply function of their own
        (the gfn and hva trees' inserts) cannot be read this way: state that
        pictures need is kept readable (the trees' id hash, the array's contents).

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
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(self.raw):
            raise HistoryRangeError(f"peek at event {k!r}: outside 0..{len(self.raw)}")
        now = len(self.entries) if self.at_frontier else self._base(self.cursor)
        at = self._base(k)
        # An applied entry keeps the value before it, an undone one the value after it (see the class doc):
        # back in time the oldest entry after ``at`` holds the value then, forward the newest before it.
        if at < now:
            return Peek(self.entries, range(now - WIDTH, at - 1, -WIDTH))
        return Peek(self.entries, range(now, at, WIDTH))

    def _freeze(self, k):
        """Build the events from position ``k`` on whose sources keep them compact (their places go)."""
        for source in {e for e in self.raw[k:] if isinstance(e, EventSource)}:
            source.freeze()

    def _undo_loose(self):
        """Drop mutations logged after the last event (e.g. a cache fill)."""
        end = self.bounds[-1] if self.bounds else 0
        self._apply(end, len(self.entries), undo=True)
        del self.entries[end:]
        self.cuts += 1

    def _apply(self, start, end, undo):
        """Undo (newest first) or redo (oldest first) the entries in slots ``start..end``."""
        entries = self.entries
        self._replaying = True
        self.recording = False
        try:
            for i in range(end - WIDTH, start - 1, -WIDTH) if undo else range(start, end, WIDTH):
                entries[i + 3] = entries[i](entries[i + 1], entries[i + 2], entries[i + 3])
        finally:
            self._replaying = False
            self._sync()

    def entry_list(self, end=None):
        """The applied journal up to slot ``end`` as ``(apply, target, key, old, new)`` tuples (for checkers).

        ``end`` is where the applied entries stop (``len(entries)`` at the
        frontier, else ``bounds[cursor - 1]``). ``new`` of an attribute or
        item entry is the old value of the next entry for the same place, or
        the value there now; other entries get None.

        >>> h = History(); d = {}
        >>> set_item(h, d, "a", 1); set_item(h, d, "a", 2)
        >>> [(key, old is MISSING and "absent" or old, new) for _, _, key, old, new in h.entry_list()]
        [('a', 'absent', 1), ('a', 1, 2)]
        """
        e = self.entries[:end]
        out, later = [], {}
        for i in range(len(e) - WIDTH, -1, -WIDTH):
            apply, target, key, old = e[i:i + WIDTH]
            place = (id(target), key)
            new = later[place] if place in later else _now(apply, target, key)
            later[place] = old
            out.append((apply, target, key, old, new))
        return out[::-1]

    def __len__(self):
        return len(self.raw)

    def __getitem__(self, k):
        return Events(self)[k]


class Events(EventList):
    """``history.events``: each recorded event, built on read when its source keeps it compact."""

    __slots__ = ("_h",)

    def __init__(self, history):
        self._h = history

    def __len__(self):
        return len(self._h.raw)

    def item(self, j):
        """Event ``j``."""
        return _event(self._h.raw, j)


def _event(raw, k):
    e = raw[k]
    return e.history_event(k) if isinstance(e, EventSource) else e


def _get_item(container, key):
    return container.get(key, MISSING) if isinstance(container, dict) else container[key]


class Peek:
    """Values of journaled attributes and items at another point of the history (``History.peek``).

    Built from the journal entries between the current state and that
    point, without applying them; values nothing changed in between are
    read from the objects themselves.
    """

    def __init__(self, entries, indexes):
        self._attrs, self._items, self._objs = {}, {}, set()
        for i in indexes:
            apply, target, key, value = entries[i:i + WIDTH]
            if apply is SET_ATTR:
                self._attrs[id(target), key] = value
                self._objs.add(id(target))
            elif apply is _swap_item:
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


def _swap_item(container, key, value):
    old = _get_item(container, key)
    _set_item(container, key, value)
    return old


#: The apply function of a mapping item (``set_item``'s): containers that log their own edits use it.
swap_item = _swap_item


def _list_slot(items, index, value):
    if value is MISSING:
        return items.pop(index)
    items.insert(index, value)
    return MISSING


def _now(apply, target, key):
    if apply is SET_ATTR:
        return getattr(target, key, None)
    return _get_item(target, key) if apply is _swap_item else None


def set_item(history, container, key, value):
    """``container[key] = value`` (``MISSING`` deletes it), logged in ``history`` if given.

    >>> h = History(); d = {}
    >>> set_item(h, d, "a", 1); _ = h.record("a=1"); h.back(); d
    'a=1'
    {}
    """
    old = _swap_item(container, key, value)
    if history is not None:
        history.log(_swap_item, container, key, old)


def append_item(history, items, value):
    """``items.append(value)`` on a list, logged in ``history`` if given (O(1))."""
    items.append(value)
    if history is not None:
        history.log(_list_slot, items, len(items) - 1, MISSING)


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
        h = self._history
        old = getattr(self, name, None)
        object.__setattr__(self, name, value)
        if h is None:
            return
        if h.recording:
            h.entries += (SET_ATTR, self, name, old)
        else:
            h.log(SET_ATTR, self, name, old)
