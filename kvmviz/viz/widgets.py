"""The Stepper: run ``KVM_SET_USER_MEMORY_REGION`` one step at a time in Jupyter.

Stock ipywidgets 8 only (no front-end extension), figures as PNG ``Image``
widgets. Every widget a test or lesson needs carries a stable CSS class
(``t-next``, ``t-stage``, ``t-gen``, ...). Each rendering is also published
as a plain display output (PNG and a short text), updated in place, so a
notebook saved with outputs or exported to HTML still shows the last step
without a kernel. The header names the modelled kernel version; the form's
kernel choice (``t-kernel``, over ``kvmviz.KERNELS``) starts a new VM of
another version.

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

import base64
import errno
import html
from collections import Counter

import ipywidgets as w
from IPython.display import display

from ..constants import KVM_MEM_LOG_DIRTY_PAGES, U64_MAX, flag_names
from ..errors import KvmError
from ..export import check_model, model_label
from ..kernels import KERNELS
from ..set_memory_region import check_ioctl, check_memory_region, make_region
from ..step import STAGES
from ..vm import VM
from .plots import OKABE_ITO, gen_text, plot_generations, plot_memslots, plot_trees, png_bytes

FIELDS = ("slot", "flags", "gpa", "size", "hva")
PRESETS = ("(fill the form from a preset)", "CREATE a new slot", "MOVE a slot", "DELETE a slot",
           "FLAGS_ONLY: toggle LOG_DIRTY_PAGES", "bad: unaligned gpa (EINVAL)",
           "bad: overlaps a slot (EEXIST)")
SPEEDS = (("slow (1 s)", 1000), ("normal (0.5 s)", 500), ("fast (0.2 s)", 200))
_CACHE_LIMIT = 256


class InputError(ValueError):
    """A form value that cannot become an ioctl argument; ``errno`` if the kernel would say one."""

    def __init__(self, message, err=None):
        super().__init__(message)
        self.errno = err


def parse_number(name, text):
    """Parse a form field: ``0x`` hex, decimal, or bare hex digits (e.g. ``7f00``).

    >>> parse_number("gpa", "0x10_0000"), parse_number("slot", "12"), parse_number("hva", "7f00")
    (1048576, 12, 32512)
    >>> parse_number("gpa", "0xzz")
    Traceback (most recent call last):
    ...
    kvmviz.viz.widgets.InputError: gpa: '0xzz' is not a number; write hex as 0x1000 or decimal as 4096
    """
    raw = str(text).strip().replace("_", "")
    sign = -1 if raw.startswith("-") else 1
    digits = raw.lstrip("+-")
    try:
        if digits.lower().startswith("0x") or not digits.isdigit():
            value = int(digits, 16)
        else:
            value = int(digits, 10)
    except ValueError:
        raise InputError(f"{name}: {str(text)!r} is not a number; write hex as 0x1000 "
                         "or decimal as 4096") from None
    return sign * value


def dry_run(vm, slot, flags, gpa, size, hva):
    """Run every check of the ioctl without changing ``vm``; return the change type.

    Models the checks of ``kvm_vm_ioctl_set_memory_region`` and
    ``__kvm_set_memory_region`` (reference §4.1-4.3); raises ``KvmError``
    with the kernel's errno, or ``ValueError`` for a value no C caller could
    pass. The cost counters are put back, so even they do not move.

    >>> vm = VM(); dry_run(vm, 1, 0, 0, 0x1000, 0x10000), len(vm.history)
    ('CREATE', 0)
    """
    region = make_region(slot, flags, gpa, size, hva)
    saved = Counter(vm.cost)
    try:
        check_ioctl(region, vm.kernel)
        return check_memory_region(vm, region).change
    finally:
        vm.cost.clear()
        vm.cost.update(saved)


def _text(value, cls, width="12em"):
    t = w.Text(value=value, description=cls.split("-")[-1], layout=w.Layout(width=width))
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
        self._build()
        self.fill_preset(PRESETS[1])
        self._render()

    # -- widgets ---------------------------------------------------------------
    def _build(self):
        self.header = w.HTML()
        self.header.add_class("t-header")
        self.kernel = w.Dropdown(options=[(f"Linux {k.name} ({k.implementation})", k.name) for k in KERNELS.values()],
                                 value=self.vm.kernel, description="kernel", layout=w.Layout(width="17em"))
        self.kernel.add_class("t-kernel")
        self.status = w.Label()
        self.status.add_class("t-status")
        self.slot = _text("1", "t-slot", "10em")
        self.as_field = w.Dropdown(options=_as_options(self.vm), value=self.as_id,
                                   description="as_id", layout=w.Layout(width="12em"))
        self.as_field.add_class("t-as")
        self.flags = _text("0x0", "t-flags", "12em")
        self.gpa = _text("0x0", "t-gpa", "16em")
        self.size = _text("0x100000", "t-size", "16em")
        self.hva = _text("0x7f0000000000", "t-hva", "20em")
        self.fail = w.Checkbox(value=False, description="fail prepare (-ENOMEM)", indent=False)
        self.fail.add_class("t-fail")
        self.preset = w.Dropdown(options=PRESETS, value=PRESETS[0], layout=w.Layout(width="22em"))
        self.preset.add_class("t-preset")
        self.begin_button = _button("begin call", "t-begin", "start KVM_SET_USER_MEMORY_REGION", "primary")
        self.first_button = _button("|◀ first", "t-first", "before the first step of this call")
        self.back_button = _button("◀ back", "t-back", "undo one step (exact previous state)")
        self.next_button = _button("next ▶", "t-next", "run or replay one step", "info")
        self.last_button = _button("last ▶|", "t-last", "run to the end of the call")
        self.play = w.Play(value=0, min=0, max=10 ** 9, interval=500, show_repeat=False)
        self.play.add_class("t-play")
        self.speed = w.Dropdown(options=SPEEDS, value=500, description="speed", layout=w.Layout(width="17em"))
        self.speed.add_class("t-speed")
        self.slider = w.IntSlider(value=0, min=0, max=0, description="step", continuous_update=False,
                                  layout=w.Layout(width="30em"))
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
        self.view = w.ToggleButtons(options=_view_options(self.vm), value="sets")
        self.view.add_class("t-view")
        self.figure = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.figure.add_class("t-figure")
        self.timeline = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.timeline.add_class("t-timeline")

        for button, action in ((self.begin_button, self._on_begin), (self.first_button, self.first),
                               (self.back_button, self.back), (self.next_button, self.step),
                               (self.last_button, self.last)):
            button.on_click(self._guarded(lambda _b, action=action: action()))
        self.preset.observe(self._guarded(lambda ch: self.fill_preset(ch["new"])), "value")
        self.play.observe(self._guarded(self._on_play), "value")
        self.speed.observe(lambda ch: setattr(self.play, "interval", ch["new"]), "value")
        self.slider.observe(self._guarded(self._on_slider), "value")
        self.view.observe(self._guarded(lambda ch: self._render()), "value")
        self.kernel.observe(self._guarded(lambda ch: self.choose_kernel(ch["new"])), "value")

        form = w.VBox([w.HBox([self.kernel, self.status]),
                       w.HBox([self.preset, self.slot, self.as_field, self.flags]),
                       w.HBox([self.gpa, self.size, self.hva]),
                       w.HBox([self.fail, self.begin_button])])
        transport = w.HBox([self.first_button, self.back_button, self.next_button, self.last_button,
                            self.play, self.speed])
        self.widget = w.VBox([self.header, form, self.error, transport, w.HBox([self.slider, self.position]),
                              self.stage, self.text, self.gen, self.view, self.figure, self.timeline])
        self.widget.add_class("t-stepper")

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
        self.upd, self.base, self.as_id = None, 0, min(self.as_id, self.vm.address_spaces - 1)
        self._cache.clear()
        self._figs.clear()
        self._set_kernel_field(name)
        self._syncing = True
        try:
            self.as_field.options, self.as_field.value = _as_options(self.vm), self.as_id
            self.view.options, self.view.value = _view_options(self.vm), "sets"
        finally:
            self._syncing = False
        self.error.value = ""
        running = " (with the call it was running)" if old.update is not None else ""
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
        refusal = self._refusal(slot, flags, gpa, size, hva)
        if refusal:
            self._show_error(refusal)
            return False
        self.upd = self.vm.begin_set_user_memory_region(slot, flags, gpa, size, hva, fail_prepare)
        self.as_id = self.upd.region.as_id
        self.base = self.vm.history.cursor
        self.error.value = ""
        self._render()
        return True

    def _refusal(self, slot, flags, gpa, size, hva):
        """Why this call must not start now (a message), or None."""
        vm = self.vm
        if "slots_lock" in vm.locks or (vm.update is not None and vm.history.at_frontier):
            return ("another call is in the middle of its steps (slots_lock is held): press "
                    "<i>last</i> to finish it, or go back before it, then begin again.")
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
            dry_run(vm, *wrapped.values())
        except KvmError as e:
            return f"<b>{e.errname}</b> (errno {e.errno}): {html.escape(e.message)}" + \
                   (f" (reference §{e.rule})" if e.rule else "") + (f". Note: {note}" if note else "") + \
                   ". The ioctl would fail: nothing was changed."
        except ValueError as e:
            return f"<b>not sent to the kernel</b>: {html.escape(str(e))}."
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
        return self.upd is None or (self.upd.result is not None and self.vm.history.at_frontier)

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
        for _ in range(limit):
            if self.upd.result is not None or self.upd.blocked:
                break
            next(self.upd)
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
        if not self.step() or (self.upd is not None and self.upd.blocked):
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
        vm, h = self.vm, self.vm.history
        event = self.current
        n = len(h) - self.base if self.upd is not None else 0
        k = h.cursor - self.base if self.upd is not None else 0
        self._syncing = True
        try:
            self.slider.max = max(n, 0)
            self.slider.value = max(k, 0)
        finally:
            self._syncing = False
        self.header.value = _header_html(vm)
        self.position.value = self._position_text(k, n)
        self.stage.value = _stage_html(getattr(event, "stage", None))
        self.text.value = self._event_html(event)
        self.gen.value = " &nbsp;|&nbsp; ".join(
            f"as{a}: generation <b>{gen_text(vm.generation(a))}</b> (set{vm.active_idx[a]} active; "
            f"set0 {gen_text(vm.sets[a][0].generation)}, set1 {gen_text(vm.sets[a][1].generation)})"
            for a in range(vm.address_spaces))
        at_start, done = k <= 0, self.finished
        self.first_button.disabled = self.back_button.disabled = at_start
        self.next_button.disabled = self.last_button.disabled = done
        self.figure.value = self._cached(self._figure_key(), self._draw_figure)
        self.timeline.value = self._cached(("timeline", self.as_id, self.base, h.cursor, n), self._draw_timeline)
        if self._static is not None:
            self._static.update(self._static_bundle(), raw=True)

    def _position_text(self, k, n):
        if self.upd is None:
            return "no call yet: fill the form and press begin"
        if self.upd.result is not None and k == n:
            r = self.upd.result
            ret = "0" if not r else f"-{errno.errorcode.get(-r, -r)}"
            return f"step {k} of {n}: the ioctl returned {ret}"
        more = "" if self.upd.result is not None else "+"
        blocked = f" (writer blocked: {self.upd.blocked})" if self.upd.blocked and k == n else ""
        return f"step {k} of {n}{more}{blocked}"

    def _event_html(self, event):
        if event is None:
            region = self.upd.region if self.upd is not None else None
            what = (f"slot {region.id} of as{region.as_id}, gpa {region.guest_phys_addr:#x}, size "
                    f"{region.memory_size:#x}, hva {region.userspace_addr:#x}, flags {flag_names(region.flags)}"
                    if region is not None else "nothing yet")
            return f"<b>before the call</b>: {html.escape(what)}"
        wait = " <i>(waiting)</i>" if getattr(event, "waiting", False) else ""
        return (f"<b><code>{html.escape(event.function)}</code></b>{wait}: "
                f"{html.escape(getattr(event, 'text', str(event)))}")

    def _figure_key(self):
        event = self.current
        sets = self.vm.sets[self.as_id]
        content = tuple(tuple((s.uid, s.flags, s.base_gfn) for s in st.slots()) for st in sets)
        return (self.view.value, self.as_id, tuple(getattr(event, "touched", ())),
                self.vm.generations()[self.as_id], content)

    def _draw_figure(self):
        if self.view.value == "trees":
            return plot_trees(self.vm, self.as_id, step=self.current)
        return self._reuse("sets", lambda fig: plot_memslots(self.vm, self.as_id, step=self.current, fig=fig))

    def _draw_timeline(self):
        return self._reuse("timeline", lambda fig: plot_generations(self.vm, self.as_id, first=self.base, fig=fig))

    def _reuse(self, name, draw):
        """Redraw into the figure kept for ``name`` (per address space): no axes rebuilt per step."""
        key = (name, self.as_id)
        self._figs[key] = draw(self._figs.get(key))
        return self._figs[key]

    def _cached(self, key, make):
        png = self._cache.get(key)
        if png is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            png = self._cache[key] = png_bytes(make())
        return png

    def summary(self):
        """One line on where the call is, for the static output."""
        event = self.current
        where = self.position.value
        return f"{where} | {event}" if event is not None else where

    def _static_bundle(self):
        figure = base64.b64encode(self.figure.value).decode()
        timeline = base64.b64encode(self.timeline.value).decode()
        text = self.summary()
        return {
            "text/plain": text,
            "image/png": figure,
            "text/html": (f"<details><summary>static copy (for readers without a kernel), "
                          f"{html.escape(model_label(self.vm))}: "
                          f"{html.escape(text)}</summary><img alt='memslot sets of as{self.as_id}' "
                          f"src='data:image/png;base64,{figure}'><br><img alt='generations and locks of "
                          f"this call' src='data:image/png;base64,{timeline}'></details>"),
        }


def _as_options(vm):
    """The address spaces of ``vm`` for the form (as1 is SMM on x86)."""
    return [("0", 0), ("1 (SMM)", 1)][:vm.address_spaces]


def _view_options(vm):
    """The figure views: the 5.15 array has no trees to show."""
    return [("memslot sets", "sets")] + ([("trees", "trees")] if vm.implementation == "tree" else [])


def _header_html(vm):
    """The Stepper's header: which kernel version the VM models, and how.

    >>> _header_html(VM(kernel="6.12", address_spaces=1)).split(":")[0]
    '<b>Linux 6.12 model (1 address space)</b>'
    """
    k = KERNELS[vm.kernel]
    return (f"<b>{html.escape(model_label(vm))}</b>: {html.escape(k.summary)}. Variant "
            f"<code>{html.escape(vm.variant)}</code>, {vm.address_spaces} address space(s).")


def _hex(value):
    return f"{value:#x}" if value >= 0 else f"-{-value:#x}"


def _stage_html(current):
    """The stage bar: the current stage highlighted (class ``kv-current``)."""
    parts = []
    for stage in STAGES + (("reader",) if current == "reader" else ()):
        if stage == current:
            parts.append(f"<span class='kv-current' style='background:{OKABE_ITO['yellow']};"
                         f"border:2px solid black;padding:1px 6px;font-weight:bold'>{stage}</span>")
        else:
            parts.append(f"<span style='border:1px solid #999;padding:1px 6px;color:#555'>{stage}</span>")
    label = "" if current else " &nbsp;<i>before the call</i>"
    return "stage: " + " › ".join(parts) + label
