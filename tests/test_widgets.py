"""The Stepper without a browser: click handlers, form parsing, bad input, history moves."""

import errno

import pytest

import kvmviz
from kvmviz import viz
from kvmviz.viz.widgets import PRESETS, InputError, Stepper, parse_number
from conftest import HVA, vm_with


def state(vm):
    """Everything a learner could see change, plus the history and cost counters."""
    sets = [[(s.uid, s.base_gfn, s.npages, s.flags, s.invalid) for s in st.slots()]
            for pair in vm.sets for st in pair]
    return (sets, vm.generations(), vm.locks, vm.history.cursor, len(vm.history), dict(vm.cost),
            vm.nr_memslot_pages)


def visible(vm):
    """``state`` without the history length and cost counters, which replaying moves on."""
    full = state(vm)
    return full[:4] + full[6:]


def fill(st, **fields):
    for name, value in fields.items():
        getattr(st, name).value = value


def click(button):
    button.click()


def test_exported_from_viz():
    assert viz.Stepper is Stepper


def test_form_begin_next_back_restore_exact_states():
    st = Stepper(vm_with(2))
    fill(st, slot="5", flags="0x0", gpa="0x10000000", size="0x100000", hva="0x7f0050000000")
    click(st.begin_button)
    assert st.upd is not None and st.position.value == "step 0 of 15"      # known from the dry run
    assert "before the call" in st.text.value and st.error.value == ""
    assert st.back_button.disabled and not st.next_button.disabled
    states = [visible(st.vm)]
    for _ in range(8):
        click(st.next_button)
        states.append(visible(st.vm))
    assert st.position.value == "step 8 of 15"
    assert "<span class='kv-current'" in st.stage.value
    for expected in reversed(states[:-1]):
        click(st.back_button)
        assert visible(st.vm) == expected
    assert st.back() is False                            # already before the call
    assert st.position.value == "step 0 of 15"


def test_step_returns_false_when_finished_and_buttons_follow():
    st = Stepper(vm_with(1))
    assert st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    n = 0
    while st.step():
        n += 1
    assert n == len(st.upd.steps) == 15 and st.upd.result == 0
    assert st.position.value == "step 15 of 15: the ioctl returned 0"
    assert st.next_button.disabled and st.last_button.disabled and not st.back_button.disabled
    assert "0x4" in st.gen.value and "stage: " in st.stage.value and ">commit<" in st.stage.value
    assert st.step() is False


def test_back_then_next_replays_the_recorded_steps():
    st = Stepper(vm_with(2))
    st.begin(0, 0, 0x0, 0, HVA)                 # DELETE slot 0
    st.last()
    end = visible(st.vm)
    figure_at_end = st.figure.value
    for _ in range(10):
        st.back()
    assert st.vm.history.cursor == st.base + len(st.upd.steps) - 10
    while st.step():
        pass
    assert visible(st.vm) == end and st.figure.value == figure_at_end     # same state, same pixels


def test_first_last_slider_and_goto():
    st = Stepper(vm_with(1))
    st.begin(0, 1, 0x0, 0x100000, HVA)          # FLAGS_ONLY
    click(st.last_button)
    total = len(st.upd.steps)
    assert st.slider.max == total and st.slider.value == total
    st.slider.value = 3
    assert st.vm.history.cursor == st.base + 3 and st.position.value == f"step 3 of {total}"
    click(st.first_button)
    assert st.vm.history.cursor == st.base and st.slider.value == 0
    st.goto(total)
    assert st.upd.result == 0 and st.vm.memslots(0)[0].flags == 1


def test_begin_runs_the_whole_call_then_rewinds_to_step_0():
    st = Stepper(vm_with(1))
    before = visible(st.vm)
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    assert len(st.upd.steps) == 15 and st.upd.result == 0 and visible(st.vm) == before
    assert st.slider.max == 15 and st.position.value == "step 0 of 15"
    st.goto(6)
    assert st.current.stage == "replace" and st.position.value == "step 6 of 15"


