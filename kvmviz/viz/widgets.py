"""The Stepper: run ``KVM_SET_USER_MEMORY_REGION`` one step at a time in Jupyter.

Stock ipywidgets 8 only (no front-end extension), figures as inline SVG in
``HTML`` widgets, drawn at the size they are shown. Every widget a test or
lesson needs carries a stable CSS class (``t-next``, ``t-stage``, ``t-gen``,
...). Each rendering is also published as a plain display output (SVG and a
short text), updated in place, so a notebook saved with outputs or exported
to HTML still shows the last step without a kernel; with
``KVMVIZ_HTML_PLAYER`` set (``make html``) that output is the HTML player of
the call instead, all its steps inline. The header names the modelled
kernel version; the form's kernel choice (``t-kernel``, over
``kvmviz.KERNELS``) starts a new VM of another version.

>>> import kvmviz
>>> st = Stepper(kvmviz.VM())
>>> st.begin(1, 0, 0x100000, 0x100000, 0x7f0000000000)
True
>>> n = 0
>>> while st.step(): n += 1
>>> n, st.stage.value.count("kv-current"), st.vm.generation(0)
(15, 1, 2)
>>> st.back(), st.current.function
(True, 'kvm_arch_commit_memory_region')
>>> st.last(); st.begin(2, 0, 0x100001, 0x1000, 0x7f0000000000)      # unaligned: refused
False
>>> "<b>EINVAL</b> (errno 22)" in st.error.value, len(st.vm.history)
(True, 15)
"""

import html
import os
from pathlib import Path
from types import SimpleNamespace

import ipywidgets as w
from IPython.display import display

from ..check import replay
from ..engine import numbers
from ..engine.constants import KVM_MEM_LOG_DIRTY_PAGES, U64_MAX, flag_names
from ..engine.errors import KvmError
from ..engine.fmt import gen_text, result_text
from ..export import model_label
from ..engine.kernels import KERNELS, check_model
from ..engine.snapshot import state_at
from ..engine.step import STAGES, Step, Steps
from ..engine.vm import VM
from .player_html import iframe, page
from .figure import OKABE_ITO, PANE_PX, to_svg
from .generations import plot_call, with_cursor
from .objects import plot_objects
from .sets import plot_memslots
from .trees import plot_trees

FIELDS = ("slot", "flags", "gpa", "size", "hva")
PRESETS = ("(fill the form from a preset)", "CREATE a new slot", "MOVE a slot", "DELETE a slot",
           "FLAGS_ONLY: toggle LOG_DIRTY_PAGES", "bad: unaligned gpa (EINVAL)",
           "bad: overlaps a slot (EEXIST)")
SPEEDS = (("slow (1 s)", 1000), ("normal (0.5 s)", 500), ("fast (0.2 s)", 200))
_CACHE_LIMIT = 256
HINT = "press <b>next ▶</b> or <b>→</b> (after a click on the Stepper) to run the first step"
LEFT_PX = 380
#: Set (by ``make html``) to make a displayed Stepper leave the HTML player of its call as its static output.
PLAYER_ENV = "KVMVIZ_HTML_PLAYER"


class InputError(ValueError):
    """A form value that cannot become an ioctl argument; ``errno`` if the kernel would say one."""

    def __init__(self, message, err=None):
        super().__init__(message)
        self.errno = err


def parse_number(name, text):
    """Parse a form field with the CLI's parser (``kvmviz.engine.numbers``): decimal, or hex with ``0x``.

    >>> parse_number("gpa", "0x100000"), parse_number("slot", "12")
    (1048576, 12)
    >>> parse_number("size", "1e6")
    Traceback (most recent call last):
    ...
    kvmviz.viz.widgets.InputError: size: '1e6' is not a number (decimal, or hex with 0x; ASCII digits, no sign)
    """
    try:
        return numbers.parse_number(text, name)
    except (TypeError, ValueError) as e:
        raise InputError(str(e)) from None


def _text(value, cls, tooltip):
    t = w.Text(value=value, description=cls.split("-")[-1], tooltip=tooltip)
    t.add_class(cls)
    return t


def _button(label, cls, tooltip, style=""):
    b = w.Button(description=label, tooltip=tooltip, button_style=style, layout=w.Layout(width="auto"))
    b.add_class(cls)
    return b


