"""ipywidgets for the lessons' exercises: an answer box, a Check button, feedback, progress.

Thin glue: checking is ``Progress.check`` / ``Exercise.check`` from
``kvmviz.teach.exercises``; the widgets only collect the answer and show the
``Feedback``. An exercise shows its question and its worked answer as plain HTML
outputs around the widget, for pages without a widget manager (``make html``: nbconvert
prefers a widget view to the ``text/html`` the other widgets also carry, so those show
nothing there). Stable CSS hooks for browser tests: ``kvmviz-exercise``,
``t-answer``, ``t-check``, ``t-feedback``, ``t-progress``, ``t-call``, ``t-result``.

>>> from kvmviz.teach.exercises import Progress
>>> p = Progress.for_lesson(2)
>>> box = ExerciseWidget("02.1", p)
>>> box.answer("set0").correct, box.answer("set1").correct, p.solved_count
(False, True, 1)
>>> ProgressDisplay(p).label.value
'Progress: 1 / 7 solved'
"""

import ipywidgets as w
from IPython.display import display

from kvmviz.teach.answers import AnswerError, parse_int
from kvmviz.teach.exercises import Progress, get
from kvmviz.teach.lessons import WorkedAnswer, describe_call, html_text as _html


def _input(exercise):
    """A text box, a dropdown of short choices, or radio buttons for the invariants' long sentences.

    Each choice is shown as the exercise formats it (an invariant key as its sentence).
    """
    if not exercise.choices:
        return w.Text(placeholder="your answer", description="Answer:")
    options = [(exercise.format(c), c) for c in exercise.choices]
    if exercise.kind == "spot the invariant":
        # every sentence in full: a dropdown cuts long options to its width
        return w.RadioButtons(options=options, value=None, layout=w.Layout(width="auto"))
    return w.Dropdown(options=[("choose...", "")] + options, value="", description="Answer:")


class ExerciseWidget:
    """One exercise: question, answer input, Check button, feedback, and the collapsed worked answer.

    ``exercise`` is an ``Exercise`` or its key; ``progress`` (optional) records
    solved exercises. ``answer(value)`` does what typing ``value`` and clicking
    Check does, and returns the ``Feedback``. Displayed, it is three outputs:
    the question and the worked answer (``kvmviz.teach.lessons.WorkedAnswer``,
    computed by the engine when the widget is made) as plain HTML, so a page
    without a widget manager (``make html``, nbviewer) shows both, and between
    them the widget.
    """

    def __init__(self, exercise, progress=None):
        self.exercise = get(exercise) if isinstance(exercise, str) else exercise
        self.progress = progress
        ex = self.exercise
        self.question_html = (f'<div class="kvmviz-exercise-question"><b>Exercise {ex.key}</b> <i>({ex.kind})</i>: '
                              f"{_html(ex.question)}</div>")
        self.input = _input(ex)
        self.button = w.Button(description="Check", button_style="primary", icon="check")
        self.feedback = w.HTML("")
        self.worked = WorkedAnswer(ex)
        self.input.add_class("t-answer")
        self.button.add_class("t-check")
        self.feedback.add_class("t-feedback")
        self.button.on_click(lambda _: self.answer())
        self.widget = w.VBox([w.HBox([self.input, self.button]), self.feedback])
        self.widget.add_class("kvmviz-exercise")

    def answer(self, value=None):
        """Check ``value`` (default: what the input holds) and show the feedback."""
        if value is not None:
            self.input.value = str(value) if not self.exercise.choices else value
        given = self.input.value
        fb = (self.progress.check(self.exercise.key, given) if self.progress is not None
              else self.exercise.check(given))
        colour = "#009E73" if fb.correct else "#D55E00"      # Okabe-Ito green / vermillion
        mark = "Correct." if fb.correct else "Not yet."
        self.feedback.value = f'<span style="color:{colour}"><b>{mark}</b></span> {_html(fb.message)}'
        return fb

    def static_outputs(self):
        """The two plain outputs around the widget: the question, then the worked answer."""
        ex = self.exercise
        return ({"text/plain": f"Exercise {ex.key} ({ex.kind}): {ex.question}", "text/html": self.question_html},
                {"text/plain": self.worked.text(), "text/html": self.worked._repr_html_()})

    def _ipython_display_(self):
        question, worked = self.static_outputs()
        display(question, raw=True)
        display(self.widget)
        display(worked, raw=True)


