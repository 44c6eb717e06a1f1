"""The one scenario language: old recipe and script spellings, round trips, dry runs, run_until."""

import errno

import pytest

import kvmviz
from kvmviz import Schedule, export
from kvmviz.engine.fmt import gen_text, result_text
from kvmviz.engine.numbers import parse_errno, parse_number
from kvmviz.engine.scenario import (OLD_SPELLINGS, VERBS, RecipeError, Scenario, parse_action, parse_recipe,
                                    replay_recipe)

HVA = 0x7F0000000000
#: One scenario in today's spelling: a slot, a reader inside across a DELETE, a notifier across a CREATE.
TODAY = f"""kvmviz-recipe 1
version 0.1.0
kernel 5.17
address-spaces 2
variant merged
call slot=0x1 flags=0x0 gpa=0x100000 size=0x10000 hva={HVA:#x}
vcpu 0 lock
vcpu 0 access 0x100
begin slot=0x1 flags=0x0 gpa=0x0 size=0x0 hva=0x0
step 3
run
vcpu 0 unlock
finish
mn start {HVA:#x} {HVA + 0x1000:#x}
begin slot=0x2 flags=0x0 gpa=0x200000 size=0x1000 hva={HVA:#x}
run
mn end {HVA:#x} {HVA + 0x1000:#x}
run
call slot=0x3 flags=0x0 gpa=0x300000 size=0x1000 hva={HVA + 0x200000:#x} fail-prepare=ENOMEM"""
#: The same scenario in every older form kvmviz has read: as ``export.recipe`` wrote it before the
#: ``kernel`` line (it means 5.17), with the ``Schedule`` script's spellings, decimal numbers,
#: ``fail-prepare`` as a number, ``;`` between lines, comments, no header at all (then the kernel is given).
OLD_FORMS = {
    "no kernel line (written before it existed)": TODAY.replace("kernel 5.17\naddress-spaces 2\n", ""),
    "Schedule spellings vcpu0/mmu/writer": (
        TODAY.replace("vcpu 0 ", "vcpu0 ").replace("mn ", "mmu ").replace("step 3", "writer\nwriter\nwriter")
        .replace("\nrun\n", "\nwriter run\n")),
    "hex vCPU and step numbers (as saved before), decimal slot, errno by number": (
        TODAY.replace("vcpu 0 ", "vcpu 0x0 ").replace("step 3", "step 0x3").replace("slot=0x1", "slot=1")
        .replace("fail-prepare=ENOMEM", f"fail-prepare={errno.ENOMEM}")),
    "one line, comments, lower-case errno": (
        TODAY.replace("\n", "; ").replace("kvmviz-recipe 1; ", "kvmviz-recipe 1 # saved by hand\n")
        .replace("ENOMEM", "enomem")),
}


def _outcome(sc):
    return export.text(sc.events), sc.results, sc.vm.generations(), export.text(sc.vm)


def test_todays_recipe_replays_to_known_results():
    sc = replay_recipe(TODAY, check=True)
    assert sc.kernel == "5.17" and sc.results == [0, 0, 0, -errno.ENOMEM]
    assert [gen_text(g) for g in sc.vm.generations()[0][:2]] == ["0x8", "0x6"] and sc.notes == {}
    waits = [e.function for e in sc.events if e.waiting]
    assert waits == ["synchronize_srcu_expedited", "rcuwait_wait_event"]
    assert sc.to_recipe() == TODAY


@pytest.mark.parametrize("form", OLD_FORMS)
def test_every_old_form_replays_to_the_same_result(form):
    ref = replay_recipe(TODAY)
    old = replay_recipe(OLD_FORMS[form])
    assert _outcome(old) == _outcome(ref)
    assert old.to_recipe() == TODAY         # saved again, it is in today's spelling (writer x3 = step 3)


def test_a_fragment_without_header_runs_on_the_kernel_it_is_given():
    fragment = "\n".join(TODAY.splitlines()[5:])
    assert replay_recipe(fragment).kernel == kvmviz.engine.kernels.DEFAULT_KERNEL
    assert _outcome(replay_recipe(fragment, kernel="5.17")) == _outcome(replay_recipe(TODAY))