class Stepper:
    """Step through one memslot update at a time, forwards and backwards.

    ``begin(slot, flags, gpa, size, hva, fail_prepare=False)`` starts a call
    (``slot`` is ``(as_id << 16) | id``, as in the uAPI); ``step()`` runs or
    replays the next step and returns False once the call has finished;
    ``back()`` restores the exact previous state through ``vm.history``;
    ``first()``, ``last()``, ``goto(n)`` move within the call; ``reset()``
    goes back to before it and forgets it; ``choose_kernel(name)`` (the
    form's kernel choice) replaces ``vm`` with a new, empty VM of that
    version; ``widget`` is the root widget.
    Display the Stepper itself (``st`` as a cell's last line, or
    ``display(st)``) to also get the static copy; ``display(st.widget)``
    shows the widget alone. Bad input never raises: the widget shows the errno and the reason, and the
    VM is left as it was.

    >>> st = Stepper()
    >>> st.begin(1, 0, 0, 0x1000, 0x10000, fail_prepare=True)
    True
    >>> st.last(); st.upd.result, st.position.value
    (-12, 'step 7 of 7: the ioctl returned -ENOMEM')
    """

    def __init__(self, vm=None, as_id=0):
        self.vm = vm if vm is not None else VM()
        if not self.vm.history.enabled:
            raise ValueError("the Stepper steps back through vm.history: use a VM made with history=True")
        self.upd = None
        self.as_id = as_id
        self.base = self.vm.history.cursor
        self._cache = {}
        self._figs = {}
        self._static = None
        self._syncing = False
        self._note = ""
        self._end = None
        self._build()
        self.fill_preset(PRESETS[1])
        self._render()

    # -- widgets ---------------------------------------------------------------
    def _build(self):
        self.header = w.HTML()
        self.header.add_class("t-header")
        self.kernel = w.Dropdown(options=[(f"Linux {k.name} ({k.implementation})", k.name) for k in KERNELS.values()],
                                 value=self.vm.kernel, description="kernel",
                                 tooltip="the kernel version to model: a new, empty VM of that version")
        self.kernel.add_class("t-kernel")
        self.status = w.Label()
        self.status.add_class("t-status")
        self.slot = _text("1", "t-slot", "slot id within the address space (decimal, or hex with 0x)")
        self.as_field = w.Dropdown(options=_as_options(self.vm), value=self.as_id, description="as_id",
                                   tooltip="address space: the slot argument's bits 16-31")
        self.as_field.add_class("t-as")
        self.flags = _text("0x0", "t-flags", "KVM_MEM_LOG_DIRTY_PAGES = 0x1, KVM_MEM_READONLY = 0x2")
        self.gpa = _text("0x0", "t-gpa", "guest_phys_addr: page aligned")
        self.size = _text("0x100000", "t-size", "memory_size: page aligned; 0 deletes the slot")
        self.hva = _text("0x7f0000000000", "t-hva", "userspace_addr: page aligned host address")
        self.fail = w.Checkbox(value=False, description="fail prepare (-ENOMEM)", indent=False,
                               tooltip="make the arch prepare step fail, as if kvmalloc ran out of memory")
        self.fail.add_class("t-fail")
        self.preset = w.Dropdown(options=PRESETS, value=PRESETS[0],
                                 tooltip="fill the form with a call of this kind (a call in progress is "
                                         "finished first, or dropped if it has not started)")
        self.preset.add_class("t-preset")
        self.begin_button = _button("begin call", "t-begin", "start the call in the form (a call in progress "
                                    "is finished first, or dropped if it has not started)", "primary")
        self.first_button = _button("|◀", "t-first", "first: before the call's first step (Home)")
        self.back_button = _button("◀ back", "t-back", "back: undo one step, exact previous state (←)")
        self.next_button = _button("next ▶", "t-next", "next: run or replay one step (→)", "info")
        self.last_button = _button("▶|", "t-last", "last: to the end of the call (End)")
        self.play = w.Play(value=0, min=0, max=10 ** 9, interval=500, show_repeat=False,
                           tooltip="play: one step per tick until the call ends")
        self.play.add_class("t-play")
        self.speed = w.Dropdown(options=SPEEDS, value=500, description="speed", tooltip="time between played steps")
        self.speed.add_class("t-speed")
        self.slider = w.IntSlider(value=0, min=0, max=0, description="step", continuous_update=False,
                                  tooltip="go to any step of the call")
        self.slider.add_class("t-slider")
        self.position = w.Label()
        self.position.add_class("t-pos")
        self.stage = w.HTML()
        self.stage.add_class("t-stage")
        self.gen = w.HTML()
        self.gen.add_class("t-gen")
        self.text = w.HTML()
        self.text.add_class("t-text")
        self.error = w.HTML()
        self.error.add_class("t-error")
        self.hint = w.HTML()
        self.hint.add_class("t-hint")
        self.view = w.ToggleButtons(options=_view_options(self.vm), value="objects",
                                    tooltips=_view_tooltips(self.vm), style={"button_width": "auto"})
        self.view.add_class("t-view")
        self.figure = w.HTML()
        self.figure.add_class("t-figure")
        self.timeline = w.HTML()
        self.timeline.add_class("t-timeline")
        self.keys = w.HTML(_KEYS_HTML)
        self.form_toggle = w.ToggleButton(value=False, description="arguments ▸", tooltip=(
            "show or hide the ioctl's arguments (slot, flags, gpa, size, hva), the kernel version "
            "and the prepare failure switch"), layout=w.Layout(width="auto"))
        self.form_toggle.add_class("t-form-toggle")

        for button, action in ((self.begin_button, self._on_begin), (self.first_button, self.first),
                               (self.back_button, self.back), (self.next_button, self.step),
                               (self.last_button, self.last)):
            button.on_click(self._guarded(lambda _b, action=action: action()))
        self.preset.observe(self._guarded(lambda ch: self.choose_preset(ch["new"])), "value")
        self.play.observe(self._guarded(self._on_play), "value")
        self.speed.observe(lambda ch: setattr(self.play, "interval", ch["new"]), "value")
        self.slider.observe(self._guarded(self._on_slider), "value")
        self.view.observe(self._guarded(lambda ch: self._render()), "value")
        self.kernel.observe(self._guarded(lambda ch: self.choose_kernel(ch["new"])), "value")
        self.form_toggle.observe(lambda ch: self._show_form(ch["new"]), "value")

        px = lambda n: w.Layout(width=f"{n}px")         # noqa: E731 (layout shorthand)
        for field, width in ((self.slot, 120), (self.as_field, 150), (self.flags, 150), (self.gpa, 185),
                             (self.size, 185), (self.hva, 370), (self.kernel, 370)):
            field.layout = px(width)
            field.style = {"description_width": "42px"}
        self.preset.layout = px(240)
        self.slider.layout = px(250)
        self.slider.style = {"description_width": "32px"}
        self.speed.layout = px(175)
        self.speed.style = {"description_width": "42px"}
        self.form = w.VBox([self.kernel, w.HBox([self.slot, self.as_field]), w.HBox([self.flags, self.fail]),
                            w.HBox([self.gpa, self.size]), self.hva, self.status],
                           layout=w.Layout(display="none", border="1px solid #ccc", padding="2px"))
        self.form.add_class("t-form")
        transport = w.HBox([self.first_button, self.back_button, self.next_button, self.last_button])
        left = w.VBox([self.header, w.HBox([self.preset, self.begin_button]), self.form_toggle, self.form,
                       self.error, transport, w.HBox([self.play, self.speed]),
                       w.HBox([self.slider, self.position]), self.hint, self.stage, self.text, self.gen, self.keys],
                      layout=w.Layout(width=f"{LEFT_PX}px", min_width=f"{LEFT_PX}px"))
        right = w.VBox([self.view, self.figure, self.timeline],
                       layout=w.Layout(width=f"{PANE_PX + 6}px", min_width=f"{PANE_PX + 6}px"))
        self.widget = w.HBox([left, right], layout=w.Layout(width="fit-content", grid_gap="8px"))
        self.widget.add_class("t-stepper")

    def _show_form(self, shown):
        self.form.layout.display = "flex" if shown else "none"
        self.form_toggle.description = "arguments ▾" if shown else "arguments ▸"

    def _guarded(self, handler):
        """Wrap a widget callback: show any error in the widget instead of a traceback."""
        def run(*args):
            if self._syncing:
                return
            try:
                handler(*args)
            except Exception as e:          # a learner must never see a traceback here
                self._show_error(html.escape(f"{type(e).__name__}: {e}"))
        return run

    def _ipython_display_(self):
        if os.environ.get(PLAYER_ENV):      # an exported page keeps no widget: the player stands in for it
            display({"text/plain": self.summary(), "text/html": iframe(self)}, raw=True)
            return
        display(self.widget)
        self._static = display(self._static_bundle(), raw=True, display_id=True)

    # -- the form --------------------------------------------------------------------
    def read_form(self):
        """The five ioctl arguments from the form (``InputError`` on bad text)."""
        values = [parse_number(name, getattr(self, name).value) for name in FIELDS]
        if values[0] >= 0:
            values[0] |= self.as_field.value << 16
        return values

    def _write_form(self, slot, flags, gpa, size, hva):
        self._syncing = True
        try:
            self.slot.value = str(slot & 0xFFFF) if 0 <= slot <= U64_MAX else str(slot)
            if 0 <= slot >> 16 < self.vm.address_spaces:
                self.as_field.value = slot >> 16
            self.flags.value, self.gpa.value, self.size.value, self.hva.value = (
                _hex(flags), _hex(gpa), _hex(size), _hex(hva))
        finally:
            self._syncing = False

    def fill_preset(self, name):
        """Fill the form with a call of the kind ``name`` (one of ``PRESETS``).

        >>> st = Stepper(); st.fill_preset("bad: unaligned gpa (EINVAL)"); st.gpa.value
        '0x1001'
        """
        if name not in PRESETS[1:]:
            return
        as_id = self.as_field.value
        slots = self.vm.active_set(as_id).slots()
        top = max((s.end_gfn << 12 for s in slots), default=0)
        free_gpa = (top + 0x1FFFFF) & ~0x1FFFFF
        used = {s.id for s in slots}
        new_id = next(i for i in range(len(used) + 1) if i not in used)
        chosen = next((s for s in slots if str(s.id) == self.slot.value.strip()), slots[0] if slots else None)
        new = (new_id, 0, free_gpa, 0x100000, 0x7f0000000000 + new_id * 0x10000000)
        if chosen is None or name.startswith(("CREATE", "bad: unaligned")):
            args = new if not name.startswith("bad") else (new_id, 0, 0x1001, 0x100000, new[4])
        elif name.startswith("bad: overlaps"):
            args = (new_id, 0, chosen.base_gfn << 12, 0x100000, new[4])
        else:
            old = (chosen.id, chosen.flags, chosen.base_gfn << 12, chosen.npages << 12, chosen.userspace_addr)
            args = {"MOVE": old[:2] + (free_gpa,) + old[3:], "DELETE": old[:3] + (0,) + old[4:],
                    "FLAGS_ONLY": (old[0], old[1] ^ KVM_MEM_LOG_DIRTY_PAGES) + old[2:]}[name.split()[0].rstrip(":")]
        self._write_form((as_id << 16) | args[0], *args[1:])

    def choose_preset(self, name):
        """The preset menu: settle a call in progress (``settle``), then ``fill_preset(name)``.

        >>> st = Stepper(); _ = st.begin(1, 0, 0, 0x1000, 0x10000); _ = st.step()
        >>> st.choose_preset("DELETE a slot"); st.size.value, st.finished
        ('0x0', True)
        """
        if name in PRESETS[1:]:
            note = self.settle()
            if note:
                self.hint.value = note
        self.fill_preset(name)

    def _on_begin(self):
        try:
            args = self.read_form()
        except InputError as e:
            self._show_error(str(e), nothing_sent=True)
            return
        self.begin(*args, fail_prepare=self.fail.value)

    def choose_kernel(self, name):
        """Model Linux ``name`` from now on: a new, empty VM of that version; True if it changed.

        The new VM keeps the variant and the number of address spaces (or,
        when the version cannot have that many, takes its own and says why);
        the old VM (and its history) stays as it was, and the status line
        says so. A variant that does not apply to ``name`` (variants change the
        5.17+ tree protocol) is refused with the reason, and the choice goes
        back to the VM's version.

        >>> st = Stepper(VM(kernel="5.17")); st.choose_kernel("5.15"), st.vm.kernel, st.vm.history.cursor
        (True, '5.15', 0)
        >>> st.status.value
        'new VM: Linux 5.15 model, empty; the Linux 5.17 VM and its history are left as they were'
        """
        old = self.vm
        if name == old.kernel:
            return False
        try:
            check_model(name, old.variant)
        except ValueError as e:
            self._set_kernel_field(old.kernel)
            self._show_error(f"<b>kernel {html.escape(name)} not chosen</b>: {html.escape(str(e))}. "
                             f"The VM still models Linux {old.kernel}.")
            return False
        try:
            self.vm, note = VM(kernel=name, variant=old.variant, address_spaces=old.address_spaces), ""
        except ValueError as e:           # e.g. 5.17 has no kernel without SMM
            self.vm = VM(kernel=name, variant=old.variant)
            note = f" ({self.vm.address_spaces} address spaces: {e})"
        running = " (with the call it was running)" if self.upd is not None and not self._finished_on(old) else ""
        self.upd, self.base, self.as_id = None, 0, min(self.as_id, self.vm.address_spaces - 1)
        self._cache.clear()
        self._set_kernel_field(name)
        self._syncing = True
        try:
            self.as_field.options, self.as_field.value = _as_options(self.vm), self.as_id
            self.view.options, self.view.tooltips = _view_options(self.vm), _view_tooltips(self.vm)
            self.view.value = self.view.options[0][1]
        finally:
            self._syncing = False
        self.error.value = ""
        self.status.value = (f"new VM: {model_label(self.vm)}, empty{note}; the Linux {old.kernel} VM{running} "
                             "and its history are left as they were")
        self._render()
        return True

    def _set_kernel_field(self, name):
        self._syncing = True
        try:
            self.kernel.value = name
        finally:
            self._syncing = False

    # -- the call ----------------------------------------------------------------------
    def begin(self, slot, flags, gpa, size, hva, fail_prepare=False):
        """Start a call; True if it began, False if refused (reason shown in the widget).

        Refused calls leave the VM untouched: no step, no history event.
        Arguments may also be strings in the form's syntax (``"0x1000"``).
        """
        try:
            slot, flags, gpa, size, hva = (v if isinstance(v, int) else parse_number(name, v)
                                           for name, v in zip(FIELDS, (slot, flags, gpa, size, hva)))
        except InputError as e:
            self._show_error(str(e), nothing_sent=True)
            return False
        self._write_form(slot, flags, gpa, size, hva)
        self.fail.value = bool(fail_prepare)
        note = self.settle()
        refusal = self._refusal(slot, flags, gpa, size, hva)
        if refusal:
            self._show_error(f"{refusal} ({note})" if note else refusal)
            return False
        h = self.vm.history
        self.upd = self.vm.begin_set_user_memory_region(slot, flags, gpa, size, hva, fail_prepare)
        self.as_id = self.upd.region.as_id
        self.base = h.cursor
        self._run_out()
        h.goto(self.base)
        self.error.value = ""
        self._note = f"{note} {HINT}" if note else ""
        self._render()
        return True

    def _run_out(self, limit=10_000):
        """Run the call as far as it goes (its end, or a wait on a reader): the dry run.

        The steps land in ``vm.history``, so rewinding to the call's start
        gives the whole call's step count and timeline up front, and each
        ``next`` replays a recorded step. (An engine dry run that returns the
        steps without recording them would make this a query, not a rewind.)
        """
        for _ in range(limit):
            if self.upd.result is not None or self.upd.blocked:
                return
            next(self.upd)

    def settle(self):
        """Finish the call in progress (its steps are known: nothing is lost), or drop it at step 0.

        Returns a one-line note of what happened ('' if there was no call
        in progress). A call whose writer waits on a reader cannot be
        finished; it is left as it is.

        >>> st = Stepper(); _ = st.begin(1, 0, 0, 0x1000, 0x10000)
        >>> st.settle(), len(st.vm.history)
        ('the call that had not started was dropped.', 0)
        """
        h = self.vm.history
        if self.upd is None or self.finished:
            return ""
        k = h.cursor - self.base
        if k <= 0:
            h.goto(self.base)
            h.truncate()
            self.upd = None
            return "the call that had not started was dropped."
        self.last()
        if not self.finished:
            return ""
        return f"the previous call was finished first ({self.position.value})."

    def _refusal(self, slot, flags, gpa, size, hva):
        """Why this call must not start now (a message), or None."""
        vm = self.vm
        if "slots_lock" in vm.locks or (vm.update is not None and vm.history.at_frontier):
            return ("another call is in the middle of its steps and its writer waits for a reader "
                    "(slots_lock is held): let the reader leave, or go back before the call, then begin again.")
        values = dict(zip(FIELDS, (slot, flags, gpa, size, hva)))
        negative = [n for n, v in values.items() if isinstance(v, int) and v < 0]
        wrapped = {n: v & U64_MAX if n in negative else v for n, v in values.items()}
        note = ""
        if negative:
            note = "; ".join(f"{n} = {_hex(values[n])} is negative, but the field is unsigned: C would "
                             f"pass {_hex(wrapped[n] & (0xFFFFFFFF if n in ('slot', 'flags') else U64_MAX))}"
                             for n in negative)
            for n in ("slot", "flags"):
                wrapped[n] &= 0xFFFFFFFF
        try:
            e = vm.dry_run(*wrapped.values(), until=1)[0].error     # the checks of reference §4.1-4.3
        except ValueError as bad:
            return f"<b>not sent to the kernel</b>: {html.escape(str(bad))}."
        if isinstance(e, KvmError):
            return f"<b>{e.errname}</b> (errno {e.errno}): {html.escape(e.message)}" + \
                   (f" (reference §{e.rule})" if e.rule else "") + (f". Note: {note}" if note else "") + \
                   ". The ioctl would fail: nothing was changed."
        if negative:
            return f"<b>not sent to the kernel</b>: {note}."
        return None

    @property
    def current(self):
        """The history event the VM is right after, if it belongs to this call."""
        h = self.vm.history
        return h.events[h.cursor - 1] if h.cursor > self.base else None

    @property
    def finished(self):
        """True when the call has run its last step and no step lies ahead."""
        return self._finished_on(self.vm)

    def _finished_on(self, vm):
        return self.upd is None or (self.upd.result is not None and vm.history.at_frontier)

    def step(self):
        """Run (or replay) one step; False when the call has finished."""
        h = self.vm.history
        if self.upd is None:
            return False
        if not h.at_frontier:
            h.forward()
        elif self.upd.result is not None:
            return False
        else:
            next(self.upd)
        self._render()
        return True

    def back(self):
        """Undo one event (exact previous state); False at the start of the call."""
        if self.vm.history.cursor <= self.base:
            return False
        self.vm.history.back()
        self._render()
        return True

    def first(self):
        """Go back to just before the call's first step."""
        self.vm.history.goto(min(self.base, self.vm.history.cursor))
        self._render()

    def last(self, limit=10_000):
        """Run or replay to the end of the call (stops if the writer is blocked)."""
        h = self.vm.history
        if self.upd is None:
            return
        h.goto(len(h))
        self._run_out(limit)
        self._render()

    def goto(self, n):
        """Move to the state after step ``n`` of the call (0 = before it)."""
        h = self.vm.history
        target = self.base + max(0, n)
        if target <= len(h):
            h.goto(target)
            self._render()
            return
        h.goto(len(h))
        while h.cursor < target and self.upd is not None and self.upd.result is None and not self.upd.blocked:
            next(self.upd)
        self._render()

    def reset(self):
        """Go back to before the call and forget it; the next ``begin`` starts from there."""
        self.first()
        self.upd = None
        self.error.value = ""
        self._render()

    def _on_play(self, change):
        if change["new"] != change["old"] + 1:
            return
        if not self.step():
            self.play.playing = False
            self._note = ("play: the call has finished, nothing is left to run. Press |◀ (Home) to watch "
                          "it again, or begin another call.")
            self._render()
        elif self.upd is not None and self.upd.blocked and self.vm.history.at_frontier:
            self.play.playing = False

    def _on_slider(self, change):
        self.goto(change["new"])

    # -- rendering -------------------------------------------------------------------------
    def _show_error(self, message, nothing_sent=False):
        """Show ``message`` (HTML) in the error box; plain input errors are escaped."""
        body = html.escape(message) if nothing_sent else message
        tail = " Nothing was sent to the kernel; the VM is unchanged." if nothing_sent else ""
        self.error.value = (f"<div style='border-left:4px solid {OKABE_ITO['vermillion']};"
                            f"padding:2px 8px'>{body}{tail}</div>")

    def _render(self):
        vm = self.vm
        n, k = self._count(), self.position_k()
        self._syncing = True
        try:
            self.slider.max = max(n, 0)
            self.slider.value = k
        finally:
            self._syncing = False
        self.header.value = _header_html(vm)
        frame = self._frame(k, n, vm, self.current, self.view.value)
        self.position.value, self.stage.value, self.text.value, self.gen.value, self.figure.value = (
            frame[key] for key in ("position", "stage", "text", "gen", "figure"))
        note = self._note or (HINT if self.upd is not None and k == 0 else "")
        self.hint.value = f"<div style='line-height:1.35;color:#444'>{note}</div>" if note else ""
        self._note = ""
        at_start, done = k <= 0, self.finished
        self.first_button.disabled = self.back_button.disabled = at_start
        self.next_button.disabled = self.last_button.disabled = done
        self.timeline.value = self._timeline_svg(k, n)
        if self._static is not None:
            self._static.update(self._static_bundle(), raw=True)

    def _frame(self, k, n, vm, event, view):
        """What the Stepper shows at step ``k`` of ``n``: ``vm`` (the VM, or ``state_at`` it) after ``event``."""
        gen = "<br>".join(
            f"as{a}: generation <b>{gen_text(vm.generation(a))}</b> (set{vm.active_idx[a]} active; "
            f"set0 {gen_text(vm.sets[a][0].generation)}, set1 {gen_text(vm.sets[a][1].generation)})"
            for a in range(vm.address_spaces))
        return {"k": k, "position": self._position_text(k, n),
                "stage": _stage_html(None if event is None else event.stage, self._skipped(n)),
                "text": f"<div style='line-height:1.35'>{self._event_html(event)}</div>",
                "gen": f"<div style='line-height:1.35'>{gen}</div>",
                "figure": self._cached(self._figure_key(vm, event, view), lambda: self._draw_figure(vm, event, view))}

    def _skipped(self, n):
        """Stages the current call never enters (known once its steps are), for the stage bar."""
        if self.upd is None or self.upd.result is None:
            return frozenset()
        seen = {e.stage for e in self.vm.history.events[self.base:self.base + n]}
        return frozenset(STAGES) - seen

    def _position_text(self, k, n):
        if self.upd is None:
            return "no call yet: choose a preset (or fill the arguments) and press begin"
        if self.upd.result is not None and k == n:
            ret = result_text(self.upd.result)
            what = "the model hit" if ret in ("BUG", "WARN") else "the ioctl returned"
            return f"step {k} of {n}: {what} {ret}"
        if self.upd.result is not None:
            return f"step {k} of {n}"
        blocked = self.upd.blocked
        return f"step {k} of {n} so far" + (f" (the writer waits: {blocked})" if blocked else "")

    def _event_html(self, event):
        if event is None:
            region = getattr(self.upd, "region", None)
            what = (f"slot {region.id} of as{region.as_id}, gpa {region.guest_phys_addr:#x}, size "
                    f"{region.memory_size:#x}, hva {region.userspace_addr:#x}, flags {flag_names(region.flags)}"
                    if region is not None else "nothing yet")
            return f"<b>before the call</b>: {html.escape(what)}"
        wait = " <i>(waiting)</i>" if event.waiting else ""
        return f"<b><code>{html.escape(event.function)}</code></b>{wait}: {html.escape(event.text)}"

    def _figure_key(self, vm, event, view):
        sets = vm.sets[self.as_id]
        content = tuple(tuple((s.uid, s.flags, s.base_gfn, s.invalid) for s in st.slots()) for st in sets)
        shown = None if event is None else event.index if view == "objects" else event.touched
        return (view, self.as_id, shown, vm.generations()[self.as_id], vm.active_idx[self.as_id], content)

    def _draw_figure(self, vm, event, view):
        if view == "trees":
            return plot_trees(vm, self.as_id, step=event, width=PANE_PX, title=False)
        if view == "objects":
            return plot_objects(vm, self.as_id, step=event)
        key = ("sets", self.as_id, vm.kernel)        # redrawn in place: no axes rebuilt per step
        self._figs[key] = plot_memslots(vm, self.as_id, step=event, fig=self._figs.get(key), width=PANE_PX,
                                        title=False)
        return self._figs[key]

    def _count(self):
        """Steps of the call known so far (all of them unless its writer waits on a reader)."""
        if self.upd is None:
            return 0
        return (self._end if self._end is not None else len(self.vm.history)) - self.base

    def _timeline_svg(self, k, n):
        if self.upd is None:
            return ""
        svg, cursor = self._timeline_drawing(n)
        return _svg_div(with_cursor(svg, cursor, k), "the call's generations and locks, step by step")

    def _timeline_drawing(self, n):
        """(SVG, cursor geometry) of the call's timeline, drawn once per call and step count."""
        key = ("timeline", self.as_id, self.base, n, id(self.upd))
        drawn = self._cache.get(key)
        if drawn is None:
            fig = plot_call(self.vm, self.as_id, self.base, self.base + n)
            drawn = self._cache[key] = (to_svg(fig), fig.kv_cursor)
        return drawn

    def position_k(self):
        """The step of the call the Stepper shows (0 = before it).

        >>> st = Stepper(); _ = st.begin(1, 0, 0, 0x1000, 0x10000); _ = st.step(); st.position_k()
        1
        """
        return max(self.vm.history.cursor - self.base, 0) if self.upd is not None else 0

    def timeline_parts(self):
        """The timeline as the player needs it: (HTML at step 0, cursor geometry)."""
        svg, cursor = self._timeline_drawing(self._count())
        return self._timeline_svg(0, self._count()), [float(c) for c in cursor]

    def title(self):
        """A one-line title of the call: the version and what the first step says."""
        first = self.vm.history.events[self.base] if self._count() else None
        return f"{model_label(self.vm)}: KVM_SET_USER_MEMORY_REGION" + (
            f", {first.text}" if isinstance(first, Step) else "")

    @classmethod
    def for_call(cls, vm, start, end):
        """A Stepper over a call that already ran: history events ``[start, end)`` of ``vm``.

        >>> vm = VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
        >>> st = Stepper.for_call(vm, 0, 15); st.position.value
        'step 15 of 15: the ioctl returned 0'
        """
        st = cls(vm)
        last = vm.history.events[end - 1]
        st.upd = SimpleNamespace(result=last.result, blocked=None, region=None, change=last.change)
        st.base, st._end = start, end
        st._render()
        return st

    @classmethod
    def from_recipe(cls, recipe):
        """A Stepper over a recipe after its setup, e.g. a ``kvmviz check`` counterexample (``check.replay``).

        ``recipe`` is the recipe's text (``Path(file).read_text()``); its
        reader actions are steps of their own, as in the timeline.

        >>> st = Stepper.from_recipe("call slot=1 size=0x1000 hva=0x100000; begin slot=1 size=0; step 2")
        >>> st.position.value
        'step 2 of 2 so far'
        """
        sc, start = replay(recipe)
        return cls.for_call(sc.vm, start, len(sc.vm.history))

    def _cached(self, key, make):
        svg = self._cache.get(key)
        if svg is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            svg = self._cache[key] = _svg_div(to_svg(make()), f"memslot sets of as{self.as_id}")
        return svg

    def summary(self):
        """One line on where the call is, for the static output."""
        event = self.current
        where = self.position.value
        return f"{where} | {event}" if event is not None else where

    def frames(self):
        """Every step of the call as the Stepper shows it: dicts of position, stage, text, gen, figure, k.

        Each frame is drawn from the history (``kvmviz.engine.snapshot.state_at``):
        the VM does not move. The trees are read from the live VM only, so a
        Stepper showing them gives the object picture here. For the HTML player.

        >>> st = Stepper(); _ = st.begin(1, 0, 0, 0x1000, 0x10000); fs = st.frames()
        >>> len(fs), fs[0]["position"], ["slot 1 #1" in f["figure"] for f in fs[:3]], st.vm.history.cursor
        (16, 'step 0 of 15', [False, False, True], 0)
        """
        n, events = self._count(), self.vm.history.events
        view = "objects" if self.view.value == "trees" else self.view.value
        return [self._frame(k, n, state_at(self.vm, self.base + k), events[self.base + k - 1] if k else None, view)
                for k in range(n + 1)]

    def save_html(self, path):
        """Write the call as one self-contained HTML player (``kvmviz.viz.player``); returns the path."""
        Path(path).write_text(page(self), encoding="utf-8")
        return path

    def _static_bundle(self):
        text = self.summary()
        return {
            "text/plain": text,
            "text/html": (f"<details><summary>static copy (for readers without a kernel), "
                          f"{html.escape(model_label(self.vm))}: {html.escape(text)}</summary>"
                          f"{self.figure.value}{self.timeline.value}</details>"),
        }


