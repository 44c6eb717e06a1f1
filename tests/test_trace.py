"""QEMU trace import and replay: formats, prefixes, wrapping, mismatches, shipped traces, CLI, plot."""

import errno
import subprocess
import sys

import pytest

from kvmviz import VM, check_invariants, trace
from kvmviz.trace import format_qemu, parse_qemu, replay
from kvmviz.trace import generate
from kvmviz.trace.cli import main as cli_main
from kvmviz.trace.qemu import ERAS
from kvmviz.trace.replay import explain
from conftest import HVA

OLD = "kvm_set_user_memory Slot#65539 flags=0x1 gpa=0xfd000000 size=0x1000000 ua=0x7fadf6800000 ret=0"
NEW = ("kvm_set_user_memory AddrSpace#1 Slot#3 flags=0x1 gpa=0xfd000000 size=0x1000000 "
       "ua=0x7fadf6800000 ret=0")
GMEM = ("kvm_set_user_memory AddrSpace#1 Slot#3 flags=0x1 gpa=0xfd000000 size=0x1000000 "
        "ua=0x7fadf6800000 guest_memfd=-1 guest_memfd_offset=0x0 ret=0")


def rec(slot, flags, gpa, size, hva=HVA, ret=0):
    return f"kvm_set_user_memory Slot#{slot} flags={flags:#x} gpa={gpa:#x} size={size:#x} ua={hva:#x} ret={ret}"


# -- parsing ------------------------------------------------------------------------------
def test_the_three_formats_decode_to_the_same_ioctl():
    calls = [parse_qemu(t).calls[0] for t in (OLD, NEW, GMEM)]
    assert [c.era for c in calls] == ["slot", "addrspace", "guest_memfd"]
    assert {c.args for c in calls} == {(0x10003, 1, 0xfd000000, 0x1000000, 0x7fadf6800000)}
    assert {(c.as_id, c.id, c.ret) for c in calls} == {(1, 3, 0)}
    assert calls[2].guest_memfd == -1 and not calls[2].uses_guest_memfd
    assert calls[0].guest_memfd is None and calls[1].guest_memfd_offset is None


def test_old_format_slot_carries_the_address_space_in_bits_16_to_31():
    c = parse_qemu(rec(65536 + 65535, 0, 0, 0)).calls[0]
    assert (c.as_id, c.id, c.slot) == (1, 0xffff, 0x1ffff)
    # %d of a u32 slot >= 2^31 prints negative; it is the same 32-bit field
    c = parse_qemu(rec(-1, 0, 0, 0)).calls[0]
    assert (c.as_id, c.id) == (0xffff, 0xffff)


@pytest.mark.parametrize("era", ERAS)
def test_format_qemu_round_trips_every_era(era):
    c = parse_qemu(GMEM).calls[0]._replace(ret=-17, flags=3, guest_memfd=7, guest_memfd_offset=0x2000)
    back = parse_qemu(format_qemu(c, era, "99@12.000345:")).calls[0]
    assert back.args == c.args and back.ret == -17 and back.era == era
    assert (back.pid, back.time) == (99, "12.000345")
    assert back.guest_memfd == (7 if era == "guest_memfd" else None)


def test_log_backend_prefix_is_optional_and_parsed():
    t = parse_qemu(f"41874@1587736345.192636:{OLD}\n{OLD}")
    assert [(c.line, c.pid, c.time) for c in t.calls] == [(1, 41874, "1587736345.192636"), (2, None, None)]


def test_other_events_and_prose_are_kept_with_line_numbers():
    text = "\n".join(["pci_cfg_write i440FX 00:0 @0x58 <- 0x33333000", OLD, "",
                      "# a comment", "After a careful look, I noticed it's only the VGA device",
                      "108264@1578573121.249335:kvm_vcpu_ioctl cpu_index 0, type 0x2000ae80, arg (nil)",
                      "kvm_set_phys_mem: error registering slot: Invalid argument", NEW])
    t = parse_qemu(text)
    assert [c.line for c in t.calls] == [2, 8]
    assert t.other == [(1, "pci_cfg_write"), (6, "kvm_vcpu_ioctl")]
    assert [(u.line, u.reason) for u in t.unparsed] == [(5, "not a trace record"), (7, "not a trace record")]
    assert t.unparsed[1].text == "kvm_set_phys_mem: error registering slot: Invalid argument"