def test_play_steps_on_each_tick_and_stops_at_the_end():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    st.play.playing = True
    for _ in range(40):
        st.play.value += 1
    assert st.upd.result == 0 and st.play.playing is False
    assert st.vm.history.cursor == st.base + 15
    st.speed.value = 200
    assert st.play.interval == 200


def test_play_stops_when_a_reader_blocks_the_writer():
    vm = vm_with(1)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    st = Stepper(vm)
    st.begin(0, 0, 0, 0, HVA)                    # DELETE needs a grace period
    st.play.playing = True
    for _ in range(100):
        if not st.play.playing:
            break
        st.play.value += 1
    assert st.play.playing is False and st.upd.blocked == "SRCU readers still inside: vcpu0"
    assert st.position.value.endswith("so far (the writer waits: SRCU readers still inside: vcpu0)")
    v.srcu_read_unlock()
    st.last()
    assert st.upd.result == 0


@pytest.mark.parametrize("preset, change", [(PRESETS[1], "CREATE"), (PRESETS[2], "MOVE"),
                                            (PRESETS[3], "DELETE"), (PRESETS[4], "FLAGS_ONLY")])
def test_presets_fill_a_valid_call_of_their_kind(preset, change):
    st = Stepper(vm_with(3))
    st.slot.value = "1"
    st.preset.value = preset
    args = st.read_form()
    before = len(st.vm.history)
    assert st.vm.dry_run(*args)[-1].change == change and st.vm.dry_run(*args)[-1].result == 0
    assert len(st.vm.history) == before
    click(st.begin_button)
    st.last()
    assert st.upd.change == change and st.upd.result == 0


@pytest.mark.parametrize("fields, errname, words", [
    ({"gpa": "0x100001"}, "EINVAL", "is not page-aligned"),
    ({"gpa": "0x0"}, "EEXIST", "overlap slot 0"),
    ({"flags": "0x4"}, "EINVAL", "LOG_DIRTY_PAGES|READONLY"),      # 6.12's v1 filter or 5.x's flag check
    ({"slot": "32764"}, "EINVAL", "KVM_USER_MEM_SLOTS"),
    ({"size": "0"}, "EINVAL", "does not exist"),
])
def test_bad_input_shows_errno_and_leaves_vm_unchanged(fields, errname, words):
    st = Stepper(vm_with(2))
    fill(st, slot="9", flags="0x0", gpa="0x1000000", size="0x1000", hva="0x7f0090000000")
    fill(st, **fields)
    before = state(st.vm)
    click(st.begin_button)
    assert state(st.vm) == before and st.upd is None
    assert f"<b>{errname}</b> (errno {getattr(errno, errname)})" in st.error.value
    assert words in st.error.value and "Traceback" not in st.error.value


def test_a_negative_api_argument_says_what_c_would_pass():
    st = Stepper(vm_with(2))
    before = state(st.vm)
    assert st.begin(9, 0, -0x1000, 0x1000, 0x7f0090000000) is False and state(st.vm) == before
    assert "<b>EINVAL</b> (errno 22)" in st.error.value
    assert "is negative, but the field is unsigned: C would pass 0xfffffffffffff000" in st.error.value


@pytest.mark.parametrize("text", ["0xzz", "twelve", "", "0x1.5", "1e6", "abc", "7f00", "-0x1000", "0x1_000"])
def test_non_numbers_are_refused_before_the_kernel(text):
    st = Stepper(vm_with(1))
    before = state(st.vm)
    st.hva.value = text
    click(st.begin_button)
    assert state(st.vm) == before
    assert "is not a number" in st.error.value and "Nothing was sent to the kernel" in st.error.value


def test_values_too_wide_for_the_ioctl_are_refused():
    st = Stepper()
    assert st.begin(1, 0, 1 << 64, 0x1000, 0x10000) is False
    assert "not sent to the kernel" in st.error.value and "__u64" in st.error.value
    assert len(st.vm.history) == 0