def test_old_spellings_parse_to_the_canonical_action():
    for old, new in (("vcpu0 lock", "vcpu 0 lock"), ("vcpu12 access 0x100 write", "vcpu 12 access 0x100 write"),
                     ("mmu start 0x1000 0x2000", "mn start 0x1000 0x2000"), ("writer", "step"),
                     ("writer run", "run"), (("vcpu1", "access", 0x101), "vcpu 1 access 0x101")):
        assert parse_action(old) == parse_action(new), old
    assert set(OLD_SPELLINGS.values()) <= {"vcpu N ACTION", "mn start|end HVA END", "step", "run"}
    assert list(VERBS) == ["call", "begin", "step", "run", "finish", "vcpu", "mn"]


@pytest.mark.parametrize("line, message", [
    ("vcpu\u0661 lock", "unknown action 'vcpu\u0661'"),              # an Arabic-Indic digit is no vCPU number
    ("vcpu 1024 lock", "vcpu: 1024 is outside 0..1023"),
    ("mn start 0x2000 0x2000", "END must be above HVA (got 0x2000 0x2000)"),
    ("mn start 0 0x10000000000000001", "hva end: 18446744073709551617 is outside 0..18446744073709551616"),
    ("step 0x100000", "step count: 1048576 is outside 0..1048575"),
    ("call slot=0x100000000 size=0", "slot: 4294967296 is outside 0..4294967295"),
    ("call slot=1 size=0 fail-prepare=-12", "fail-prepare: '-12' is not a number"),
])
def test_bounds_are_refused_with_the_field_named(line, message):
    with pytest.raises(RecipeError) as e:
        parse_recipe(line)
    assert str(e.value).startswith(f"recipe line 1: {line!r}: {message}")


def test_a_bad_line_runs_nothing_and_a_bad_action_names_itself():
    sc = Scenario()
    with pytest.raises(RecipeError, match="script line 2"):
        sc.play(["call slot=1 size=0x1000", "vcpu 0 fly"])
    assert sc.actions == [] and len(sc.vm.history) == 0
    with pytest.raises(RecipeError, match=r"script action 1 \(finish\): no call is running: begin one first"):
        sc.play("finish")
    with pytest.raises(RecipeError, match=r"script action 3 \(vcpu 0 unlock\): vcpu0 is not inside"):
        sc.play("vcpu 0 lock; vcpu 0 unlock; vcpu 0 unlock")


def test_a_begin_that_ran_to_its_end_is_saved_as_a_call():
    sc = Scenario(kernel="6.12")
    sc.begin(1, 0, 0, 0x1000, HVA)
    sc.run()
    sc.begin(2, 0, 0x1000, 0x1000, HVA, fail_prepare=True)
    sc.step(2)
    sc.finish()
    assert sc.to_recipe().splitlines()[5:] == [
        f"call slot=0x1 flags=0x0 gpa=0x0 size=0x1000 hva={HVA:#x}",
        f"begin slot=0x2 flags=0x0 gpa=0x1000 size=0x1000 hva={HVA:#x} fail-prepare=ENOMEM", "step 2", "finish"]
    assert _outcome(replay_recipe(sc.to_recipe())) == _outcome(sc)


def test_a_schedule_is_a_scenario_and_saves_as_a_recipe():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0x100000, 0x4000, HVA)
    writes = [(2, 0, 0x200000, 0x2000, HVA + 0x100000), (1, 0, 0x100000, 0, 0, True), (1, 0, 0x100000, 0, 0)]
    sched = Schedule(vm, writes=writes, seed=5, vcpus=2)
    tl = sched.run()
    assert tl.finished and [u.result for u in tl.updates] == [0, -errno.ENOMEM, 0]
    text = "call slot=1 gpa=0x100000 size=0x4000 hva=0x7f0000000000\n" + "\n".join(
        sched.scenario.to_recipe().splitlines()[5:])
    again = replay_recipe(text, kernel=vm.kernel)
    assert again.results == [0, 0, -errno.ENOMEM, 0]
    assert export.text(again.vm) == export.text(vm) and again.vm.generations() == vm.generations()
    readers = [(e.actor, e.function, str(e.result)) for e in vm.history.events if e.stage == "reader"
               and e.function != "kvm_vm_ioctl_create_vcpu"]
    assert readers == [(e.actor, e.function, str(e.result)) for e in again.events if e.stage == "reader"
                       and e.function != "kvm_vm_ioctl_create_vcpu"]