def test_mail_wrapped_records_are_joined_with_quote_markers_stripped():
    text = ("> kvm_set_user_memory AddrSpace#0 Slot#1 flags=0x4 gpa=0x100000000\n"
            "> size=0x80000000 ua=0x7f57b3fff000 guest_memfd=15\n"
            "> guest_memfd_offset=0x80000000 ret=0\n"
            "   108281@1578573121.248710:kvm_set_user_memory Slot#0 flags=0x1 gpa=0x0\n"
            "size=0x10000000 ua=0x7fff8fe00000 ret=0\n")
    t = parse_qemu(text)
    assert t.unparsed == [] and t.other == []
    a, b = t.calls
    assert (a.line, a.lines, a.guest_memfd, a.guest_memfd_offset, a.uses_guest_memfd) == (1, 3, 15, 0x80000000, True)
    assert (b.line, b.lines, b.pid, b.memory_size) == (4, 2, 108281, 0x10000000)


def test_ambiguous_wraps_are_left_unparsed_not_guessed():
    # the continuation does not start with a field of the record: joining would be a guess
    t = parse_qemu("kvm_set_user_memory Slot#0 flags=0x1 gpa=0x0\nthe size was 0x1000 ua=0x0 ret=0\n" + OLD)
    assert [(u.line, u.reason) for u in t.unparsed] == [
        (1, "kvm_set_user_memory record in none of QEMU's three formats"), (2, "not a trace record")]
    assert [c.line for c in t.calls] == [3]
    # split inside a number: the join with a space is no record, so nothing is joined
    t = parse_qemu("kvm_set_user_memory Slot#0 flags=0x1 gpa=0x0 size=0x10\n000 ua=0x0 ret=0")
    assert t.calls == [] and [u.line for u in t.unparsed] == [1, 2]


def test_records_in_no_format_or_with_impossible_values_are_unparsed():
    variant = ("kvm_set_user_memory AddrSpace#0 Slot#0 flags=0x4 gpa=0x0 size=0x80000000 ua=0x7f24afc00000 "
               "ret=0 restricted_fd=19 restricted_offset=0x0")      # an out-of-tree QEMU branch
    t = parse_qemu("\n".join([variant, rec(1, 0x1ffffffff, 0, 0), rec(1, 0, 0, 0, ret=5),
                              NEW.replace("AddrSpace#1", "AddrSpace#65536")]))
    assert t.calls == []
    assert [u.reason for u in t.unparsed] == [
        "kvm_set_user_memory record in none of QEMU's three formats",
        "flags=0x1ffffffff does not fit the 32-bit field",
        "ret=5: an ioctl returns 0 or -errno",
        "AddrSpace#=65536 does not fit its 16-bit field"]


# -- replay ----------------------------------------------------------------------------------
def test_replay_counts_every_change_type_and_checks_generations():
    text = "\n".join([rec(1, 0, 0x100000, 0x200000), rec(1, 1, 0x100000, 0x200000),      # CREATE, FLAGS_ONLY
                      rec(1, 1, 0x100000, 0x200000), rec(1, 1, 0x400000, 0x200000),      # NONE, MOVE
                      rec(65537, 0, 0x100000, 0x1000), rec(1, 0, 0x400000, 0)])          # as1 CREATE, DELETE
    r = replay(text)
    assert dict(r.counts) == {"CREATE": 2, "DELETE": 1, "MOVE": 1, "FLAGS_ONLY": 1, "NONE": 1, "FAILED": 0,
                              "OUTSIDE": 0}
    assert r.mismatches == [] and r.peak_slots == 2
    # CREATE, FLAGS_ONLY: one swap each (+2); MOVE, DELETE: two swaps (+4); NONE: none
    assert (r.vm.generation(0), r.vm.generation(1)) == (2 + 2 + 4 + 4, 1 + 2)
    assert [rc.gens_after[0] for rc in r.calls] == [2, 4, 4, 8, 8, 12]
    assert r.layout() == {0: [], 1: [(1, 0x100, 1, 0)]}
    assert [rc.before for rc in r.calls[:4]] == [None, (0x100, 0x200, 0), (0x100, 0x200, 1), (0x100, 0x200, 1)]
    assert r.calls[3].after == (0x400, 0x200, 1)
    assert check_invariants(r.vm) == []