def test_begin_mid_way_finishes_the_call_first():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    st.step(); st.step(); st.step()
    assert st.begin(2, 0, 0x400000, 0x1000, 0x7f0020000000) is True
    assert "the previous call was finished first (step 15 of 15: the ioctl returned 0)" in st.hint.value
    assert st.position.value == "step 0 of 15" and st.error.value == ""
    st.last()
    assert [s.id for s in st.vm.memslots(0)] == [0, 1, 2] and kvmviz.check_invariants(st.vm) == []


def test_begin_at_step_0_drops_the_call_that_had_not_started():
    st = Stepper(vm_with(1))
    before = state(st.vm)
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    assert st.begin(2, 0, 0x400000, 0x1000, 0x7f0020000000)
    assert "the call that had not started was dropped." in st.hint.value
    st.last()
    assert [s.id for s in st.vm.memslots(0)] == [0, 2] and state(st.vm)[3] == before[3] + 15


def test_a_preset_during_a_call_finishes_it_and_fills_from_the_result():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    st.step()
    st.slot.value = "1"
    st.preset.value = "DELETE a slot"                               # what the menu does
    assert st.finished and st.upd.result == 0 and "finished first" in st.hint.value
    assert (st.slot.value, st.size.value) == ("1", "0x0")
    click(st.begin_button)
    assert st.position.value == "step 0 of 26" and st.error.value == ""


def test_play_after_the_end_says_so():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    st.last()
    st.play.playing = True
    st.play.value += 1
    assert st.play.playing is False and "the call has finished, nothing is left to run" in st.hint.value


def test_stage_bar_marks_the_stages_a_change_skips():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)              # CREATE: no invalidate
    assert st.stage.value.count("kv-skipped") == 1 and "this call skips invalidate" in st.stage.value
    st.last()
    st.begin(0, 0, 0, 0, HVA)                          # a DELETE runs every stage
    assert "kv-skipped" not in st.stage.value
    st.last()
    st.begin(1, 1, 0x200000, 0x1000, 0x7f0010000000)              # FLAGS_ONLY: no invalidate
    assert "this call skips invalidate" in st.stage.value and st.upd.change == "FLAGS_ONLY"


def test_every_button_has_a_tooltip_and_keys_are_bound_once():
    st = Stepper()
    for b in (st.begin_button, st.first_button, st.back_button, st.next_button, st.last_button,
              st.form_toggle, st.play):
        assert b.tooltip, b
    assert ("(→)" in st.next_button.tooltip and "(←)" in st.back_button.tooltip
            and "Home" in st.first_button.tooltip and "End" in st.last_button.tooltip)
    assert "ArrowRight:'.t-next'" in st.keys.value and "kvKeys" in st.keys.value


def test_the_form_is_collapsed_until_asked_for():
    st = Stepper()
    assert st.form.layout.display == "none"
    st.form_toggle.value = True
    assert st.form.layout.display == "flex" and st.form_toggle.description == "arguments ▾"


def test_the_picture_draws_each_object_once_and_the_pointer():
    st = Stepper(vm_with(2))
    st.begin(1, 0, 0x1000000, 0x100000, 0x7f0010000000)          # MOVE slot 1
    st.goto(7)                                                    # the first rcu_assign_pointer
    assert st.current.function == "rcu_assign_pointer"
    svg = st.figure.value
    assert svg.count("kvm-&gt;memslots[0]") == 1 and "set1 (ACTIVE)" in svg
    assert svg.count("slot 0 #1") == 1                           # held by both sets, drawn once
    assert "slot 1 #2" in svg and "slot 1 #4" in svg             # old object and its INVALID copy
    st.back()
    assert "set0 (ACTIVE)" in st.figure.value


