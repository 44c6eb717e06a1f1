"""What ``vm.history`` records: one event shape for writer steps and reader actions.

Not a kernel concept. Every recorded event is a ``HistoryEvent``: a writer
``Step`` (``kvmviz.engine.step``) or a ``ReaderAction`` (a vCPU or the MMU
notifier, ``kvmviz.engine.srcu``). Consumers (export, plots, the Stepper, the
scheduler) read the same fields of both; a field that does not apply to a
kind of event has a class-level default (a reader holds no writer lock,
touches no set, belongs to no update).

Texts are built when read, not when the event is recorded: an event keeps a
template and its arguments (plain values captured at the time: labels,
numbers), so a long history holds small tuples instead of sentences.

>>> e = ReaderAction("vcpu0", "srcu_read_lock", "pins as0/set{}", 1)
>>> e.actor, e.stage, e.text, e.locks, e.touched, e.call
('vcpu0', 'reader', 'pins as0/set1', frozenset(), (), 0)
>>> lazy_text("generation {:gen} after {} swaps", 2 | 1 << 63, 3)
'generation 0x2|IP after 3 swaps'
"""

import string
from collections.abc import Sequence
from types import MappingProxyType

from .fmt import gen_text

#: The cost of an event that did no counted work (shared, read-only).
NO_COST = MappingProxyType({})


class _TextFormatter(string.Formatter):
    """``str.format`` plus the ``gen`` spec: a generation with ``|IP`` for bit 63."""

    def format_field(self, value, format_spec):
        if format_spec == "gen":
            return gen_text(value)
        return format(value, format_spec)


_FORMATTER = _TextFormatter()


def lazy_text(template, *args):
    """The text an event with ``template`` and ``args`` shows (``str.format``, plus ``{:gen}``).

    >>> lazy_text("copy {} into {}", "#1", "#2")
    'copy #1 into #2'
    """
    return _FORMATTER.vformat(template, args, {})


class EventList(Sequence):
    """A read-only list of events built on access (``history.events``, ``Update.steps``).

    Subclasses give ``__len__`` and ``__getitem__`` for an int; slices, ``+``
    and comparisons work as for a list of the same events.
    """

    __slots__ = ()

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            return [self.item(j) for j in range(*i.indices(n))]
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"event {i} of {n}")
        return self.item(j)

    def item(self, j):
        """Event ``j`` (``0 <= j < len(self)``)."""
        raise NotImplementedError

    def __add__(self, other):
        return list(self) + list(other)

    def __radd__(self, other):
        return list(other) + list(self)

    def __eq__(self, other):
        return isinstance(other, (Sequence, list)) and list(self) == list(other)

    def __repr__(self):
        return repr(list(self))


class EventSource:
    """Something that records several events in ``vm.history`` and builds each when it is read.

    ``history.raw`` holds the source once per event; ``history_event(k)``
    builds (once) the event at history position ``k``, and ``freeze()`` builds
    them all before the history forgets where they were (an ``Update`` is
    one: its steps are compact records until read).
    """

    __slots__ = ()

    def history_event(self, k):
        """The event recorded at history position ``k``."""
        raise NotImplementedError

    def freeze(self):
        """Build every event now."""
        raise NotImplementedError


class HistoryEvent:
    """One event of ``vm.history`` (see module doc).

    Fields every event has: ``function`` (kernel function modelled),
    ``text`` (for learners), ``result``, ``gens`` (per address space
    ``(set0.generation, set1.generation, active node_idx)`` right after the
    event, or ``()``), ``index`` (position in the history). Fields with a
    default here: ``actor`` (``"writer"`` or the reader's name), ``stage``,
    ``locks``, ``touched``, ``waiting``, ``error``, ``change``, ``call`` (the
    update's serial; 0 for no update) and ``cost`` (counted work).
    """

    __slots__ = ("function", "_text", "result", "gens", "index")

    actor = "writer"
    stage = "reader"
    locks = frozenset()
    touched = ()
    waiting = False
    error = None
    change = None
    call = 0
    cost = NO_COST

    def __init__(self, function, text, args=(), result=None, gens=(), index=None):
        self.function = function
        self._text = (text, *args) if args else text
        self.result = result
        self.gens = gens
        self.index = index

    @property
    def text(self):
        """One or two sentences for learners (formatted now from the recorded values)."""
        t = self._text
        return t if t.__class__ is str else _FORMATTER.vformat(t[0], t[1:], {})

    @property
    def reader(self):
        """True for a reader's action, False for a writer's step."""
        return self.actor != "writer"


class ReaderAction(HistoryEvent):
    """One thing a reader did (a vCPU or the MMU notifier), as a history event.

    Writer steps are ``Step``s; reader actions sit between them in
    ``vm.history`` so stepping back and forth replays readers too. ``actor``
    names the reader, ``function`` the kernel function modelled, ``text``
    (a template, filled from ``args``) what happened, ``result`` what it
    returned, ``gens`` the generations right after it.

    >>> a = ReaderAction("vcpu0", "srcu_read_lock", "pins as0/set0")
    >>> str(a), a.waiting, a.stage, a.reader
    ('vcpu0: srcu_read_lock: pins as0/set0', False, 'reader', True)
    """

    __slots__ = ("actor",)

    def __init__(self, actor, function, text, *args, result=None, gens=(), index=None):
        super().__init__(function, text, args, result, gens, index)
        self.actor = actor

    def __repr__(self):
        return f"ReaderAction({self.actor!r}, {self.function!r}, {self.text!r}, result={self.result!r})"

    def __str__(self):
        return f"{self.actor}: {self.function}: {self.text}"