def test_a_log_that_starts_mid_run_gives_explained_mismatches():
    r = replay(trace.load("qemu-vga-dirty-log.log"))
    assert [(m.number, m.line, m.logged, m.modelled) for m in r.mismatches] == [
        (1, 9, 0, -errno.EINVAL), (2, 10, 0, -errno.EINVAL)]
    assert "never created" in r.mismatches[0].why and "mid-run" in r.mismatches[0].why
    assert r.calls[0].steps[-1].result == -errno.EINVAL and r.calls[0].gens_after == (0, 1)


def test_kernel_refusal_the_model_would_accept_is_not_applied():
    r = replay(rec(1, 0, 0x100000, 0x200000, ret=-errno.ENOMEM))
    (m,) = r.mismatches
    assert (m.logged, m.modelled) == (-errno.ENOMEM, 0) and "leaves the VM unchanged" in m.why
    assert r.calls[0].change == "CREATE" and r.calls[0].steps == []
    assert r.counts["FAILED"] == 1 and r.layout() == {0: [], 1: []} and r.vm.generation(0) == 0


def test_refusals_compare_errnos():
    text = "\n".join([rec(1, 0, 0x100000, 0x200000), rec(2, 0, 0x100000, 0x1000, ret=-errno.EEXIST),
                      rec(3, 0, 0x100000, 0x1000, ret=-errno.EINVAL), rec(4, 0, 0x100000, 0x1000)])
    r = replay(text)
    assert r.calls[1].mismatch is None and r.calls[1].modelled == -errno.EEXIST
    assert [(m.line, m.logged, m.modelled) for m in r.mismatches] == [
        (3, -errno.EINVAL, -errno.EEXIST), (4, 0, -errno.EEXIST)]
    assert "different errnos" in r.mismatches[0].why and "misses that delete" in r.mismatches[1].why
    assert r.counts["FAILED"] == 3 and r.vm.generation(0) == 2


def test_readonly_toggle_replays_qemus_untraced_delete():
    # QEMU deletes the slot first (memory_size 0, not traced) when READONLY changes
    r = replay("\n".join([rec(1, 2, 0xc0000, 0x20000), rec(1, 0, 0xc0000, 0x20000)]))
    second = r.calls[1]
    assert second.implied == "DELETE" and second.change == "CREATE" and second.mismatch is None
    assert [s.function for s in second.steps].count("kvm_delete_memslot") == 1
    assert dict(r.counts)["CREATE"] == 2 and r.counts["DELETE"] == 1
    assert second.gens_after[0] == 2 + 4 + 2 and r.layout()[0] == [(1, 0xc0, 0x20, 0)]


GMEM_TEXT = ("kvm_set_user_memory AddrSpace#0 Slot#0 flags=0x4 gpa=0x0 size=0x80000000 ua=0x7fe1ebfff000 ret=0\n"
             "kvm_set_user_memory AddrSpace#0 Slot#0 flags=0x0 gpa=0x0 size=0x0 ua=0x7fe1ebfff000 ret=0\n"
             + rec(0, 0, 0, 0x1000))