def test_the_timeline_is_laid_out_once_and_only_its_cursor_moves():
    st = Stepper(vm_with(2))
    st.begin(1, 0, 0x1000000, 0x100000, 0x7f0010000000)
    drawings = set()
    cursors = []
    while st.step():
        svg = st.timeline.value
        drawings.add(svg[:svg.index('<g class="kv-cursor">')])
        cursors.append(float(svg.split('<g class="kv-cursor"><rect x="')[1].split('"')[0]))
    assert len(drawings) == 1 and cursors == sorted(cursors) and len(set(cursors)) == 28
    assert "swap: set1 active" in st.timeline.value and "step of this call" in st.timeline.value


def test_player_of_a_stepper_has_every_step_text(tmp_path):
    st = Stepper(vm_with(1))
    st.begin(0, 0, 0, 0, HVA)                          # DELETE: 26 steps
    path = st.save_html(tmp_path / "delete.html")
    page = path.read_text()
    assert page.count("step ") >= 27 and "step 26 of 26: the ioctl returned 0" in page
    assert "<script src" not in page and "http://" not in page.split("<script>")[1]
    assert '"frames"' in page and page.count("<svg") >= 1
    assert st.vm.history.cursor == st.base                        # the VM is put back
    st.goto(7)
    assert '"start": 7' in st.save_html(tmp_path / "at7.html").read_text()    # opens at the Stepper's step


def test_reset_forgets_the_call_and_a_new_one_starts_from_there():
    vm = vm_with(1)
    start = state(vm)
    st = Stepper(vm)
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    for _ in range(5):
        st.step()
    st.reset()
    assert state(vm)[:4] == start[:4] and st.upd is None and st.step() is False
    assert st.begin(2, 0, 0x400000, 0x1000, 0x7f0020000000)
    st.last()
    assert [s.id for s in vm.memslots(0)] == [0, 2] and kvmviz.check_invariants(vm) == []


def test_address_space_field_and_fail_prepare_toggle():
    st = Stepper()
    fill(st, slot="3", flags="0", gpa="0x0", size="0x2000", hva=hex(HVA))
    st.as_field.value = 1
    st.fail.value = True
    click(st.begin_button)
    assert st.upd.region.as_id == 1 and st.upd.region.id == 3
    st.last()
    assert st.upd.result == -errno.ENOMEM and st.position.value.endswith("returned -ENOMEM")
    assert "as1/set" in st.upd.steps[-1].text or st.vm.memslots(1) == []


def test_figures_redraw_only_when_the_state_they_show_changes():
    st = Stepper(vm_with(2))
    st.begin(1, 0, 0x1000000, 0x100000, 0x7f0010000000)
    st.view.value = "sets"
    images = []
    while st.step():
        images.append((st.current.function, st.figure.value, st.timeline.value))
    assert len({t for _, _, t in images}) == len(images)              # the cursor moves every step
    replaced = [i for i, (f, _, _) in enumerate(images) if f in ("kvm_replace_memslot", "kvm_move_memslot")]
    assert all(images[i][1] != images[i - 1][1] for i in replaced)
    assert images[1][1] == images[2][1]                                # validate steps: sets unchanged
    st.view.value = "trees"
    assert st.figure.value != images[-1][1]


def test_static_copy_has_svg_and_short_text():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    st.step()
    bundle = st._static_bundle()
    assert bundle["text/plain"] == st.summary() and bundle["text/plain"].startswith("step 1 of 15 | [validate]")
    assert "static copy" in bundle["text/html"] and bundle["text/html"].count("<svg") == 2