def _as_options(vm):
    """The address spaces of ``vm`` for the form (as1 is SMM on x86)."""
    return [("0", 0), ("1 (SMM)", 1)][:vm.address_spaces]


def _view_options(vm):
    """The figure views: the 5.15 array has no trees, and its picture shows values, not objects."""
    tree = vm.implementation == "tree"
    return [("objects + pointer" if tree else "array + pointer", "objects"), ("gfn ranges", "sets")] + (
        [("trees", "trees")] if tree else [])


def _view_tooltips(vm):
    tips = {"objects": "each slot object once, an edge to each set holding it; kvm->memslots[as] points "
                       "to the active set" if vm.implementation == "tree" else
                       "kvm->memslots[as] points to one structure of slot values; mid-update the scratch "
                       "copy (kvm_dup_memslots) stands beside it",
            "sets": "both sets along the guest physical address space",
            "trees": "the gfn tree, hva interval tree and id hash of each set"}
    return [tips[value] for _label, value in _view_options(vm)]


def _header_html(vm):
    """The Stepper's header: which kernel version the VM models (the version's summary as tooltip).

    >>> _header_html(VM(kernel="6.12", address_spaces=1)).split(">")[1].split("<")[0]
    'Linux 6.12 model (1 address space)'
    """
    k = KERNELS[vm.kernel]
    return (f"<b title='{html.escape(k.summary, quote=True)}'>{html.escape(model_label(vm))}</b>, variant "
            f"<code>{html.escape(vm.variant)}</code>, {vm.address_spaces} address space(s)")