def test_guest_memfd_slots_are_outside_the_5_17_model():
    r = replay(GMEM_TEXT, VM(kernel="5.17", history=False))
    assert [bool(rc.outside) for rc in r.calls] == [True, True, False]   # the delete is tracked by slot
    assert "outside the model" in r.calls[0].outside and r.calls[0].steps == []
    assert r.counts["OUTSIDE"] == 2 and r.counts["CREATE"] == 1 and r.mismatches == []
    assert "Not replayed" in explain(r, 1)


def test_guest_memfd_slots_replay_on_6_12_with_private_memory():
    r = replay(GMEM_TEXT)
    assert r.vm.kernel == "6.12" and r.vm.private_mem and r.mismatches == []
    assert {k: v for k, v in r.counts.items() if v} == {"CREATE": 2, "DELETE": 1}
    bound = replay(GMEM_TEXT.split("\n")[0])
    assert bound.vm.memslots()[0].gmem == (3, 0) and bound.vm.gmem_files[3].bindings == ((0, 0x80000, "#1"),)
    refused = replay(GMEM_TEXT, VM(kernel="6.12", history=False))        # a default VM: no private memory
    assert refused.mismatches and "private memory" in refused.mismatches[0].why


def test_no_bad_line_leaves_a_half_applied_vm():
    vm = VM()
    _ = vm.set_user_memory_region(1, 0, 0, 0x1000, HVA)
    before = (vm.generations(), len(vm.history))
    r = replay("garbage\n" + rec(1, 0, 0x1001, 0x1000) + "\n" + rec(1, 0, 0, 0x1000, hva=HVA + 0x1000), vm)
    assert len(r.unparsed) == 1 and [m.modelled for m in r.mismatches] == [-errno.EINVAL] * 2
    assert vm.generations() == before[0] and vm.update is None and check_invariants(vm) == []
    assert len(vm.history) == before[1] + 2      # two refused calls: one validate step each
    vcpu = vm.add_vcpu()
    vcpu.srcu_read_lock()
    with pytest.raises(ValueError, match="at rest"):
        replay(rec(2, 0, 0x100000, 0x1000), vm)
    assert vm.generations() == before[0] and vm.id_to_memslot(2) is None


def test_vm_before_lets_a_notebook_step_through_a_call_and_back():
    r = replay(trace.load("qemu-boot-smm.log"), keep_steps=False)
    assert r.calls[3].steps is None
    vm = r.vm_before(4)                      # call 4 deletes slot 0
    assert vm.history.enabled and len(vm.history) == 0
    assert vm.generation(0) == r.calls[2].gens_after[0] == 6
    upd = vm.begin_set_user_memory_region(*r.call(4).call.args)
    steps = list(upd)
    assert upd.change == "DELETE" and upd.result == 0 and vm.generation(0) == r.call(4).gens_after[0]
    vm.history.goto(0)
    assert vm.generation(0) == 6 and vm.id_to_memslot(0) is not None
    with pytest.raises(IndexError):
        r.call(113)
    assert len(steps) == len(replay(trace.load("qemu-boot-smm.log")).call(4).steps)


def test_explain_describes_the_call_in_plain_text():
    r = replay(trace.load("qemu-boot-smm.log"), keep_steps=False)
    text = explain(r, 11)
    assert text.startswith("Call 11, line 18: kvm_set_user_memory Slot#65536 flags=0x0 gpa=0x0 size=0xc0000")
    assert "address space 1, slot id 0" in text and "gfn 0x0..0xbf" in text
    assert "[activate] kvm_create_memslot" not in text and "kvm_create_memslot" in text
    assert "Result: logged 0, model 0 (match)." in text and "as1 0x1 -> 0x3" in text


