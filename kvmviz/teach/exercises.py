"""Exercises with feedback for the lessons in ``notebooks/``.

The learner's entry point: ``get``, ``check`` and ``Progress``. The kinds of exercise
(and how each computes its answer from the engine) live in ``kvmviz.teach.answers``,
the catalogue in ``kvmviz.teach.curriculum``. No widget is needed: ``check(key, answer)``
or ``Progress.check`` is a plain call; ``kvmviz.viz.exercise_widgets`` wraps the same
calls in ipywidgets.

>>> ex = get("02.5")
>>> print(ex.check("0x6").message)
0x6 is right: three CREATEs, one swap each, +2 per swap: 0 + 3 * 2 = 0x6.
>>> print(ex.check(5).message)            # doctest: +ELLIPSIS
Not 0x5. Generations of as0 are always 0 mod 2: ...
>>> p = Progress.for_lesson(2); _ = p.check("02.5", 6); p.solved_count, p.total > 2
(1, True)
"""

from .answers import Feedback
from .curriculum import CATALOGUE


# -- progress ----------------------------------------------------------------------


class Progress:
    """Which exercises of a lesson the learner has solved (solved / total).

    ``on_change`` callbacks run after every check (the widgets use them).
    """

    def __init__(self, exercises):
        self.exercises = {e.key: e for e in exercises}
        self.solved = set()
        self.on_change = []

    @classmethod
    def for_lesson(cls, n):
        """A tracker over the exercises of lesson ``n``."""
        return cls(lesson(n))

    @property
    def total(self):
        """Number of exercises tracked."""
        return len(self.exercises)

    @property
    def solved_count(self):
        """Number solved so far."""
        return len(self.solved)

    def check(self, key, answer):
        """Check ``answer`` to exercise ``key``; a right one counts as solved."""
        if key not in self.exercises:
            return Feedback(False, f"No exercise {key!r} here; this lesson has {', '.join(self.exercises)}.")
        fb = self.exercises[key].check(answer)
        if fb.correct:
            self.solved.add(key)
        for callback in self.on_change:
            callback(self)
        return fb

    def __str__(self):
        done = ", ".join(sorted(self.solved)) or "none yet"
        return f"Progress: {self.solved_count} / {self.total} solved ({done})"


# -- the catalogue --------------------------------------------------------------------


def catalogue():
    """Every exercise by key, in lesson order."""
    return {e.key: e for e in CATALOGUE}


def get(key):
    """The exercise with this key, e.g. ``"02.1"``."""
    exercises = catalogue()
    if key not in exercises:
        raise KeyError(f"no exercise {key!r}; keys look like '02.1'")
    return exercises[key]


def lesson(n):
    """The exercises of lesson ``n``, in order."""
    return [e for e in catalogue().values() if e.lesson == n]


def check(key, answer):
    """Check an answer without a tracker: ``check("02.1", "set1")``."""
    return get(key).check(answer)