def _hex(value):
    return f"{value:#x}" if value >= 0 else f"-{-value:#x}"


def _svg_div(svg, label):
    """An inline SVG at its own size (scaled down only if wider than its pane), with a label for readers."""
    svg = svg.replace("<svg ", "<svg style='max-width:100%;height:auto' ", 1)
    return f"<div class='kv-svg' role='img' aria-label='{html.escape(label, quote=True)}' style='line-height:0'>{svg}</div>"


def _stage_html(current, skipped=frozenset()):
    """The stage bar: the current stage highlighted (``kv-current``), skipped ones dashed (``kv-skipped``).

    >>> "kv-skipped" in _stage_html("validate", {"invalidate"})
    True
    """
    parts = []
    for stage in STAGES + (("reader",) if current == "reader" else ()):
        if stage == current:
            parts.append(f"<span class='kv-current' style='background:{OKABE_ITO['yellow']};"
                         f"border:2px solid black;padding:1px 5px;font-weight:bold'>{stage}</span>")
        elif stage in skipped:
            parts.append(f"<span class='kv-skipped' title='this call skips {stage}' style='border:1px dashed #bbb;"
                         f"padding:1px 5px;color:#999;text-decoration:line-through'>{stage}</span>")
        else:
            parts.append(f"<span style='border:1px solid #999;padding:1px 5px;color:#444'>{stage}</span>")
    label = "" if current else " <i>before the call</i>"
    return "<div style='line-height:1.9'>stage: " + " › ".join(parts) + label + "</div>"