# -- shipped traces ------------------------------------------------------------------------
SHIPPED = {
    "qemu-boot-smm.log": (112, {"CREATE": 66, "DELETE": 46}, 20, (0xa4, 0x99)),
    "qemu-vga-dirty-log.log": (29, {"CREATE": 15, "DELETE": 12, "FAILED": 2}, 3, (0x28, 0x27)),
    # replayed as 6.12 with private memory: one address space, guest_memfd bound
    "qemu-guest-memfd-smm-off.log": (8, {"CREATE": 7, "DELETE": 1}, 6, (0x9,)),
    "qemu-guest-memfd-smm-on.log": (4, {"CREATE": 3, "FAILED": 1}, 3, (0x3,)),
    "large-vm-generated.log": (2000, {"CREATE": 564, "DELETE": 60, "FLAGS_ONLY": 1376}, 516, (0x88c, 0x78d)),
    # captured here with `kvmviz capture` (QEMU 7.2, Linux 6.18: one address space, so as1 stays empty)
    "captured-boot.log": (35, {"CREATE": 22, "DELETE": 13}, 9, (0x60, 0x1)),
    "captured-hotplug.log": (13, {"CREATE": 10, "DELETE": 3}, 8, (0x20, 0x1)),
    "captured-migrate.log": (22, {"CREATE": 8, "DELETE": 2, "FLAGS_ONLY": 12}, 6, (0x30, 0x1)),
    "captured-readonly.log": (12, {"CREATE": 9, "DELETE": 3}, 7, (0x1e, 0x1)),
    "captured-all.log": (58, {"CREATE": 25, "DELETE": 15, "FLAGS_ONLY": 18}, 11, (0x92, 0x1)),
}


@pytest.fixture(scope="module")
def reports():
    return {name: replay(trace.load(name)) for name in trace.shipped()}


def test_every_shipped_trace_is_tested_and_cites_its_source():
    assert trace.shipped() == sorted(SHIPPED)
    for name in SHIPPED:
        head = "".join(line for line in trace.load(name).splitlines(True) if line.startswith("#"))
        assert ("Source:" in head or "Generated by kvmviz" in head or "captured with kvmviz capture" in head), name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_trace_counts_and_generations(reports, name):
    ncalls, counts, peak, gens = SHIPPED[name]
    r = reports[name]
    assert len(r.calls) == ncalls
    assert {k: v for k, v in r.counts.items() if v} == counts
    assert r.peak_slots == peak and tuple(r.vm.generation(a) for a in range(r.vm.address_spaces)) == gens[:2]
    assert check_invariants(r.vm) == []


def test_the_array_model_replays_the_boot_trace_to_the_same_state(reports):
    r = replay(trace.load("qemu-boot-smm.log"), VM(implementation="array", history=False), keep_steps=False)
    tree = reports["qemu-boot-smm.log"]
    assert r.layout() == tree.layout() and [r.vm.generation(a) for a in (0, 1)] == [0xa4, 0x99]
    assert dict(r.counts) == dict(tree.counts) and check_invariants(r.vm) == []


def test_replay_refuses_what_is_not_a_trace():
    with pytest.raises(TypeError, match="MemoryCall"):
        replay(["kvm_set_user_memory Slot#0 flags=0x0 gpa=0x0 size=0x0 ua=0x0 ret=0"])


def test_shipped_boot_trace_final_layout(reports):
    r = reports["qemu-boot-smm.log"]
    assert r.mismatches == [] and r.unparsed == []
    low = [(3, 0xc0, 0xb, 0), (5, 0xcb, 3, 0), (6, 0xce, 0x1a, 0), (7, 0xe8, 8, 0), (8, 0xf0, 0x10, 0),
           (9, 0x100, 0xbff00, 0), (4, 0xfd000, 0x1000, 1), (2, 0xfffc0, 0x40, 2), (1, 0x100000, 0x940000, 0)]
    assert r.layout()[0] == [(0, 0, 0xa0, 0)] + low
    # SMM (as 1) sees RAM up to 0xbffff where as 0 has the VGA window; its slot ids differ
    assert [s[1:] for s in r.layout()[1]] == [(0, 0xc0, 0)] + [s[1:] for s in low]
    assert [s[0] for s in r.layout()[1]] == [0, 1, 3, 6, 7, 8, 9, 2, 4, 5]