# -- the engine helpers: run_until, dry_run, one parser, one formatter -----------------------------
def test_run_until_takes_a_predicate_a_function_n_th_step_or_a_count_and_stops_at_a_wait():
    vm = kvmviz.VM()
    vm.set_user_memory_region(1, 0, 0x100000, 0x1000, HVA)
    upd = vm.begin_set_user_memory_region(1, 0, 0, 0, 0)
    assert [s.function for s in upd.run_until(2)] == ["__kvm_set_memory_region", "kvm_set_memslot"]
    assert upd.run_until(0) == []
    assert upd.run_until(("kvm_swap_active_memslots", 2))[-1].function == "kvm_swap_active_memslots"
    assert upd.run_until(lambda s: s.stage == "prepare")[-1].stage == "prepare"
    vm.add_vcpu().srcu_read_lock()
    assert upd.run_until("kvm_commit_memory_region")[-1].waiting and upd.blocked      # a reader holds it
    with pytest.raises(TypeError, match="run_until takes"):
        upd.run_until(1.5)


def _state(vm):
    h = vm.history
    return (export.text(vm), vm.generations(), vm.locks, vm.calls, vm.update, dict(vm.cost), len(h), h.cursor,
            list(h.events), list(h.entries), [(v.pinned, v.inside) for v in vm.vcpus], dict(vars(vm.protocol)))


@pytest.mark.parametrize("kernel", ["5.15", "5.17", "6.12"])
def test_dry_run_leaves_the_vm_and_its_history_exactly_as_they_were(kernel):
    vm = kvmviz.VM(kernel=kernel)
    vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    v = vm.add_vcpu()
    v.srcu_read_lock()
    start = len(vm.history)
    upd = vm.begin_set_user_memory_region(1, 0, 0x200000, 0x10000, HVA)      # a MOVE that waits for v
    upd.run_until()
    with pytest.raises(kvmviz.engine.history.StateError, match="still running"):
        vm.dry_run(2, 0, 0x400000, 0x1000, HVA)               # as begin: the MOVE holds slots_lock
    for cursor in (start, start - 2):                         # before the MOVE (v inside), before v came
        vm.history.goto(cursor)
        before = _state(vm)
        steps = vm.dry_run(2, 0, 0x400000, 0x1000, HVA + 0x100000)
        assert steps[0].change == "CREATE" and _state(vm) == before
        assert steps[-1].waiting == (cursor == start) and (steps[-1].result == 0) == (cursor != start)
        assert vm.dry_run(5, 0, 0x1001, 0x1000, HVA, until=1)[0].error.errno == errno.EINVAL
        assert _state(vm) == before
    vm.history.goto(start + 2)                                # inside the MOVE: refused as begin would be
    with pytest.raises(kvmviz.engine.history.StateError, match="stepped back into the middle"):
        vm.dry_run(2, 0, 0x400000, 0x1000, HVA)
    vm.history.goto(len(vm.history))
    v.srcu_read_unlock()
    upd.run()                                                 # the MOVE goes on as if nothing had happened
    ref = kvmviz.VM(kernel=kernel)
    ref.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    ref.add_vcpu()
    ref.set_user_memory_region(1, 0, 0x200000, 0x10000, HVA)
    assert export.text(vm) == export.text(ref) and kvmviz.check_invariants(vm) == []


def test_dry_run_works_without_history_and_refuses_what_begin_refuses():
    vm = kvmviz.VM(history=False)
    vm.set_user_memory_region(1, 0, 0x100000, 0x10000, HVA)
    before = export.text(vm)
    assert vm.dry_run(1, 0, 0, 0, 0)[-1].result == 0 and export.text(vm) == before
    assert (vm.history.events, vm.history.entries, vm.history.enabled) == ([], [], False)
    with pytest.raises(ValueError, match="guest_phys_addr"):
        vm.dry_run(1, 0, -1, 0x1000, HVA)


def test_one_number_parser_and_one_formatter():
    assert parse_number("-0x10", None, signed=True) == -16
    with pytest.raises(ValueError, match=r"^-1 is negative$"):
        kvmviz.engine.numbers.check_number(parse_number("-1", None, signed=True), None)
    assert (parse_errno("ENOMEM"), parse_errno("eio"), parse_errno("0")) == (errno.ENOMEM, errno.EIO, 0)
    for bad in ("EWHAT", "OK", "4096", "1_2"):
        with pytest.raises(ValueError):
            parse_errno(bad)
    assert [result_text(r) for r in (0, -errno.EEXIST, "WARN", None)] == ["0", "-EEXIST", "WARN", ""]
    assert result_text(-errno.EEXIST, number=True) == "-17 (EEXIST)"
    assert kvmviz.teach.answers.parse_int("-1") == -1
    with pytest.raises(kvmviz.teach.answers.AnswerError, match="is not a number"):
        kvmviz.teach.answers.parse_int("\u0663")