class ProgressDisplay:
    """A bar and a label showing ``solved / total``; updates after every check."""

    def __init__(self, progress):
        self.progress = progress
        self.bar = w.IntProgress(value=0, min=0, max=max(progress.total, 1), bar_style="info")
        self.label = w.Label("")
        self.label.add_class("t-progress")
        self.widget = w.HBox([self.bar, self.label])
        progress.on_change.append(self.refresh)
        self.refresh(progress)

    def refresh(self, progress=None):
        """Redraw from the tracker."""
        p = self.progress
        self.bar.value = p.solved_count
        self.bar.bar_style = "success" if p.solved_count == p.total else "info"
        self.label.value = f"Progress: {p.solved_count} / {p.total} solved"

    def _repr_mimebundle_(self, **kwargs):
        html_text = f"<div class=\"kvmviz-progress-static\"><b>{_html(self.label.value)}</b></div>"
        return {**self.widget._repr_mimebundle_(**kwargs), "text/html": html_text}


def lesson_progress(n):
    """A ``Progress`` for lesson ``n`` and its display, for the top of a notebook.

    >>> progress, display = lesson_progress(7)
    >>> display.label.value
    'Progress: 0 / 9 solved'
    """
    progress = Progress.for_lesson(n)
    return progress, ProgressDisplay(progress)


class IoctlForm:
    """Five fields and a Call button: try ``KVM_SET_USER_MEMORY_REGION`` on ``vm``.

    Each call's outcome (``kvmviz.teach.lessons.describe_call``) is added to a log.

    >>> import kvmviz
    >>> form = IoctlForm(kvmviz.VM())
    >>> form.call(slot="1", memory_size="0x1000", userspace_addr="0x10000")
    'returns 0: CREATE of slot 1 (as0), 1 swap(s); as0 generation now 0x2'
    >>> form.call(slot="x")
    "cannot read slot: 'x' is not a number (write 12 or 0xc)."
    """

    FIELDS = ("slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr")

    def __init__(self, vm):
        self.vm = vm
        self.fields = {name: w.Text(value="0", description=name, style={"description_width": "120px"})
                       for name in self.FIELDS}
        self.fail = w.Checkbox(value=False, description="make prepare fail")
        self.button = w.Button(description="Call", button_style="primary")
        self.button.add_class("t-call")
        self.log = w.HTML("")
        self.log.add_class("t-result")
        self.button.on_click(lambda _: self.call())
        self.widget = w.VBox(list(self.fields.values()) + [w.HBox([self.fail, self.button]), self.log])

    def call(self, **values):
        """Fill the given fields (strings, hex allowed), make the call, log and return the outcome."""
        for name, value in values.items():
            self.fields[name].value = str(value)
        args, outcome = [], None
        for name in self.FIELDS:
            try:
                args.append(parse_int(self.fields[name].value))
            except AnswerError as e:
                outcome = f"cannot read {name}: {e}"
                break
        if outcome is None:
            outcome = describe_call(self.vm, *args, fail_prepare=self.fail.value)
        self.log.value = f"<div>{_html(outcome)}</div>" + self.log.value
        return outcome

    def _repr_mimebundle_(self, **kwargs):
        html_text = f"<div class=\"kvmviz-ioctl-static\"><i>Calls made so far:</i>{self.log.value}</div>"
        return {**self.widget._repr_mimebundle_(**kwargs), "text/html": html_text}