def test_shipped_guest_memfd_traces(reports):
    off, on = reports["qemu-guest-memfd-smm-off.log"], reports["qemu-guest-memfd-smm-on.log"]
    assert off.layout()[0] == [(0, 0, 0xc0, 4), (3, 0xc0, 0x20, 2), (4, 0xe0, 0x20, 2), (5, 0x100, 0x7ff00, 4),
                               (2, 0xffc00, 0x400, 2), (1, 0x100000, 0x80000, 4)]
    assert [rc.call.lines for rc in off.calls] == [2, 3, 2, 2, 2, 2, 2, 3]
    # SMM on: QEMU's slot 3 binds pages 0xa0.. of guest_memfd 15, already bound to slot 0: -EINVAL
    assert [rc.call.ret for rc in on.calls][-1] == -22 and on.calls[-1].modelled == -22 and on.mismatches == []
    assert on.vm.gmem_files[3].bindings == ((0, 0x80000, "#1"), (0x80000, 0x80000, "#2"))
    assert [u.line for u in on.unparsed] == [21, 22, 23, 24]


def test_shipped_vga_trace_final_layout(reports):
    assert reports["qemu-vga-dirty-log.log"].layout() == {
        0: [(9, 0xa0, 0x10, 1), (3, 0xfd000, 0x1000, 1)], 1: [(3, 0xfd000, 0x1000, 1)]}


def test_generated_trace_is_what_the_generator_prints(reports):
    assert trace.load("large-vm-generated.log") == generate.shipped_text()
    r = reports["large-vm-generated.log"]
    assert r.mismatches == [] and {a: len(s) for a, s in r.layout().items()} == {0: 252, 1: 252}
    assert all(c.era == "guest_memfd" and c.pid == 4242 for c in r.trace.calls)


# -- CLI -----------------------------------------------------------------------------------
def test_cli_prints_summary_and_mismatches(capsys, tmp_path):
    path = tmp_path / "vga.log"
    path.write_text(trace.load("qemu-vga-dirty-log.log"))
    assert cli_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "29 kvm_set_user_memory calls" in out and "mismatches: 2" in out
    assert "line 9 (call 1): logged 0, model -22 (EINVAL)" in out


def test_cli_step_explains_one_call(capsys):
    assert cli_main(["qemu-vga-dirty-log.log", "--step", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Call 3, line 11:") and "kvm_create_memslot" in out and "(match)" in out


@pytest.mark.parametrize("argv, message", [(["/nonexistent.log"], "no such file"),
                                           (["qemu-vga-dirty-log.log", "--step", "30"], "outside 1..29")])
def test_cli_bad_input_is_a_message_not_a_traceback(capsys, argv, message):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_kvmviz_replay_command():
    done = subprocess.run([sys.executable, "-m", "kvmviz", "replay", "qemu-boot-smm.log"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "112 kvm_set_user_memory calls" in done.stdout and "mismatches: 0" in done.stdout


def test_kvmviz_replay_via_the_shared_cli(capsys):
    from kvmviz.cli import main
    assert main(["replay", "qemu-guest-memfd-smm-on.log"]) == 0
    out = capsys.readouterr().out
    assert "FAILED 1" in out and "line 24 unparsed (not a trace record)" in out


# -- plot ------------------------------------------------------------------------------------
def test_plot_replay_marks_changes(reports):
    from kvmviz.viz.replay import plot_replay
    fig = plot_replay(reports["qemu-vga-dirty-log.log"], name="VGA")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "call number (logged order)" and "gfn" in ax.get_ylabel()
    assert ax.get_title().startswith("VGA, address space 0: 15 calls, 8 CREATE, 6 DELETE")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "CREATE" in labels and "DELETE" in labels and labels[-2].startswith("mismatch")
    # one scatter per kind present: 8 creates, 6 deletes, 1 mismatch (the as0 delete before any create)
    marks = sorted(len(c.get_offsets()) for c in ax.collections if type(c).__name__ == "PathCollection")
    assert marks == [1, 6, 8]
