"""The Stepper without a browser: click handlers, form parsing, bad input, history moves."""

import errno

import pytest

import kvmviz
from kvmviz import viz
from kvmviz.viz.widgets import PRESETS, InputError, Stepper, dry_run, parse_number


def vm_with(n):
    vm = kvmviz.VM()
    for i in range(n):
        vm.set_user_memory_region(i, 0, i * 0x200000, 0x100000, 0x7f0000000000 + i * 0x10000000)
    return vm


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
    assert st.upd is not None and st.position.value == "step 0 of 0+"
    assert "before the call" in st.text.value and st.error.value == ""
    assert st.back_button.disabled and not st.next_button.disabled
    states = [visible(st.vm)]
    for _ in range(8):
        click(st.next_button)
        states.append(visible(st.vm))
    assert st.position.value == "step 8 of 8+"
    assert "<span class='kv-current'" in st.stage.value
    for expected in reversed(states[:-1]):
        click(st.back_button)
        assert visible(st.vm) == expected
    assert st.back() is False                            # already before the call
    assert st.position.value == "step 0 of 8+"


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
    st.begin(0, 0, 0x0, 0, 0x7f0000000000)                 # DELETE slot 0
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
    st.begin(0, 1, 0x0, 0x100000, 0x7f0000000000)          # FLAGS_ONLY
    click(st.last_button)
    total = len(st.upd.steps)
    assert st.slider.max == total and st.slider.value == total
    st.slider.value = 3
    assert st.vm.history.cursor == st.base + 3 and st.position.value == f"step 3 of {total}"
    click(st.first_button)
    assert st.vm.history.cursor == st.base and st.slider.value == 0
    st.goto(total)
    assert st.upd.result == 0 and st.vm.memslots(0)[0].flags == 1


def test_slider_jump_ahead_of_recorded_steps_runs_them():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    st.goto(6)
    assert len(st.upd.steps) == 6 and st.current.stage == "replace"


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
    st.begin(0, 0, 0, 0, 0x7f0000000000)                    # DELETE needs a grace period
    st.play.playing = True
    for _ in range(100):
        if not st.play.playing:
            break
        st.play.value += 1
    assert st.play.playing is False and st.upd.blocked == "SRCU readers still inside: vcpu0"
    assert "writer blocked" in st.position.value
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
    assert dry_run(st.vm, *args) == change
    click(st.begin_button)
    st.last()
    assert st.upd.change == change and st.upd.result == 0


@pytest.mark.parametrize("fields, errname, words", [
    ({"gpa": "0x100001"}, "EINVAL", "is not page-aligned"),
    ({"gpa": "0x0"}, "EEXIST", "overlap slot 0"),
    ({"flags": "0x4"}, "EINVAL", "LOG_DIRTY_PAGES|READONLY"),      # 6.12's v1 filter or 5.x's flag check
    ({"slot": "32764"}, "EINVAL", "KVM_USER_MEM_SLOTS"),
    ({"size": "0"}, "EINVAL", "does not exist"),
    ({"gpa": "-0x1000"}, "EINVAL", "is negative, but the field is unsigned: C would pass 0xfffffffffffff000"),
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


@pytest.mark.parametrize("text", ["0xzz", "twelve", "", "0x1.5"])
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


def test_begin_refused_while_a_call_is_mid_way():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    st.step(); st.step(); st.step()
    before = state(st.vm)
    assert st.begin(2, 0, 0x400000, 0x1000, 0x7f0020000000) is False
    assert state(st.vm) == before and "slots_lock is held" in st.error.value


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
    fill(st, slot="3", flags="0", gpa="0x0", size="0x2000", hva="0x7f0000000000")
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
    images = []
    while st.step():
        images.append((st.current.function, st.figure.value, st.timeline.value))
    assert len({t for _, _, t in images}) == len(images)              # the timeline grows every step
    replaced = [i for i, (f, _, _) in enumerate(images) if f in ("kvm_replace_memslot", "kvm_move_memslot")]
    assert all(images[i][1] != images[i - 1][1] for i in replaced)
    assert images[1][1] == images[2][1]                                # validate steps: sets unchanged
    st.view.value = "trees"
    assert st.figure.value != images[-1][1]


def test_static_copy_has_png_and_short_text():
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    st.step()
    bundle = st._static_bundle()
    assert bundle["text/plain"] == st.summary() and bundle["text/plain"].startswith("step 1 of 1+ | [validate]")
    assert bundle["image/png"].startswith("iVBOR")                      # base64 of a PNG
    assert "static copy" in bundle["text/html"] and bundle["text/html"].count("data:image/png") == 2


def test_a_failing_handler_shows_a_message_not_a_traceback(monkeypatch):
    st = Stepper(vm_with(1))
    st.begin(1, 0, 0x200000, 0x1000, 0x7f0010000000)
    monkeypatch.setattr(st.vm.history, "forward", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    st.step(); st.back()
    click(st.next_button)                                             # replay path now raises
    assert "RuntimeError: boom" in st.error.value


def test_parse_number_forms():
    assert parse_number("x", " 0x1_000 ") == 0x1000
    assert parse_number("x", "4096") == 4096
    assert parse_number("x", "-0x10") == -16
    with pytest.raises(InputError, match="slot: 'abc!' is not a number"):
        parse_number("slot", "abc!")


def test_a_vm_without_history_is_refused_clearly():
    with pytest.raises(ValueError, match="history=True"):
        Stepper(kvmviz.VM(history=False))


def test_begin_takes_strings_and_refuses_junk_without_raising():
    st = Stepper()
    assert st.begin("1", "0", "0x0", "0x1000", "0x10000") and st.upd.region.memory_size == 0x1000
    st.last()
    assert st.begin(2, 0, 1.5, 0x1000, 0x20000) is False and "is not a number" in st.error.value


# -- kernel versions -------------------------------------------------------------------------------
def test_header_and_kernel_choice_start_from_the_vms_version():
    st = Stepper(kvmviz.VM(kernel="5.17"))
    assert st.kernel.value == "5.17" and [v for _, v in st.kernel.options] == list(kvmviz.KERNELS)
    assert st.header.value.startswith("<b>Linux 5.17 model</b>: the 5.17 merge")
    assert "Variant <code>merged</code>, 2 address space(s)." in st.header.value
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
    assert st.header.value.startswith("<b>Linux 5.15 model</b>")
    assert st.position.value == "no call yet: fill the form and press begin"
    assert [v for _, v in st.view.options] == ["sets"]            # the array has no trees
    assert st.begin(1, 0, 0, 0x1000, 0x7f0000000000)
    st.last()
    assert st.upd.result == 0 and "kvm_dup_memslots" in [s.function for s in st.upd.steps]
    st.kernel.value = "6.12"
    assert st.vm.kernel == "6.12" and [v for _, v in st.view.options] == ["sets", "trees"]
    fill(st, slot="1", flags="0", gpa=hex(1 << 52), size="0x1000", hva="0x7f0000000000")
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
    assert st.header.value.startswith("<b>Linux 5.15 model</b>") and st.gen.value.count("generation <b>") == 2