def test_a_failing_handler_shows_a_message_not_a_traceback(monkeypatch):
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    monkeypatch.setattr(st.vm.history, "forward", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    click(st.next_button)                                             # replay path now raises
    assert "RuntimeError: boom" in st.error.value


def test_parse_number_is_the_clis():
    from kvmviz.engine import numbers
    assert parse_number("x", " 0x1000 ") == 0x1000 == numbers.parse_number("0x1000")
    assert parse_number("x", "4096") == 4096
    for text in ("1e6", "abc", "-0x10", "7f00"):
        with pytest.raises(InputError, match=f"size: '{text}' is not a number"):
            parse_number("size", text)


def test_a_vm_without_history_is_refused_clearly():
    with pytest.raises(ValueError, match="history=True"):
        Stepper(kvmviz.VM(history=False))


def test_begin_takes_strings_and_refuses_junk_without_raising():
    st = Stepper()
    assert st.begin("1", "0", "0x0", "0x1000", "0x10000") and st.upd.region.memory_size == 0x1000
    st.last()
    assert st.begin(2, 0, 1.5, 0x1000, 0x20000) is False and "gpa must be an int, not 1.5" in st.error.value


# -- kernel versions -------------------------------------------------------------------------------
def test_header_and_kernel_choice_start_from_the_vms_version():
    st = Stepper(kvmviz.VM(kernel="5.17"))
    assert st.kernel.value == "5.17" and [v for _, v in st.kernel.options] == list(kvmviz.KERNELS)
    assert st.header.value.startswith("<b title='the 5.17 merge") and ">Linux 5.17 model</b>" in st.header.value
    assert "variant <code>merged</code>, 2 address space(s)" in st.header.value
    assert st.status.value == "" and "t-kernel" in st.kernel._dom_classes
    assert "Linux 5.17 model" in st._static_bundle()["text/html"]


def test_choosing_a_kernel_makes_a_new_vm_of_that_version_and_says_so():
    old = vm_with(2)
    st = Stepper(old)
    st.begin(1, 0, 0x1000000, 0x100000, 0x7f0010000000)
    st.step()
    before = state(old)
    st.kernel.value = "5.15"                                      # what a learner's click does
    assert st.vm is not old and st.vm.kernel == "5.15" and st.vm.implementation == "array"
    assert st.vm.memslots(0) == [] and st.upd is None and state(old) == before
    assert st.status.value == ("new VM: Linux 5.15 model, empty; the Linux {} VM (with the call it was "
                               "running) and its history are left as they were").format(old.kernel)
    assert ">Linux 5.15 model</b>" in st.header.value
    assert st.position.value.startswith("no call yet: choose a preset")
    assert [v for _, v in st.view.options] == ["objects", "sets"]  # the array has no trees
    assert st.view.options[0][0] == "array + pointer" and "memslots@" in st.figure.value
    assert st.begin(1, 0, 0, 0x1000, HVA)
    st.last()
    assert st.upd.result == 0 and "kvm_dup_memslots" in [s.function for s in st.upd.steps]
    st.kernel.value = "6.12"
    assert st.vm.kernel == "6.12" and [v for _, v in st.view.options] == ["objects", "sets", "trees"]
    fill(st, slot="1", flags="0", gpa=hex(1 << 52), size="0x1000", hva=hex(HVA))
    click(st.begin_button)
    st.last()
    assert st.upd.result == -errno.EINVAL and "kvm_mmu_max_gfn()" in " ".join(s.text for s in st.upd.steps)


def test_a_variant_that_does_not_apply_keeps_the_vm():
    vm = kvmviz.VM(kernel="6.12", variant="seed")
    st = Stepper(vm)
    assert st.choose_kernel("5.15") is False
    assert st.vm is vm and st.kernel.value == "6.12"
    assert "kernel 5.15 not chosen" in st.error.value and "array design" in st.error.value
    assert st.choose_kernel("5.17") and st.vm.variant == "seed" and st.vm.kernel == "5.17"
    assert st.choose_kernel("5.17") is False                      # already that version


def test_one_address_space_vm_keeps_its_form_and_generation_line():
    st = Stepper(kvmviz.VM(kernel="6.12", address_spaces=1))
    assert [v for _, v in st.as_field.options] == [0]
    assert st.gen.value.count("generation") == 1 and "as1" not in st.gen.value
    st.kernel.value = "5.15"                                      # 5.x x86 always has SMM: two, and why
    assert st.vm.address_spaces == 2 and [v for _, v in st.as_field.options] == [0, 1]
    assert "(2 address spaces: x86 5.15 always has 2 memslot address spaces" in st.status.value
    assert ">Linux 5.15 model</b>" in st.header.value and st.gen.value.count("generation <b>") == 2


def test_cli_explain_html_writes_the_player(tmp_path):
    import io
    from kvmviz.cli import main
    out, path = io.StringIO(), tmp_path / "delete.html"
    status = main(["explain", "--kernel", "5.17", "--setup", "call slot=1 gpa=0x100000 size=0x100000 "
                   "hva=0x7f0000000000", "--slot", "1", "--gpa", "0x100000", "--size", "0", "--hva",
                   "0x7f0000000000", "--html", str(path)], out)
    steps = int(out.getvalue().split("HTML player of the call's ")[1].split()[0])
    page = path.read_text()
    assert status == 0 and f"step {steps} of {steps}: the ioctl returned 0" in page
    assert "Linux 5.17 model" in page and "DELETE slot 1" in page
    print(f"player of a {steps}-step DELETE on 5.17: {len(page.encode())} bytes")


def test_readers_are_lanes_of_the_timeline_and_the_dry_run_stops_at_their_wait():
    vm = vm_with(1)
    v = vm.add_vcpu()
    v.srcu_read_lock()                                            # pins the active set
    st = Stepper(vm)
    st.begin(0, 0, 0, 0, HVA)                          # DELETE: waits for the grace period
    assert st.position.value == "step 0 of 8 so far (the writer waits: SRCU readers still inside: vcpu0)"
    assert "reader vcpu0" in st.timeline.value
    st.last()
    v.srcu_read_unlock()
    st.last()
    assert st.upd.result == 0 and st.position.value.startswith("step 28 of 28")
    assert "reader vcpu0" in st.timeline.value and st.timeline.value.count('class="kv-cursor"') == 1


def test_many_slots_keep_the_object_picture_with_the_changing_rows_and_a_fold():
    st = Stepper(vm_with(32))
    st.begin(5, 0, 0x40000000, 0x100000, 0x7f0050000000)           # MOVE slot 5
    heights = set()
    for k in (0, 8, 17, 28):
        st.goto(k)
        svg = st.figure.value
        heights.add(svg.split('height="')[1].split('"')[0])
        assert "more slots, each object held by both sets" in svg
    st.goto(8)
    assert "slot 5 #6" in st.figure.value and "slot 5 #34" in st.figure.value    # old object, INVALID copy
    assert len(heights) == 1                                       # the picture keeps its size


def test_a_broken_variant_ends_the_call_with_bug_not_a_crash():
    """The update's result is "BUG" (a string): the position line says so (was a TypeError)."""
    vm = kvmviz.VM(variant="no-catch-up")
    vm.set_user_memory_region(1, 0, 0x100000, 0x1000, HVA)
    st = Stepper(vm)
    st.begin(1, 0, 0x100000, 0, HVA)
    for _ in range(len(st.upd.steps)):
        st.step()
    n = len(st.upd.steps)
    assert st.upd.result == "BUG" and st._position_text(n, n) == f"step {n} of {n}: the model hit BUG"


def test_a_variant_whose_steps_end_without_a_result_ends_in_bug_not_stopiteration():
    """Issue 14 finding 8: the Stepper showed "StopIteration:" when a variant's protocol returned early."""
    class Truncated(kvmviz.MergedProtocol):
        def run(self, upd, region, fail):
            yield self.step("__kvm_set_memory_region", "checked, then forgot to finish")

    st = Stepper(kvmviz.VM(variant=Truncated))
    assert st.begin(1, 0, 0x100000, 0x1000, HVA)
    st.last()
    assert st.error.value == "" and "StopIteration" not in st.text.value
    assert st.upd.result == "BUG" and st.position.value == "step 2 of 2: the model hit BUG"
    assert "ended without a last step that returns a result" in st.text.value
    assert st.vm.locks == frozenset() and kvmviz.VM(variant=Truncated).begin_set_user_memory_region(
        1, 0, 0, 0x1000, HVA).run()[-1].result == "BUG"
