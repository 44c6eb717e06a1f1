"""Bad input to the command line, recipes and trace files: one clear line, exit 2, never a traceback."""

import io
import sys

import pytest

from kvmviz import trace
from kvmviz.cli import main
from kvmviz.trace.qemu import parse_qemu


def _run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv, io.StringIO())
    return code, capsys.readouterr().err


@pytest.mark.parametrize("recipe, message", [
    ("call slot=1 size=0x1000 fail-prepare=EFOO",
     "fail-prepare: 'EFOO' is not an errno (a name such as ENOMEM or EINVAL, or its number)"),
    ("call slot=1 size=0x1000 fail-prepare=4000", "fail-prepare: 4000 is no errno Linux names"),
    ("vcpu -1 lock", "vcpu: '-1' is not a number"),
    ("vcpu 100000 lock", "vcpu: 100000 is outside 0..1023"),
    ("mn start", "mn takes start|end, then the hva range"),
    ("mmu start 0x2000 0x1000", "END must be above HVA (got 0x2000 0x1000)"),
    ("vcpu0 access", "vcpu access takes gfn [write], got ''"),
    ("writer now", "use 'writer' or 'writer run' (today spelled step and run)"),
    ("run now", "run takes nothing, got 'now'"),
    ("variant", "takes one variant name, got 0 word(s)"),
    ("version", "takes one version, got 0 word(s)"),
    ("call slot=1 bogus", "'bogus' is not key=value"),
    ("vcpu 0 lock extra", "vcpu lock takes nothing more, got 'extra'"),
    ("vcpu 0 access zz", "gfn: 'zz' is not a number"),
    ("vcpu 0 access 5 read", "optionally 'write', not 'read'"),
    ("vcpu 0 smm maybe", "vcpu smm takes on or off, not 'maybe'"),
    ("call slot=\u0663 size=0x1000", "slot: '\u0663' is not a number"),
    ("call slot=1 size=1e6", "size: '1e6' is not a number"),
    ("step 1 2", "step takes at most one count"),
    ("finish now", "finish takes nothing"),
])
def test_bad_recipe_lines_name_the_bad_word(recipe, message, capsys, monkeypatch):
    code, err = _run(["recipe", "run", "-"], capsys, recipe, monkeypatch)
    assert code == 2 and message in err and "recipe line 1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_binary_recipe_names_the_file(tmp_path, capsys):
    path = tmp_path / "x.recipe"
    path.write_bytes(b"call slot=1\x00\x96\xff")
    code, err = _run(["recipe", "run", str(path)], capsys)
    assert code == 2 and f"{path} is not a text recipe (a NUL byte at offset 11)" in err


def test_a_huge_or_endless_trace_is_refused_quickly(capsys):
    code, err = _run(["replay", "/dev/zero"], capsys)
    assert code == 2 and "/dev/zero is larger than 64 MiB" in err


def test_a_file_without_records_is_refused(tmp_path, capsys):
    path = tmp_path / "junk.log"
    path.write_text("hello\nworld\n")
    code, err = _run(["replay", str(path)], capsys)
    assert code == 2 and "holds no kvm_set_user_memory records (2 line(s) not understood)" in err


def test_unparsed_lines_are_capped_and_cut():
    text = "".join(f"junk {i} " + "x" * 500 + "\n" for i in range(300))
    text += "kvm_set_user_memory Slot#1 flags=0x0 gpa=0x0 size=0x1000 ua=0x7f0000000000 ret=0\n"
    summary = trace.replay(text).summary()
    listed = [line for line in summary.splitlines() if "unparsed (" in line]
    assert len(listed) == 20 and max(map(len, listed)) < 220
    assert "... and 280 more unparsed lines" in summary


@pytest.mark.parametrize("record", [
    "kvm_set_user_memory Slot#\u0663 flags=0x0 gpa=0x0 size=0x1000 ua=0x0 ret=0",          # Arabic-Indic 3
    "kvm_set_user_memory Slot#\uff11 flags=0x0 gpa=0x0 size=0x1000 ua=0x0 ret=0",          # full-width 1
    "kvm_set_user_memory\u00a0Slot#1 flags=0x0 gpa=0x0 size=0x1000 ua=0x0 ret=0",          # NBSP
])
def test_trace_records_with_non_ascii_digits_or_spaces_are_not_records(record):
    parsed = parse_qemu(record)
    assert parsed.calls == [] and len(parsed.unparsed) == 1


def test_a_broken_variant_in_setup_is_the_models_failure_not_the_recipes(capsys):
    code, err = _run(["explain", "--variant", "no-catch-up", "--setup",
                      "call slot=1 size=0x1000 hva=0x7f0000000000; call slot=1 size=0",
                      "--slot", "2", "--size", "0x1000", "--hva", "0x7f0000000000"], capsys)
    assert code == 1 and "recipe" not in err and "EEXIST" in err