#: Keyboard for a focused Stepper: stock ipywidgets runs no scripts, but an inline event handler
#: on an image that fails to load does run; it binds the keys once per Stepper view.
_KEYS_HTML = (
    "<img alt='' src='data:image/png;base64,' style='display:none' onerror=\"(function(img){"
    "var root=img.closest('.t-stepper');if(!root||root.dataset.kvKeys)return;root.dataset.kvKeys='1';"
    "root.tabIndex=0;root.setAttribute('data-lm-suppress-shortcuts','true');root.style.outline='none';"
    "root.addEventListener('keydown',function(e){var m={ArrowRight:'.t-next',ArrowLeft:'.t-back',"
    "Home:'.t-first',End:'.t-last'}[e.key];var t=e.target.tagName;"
    "if(!m||t==='INPUT'||t==='SELECT'||t==='TEXTAREA')return;var b=root.querySelector('button'+m);"
    "e.preventDefault();e.stopPropagation();if(b&&!b.disabled)b.click();});})(this)\">")


def player(source, path=None, vm=None):
    """The HTML player of a call, as a string; also written to ``path`` if given.

    ``source`` is a ``Stepper`` (its current call), a ``VM`` (its last call),
    or the list of steps a call returned, with ``vm`` the VM they ran on.
    """
    stepper = source if isinstance(source, Stepper) else Stepper.for_call(*_call_of(source, vm))
    html_page = page(stepper)
    if path is not None:
        Path(path).write_text(html_page, encoding="utf-8")
    return html_page


def _call_of(source, vm):
    """(vm, first history index, end index) of the call ``source`` names."""
    if isinstance(source, (list, tuple, Steps)):
        if vm is None or not source:
            raise ValueError("a list of steps needs the VM they ran on: player(steps, vm=vm)")
        return vm, source[0].index, source[-1].index + 1
    vm = source
    events = vm.history.events[:vm.history.cursor]
    last = next((e for e in reversed(events) if isinstance(e, Step)), None)
    if last is None:
        raise ValueError("this VM has run no call yet: nothing to play")
    start = last.index
    while start > 0 and events[start - 1].call == last.call:
        start -= 1
    return vm, start, last.index + 1
