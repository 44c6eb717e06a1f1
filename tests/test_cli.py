"""The ``kvmviz`` command, in-process and as a subprocess."""

import io
import os
import subprocess
import sys

import pytest

from kvmviz import cli, export
from kvmviz.engine.kernels import DEFAULT_KERNEL

CALL = ["--slot", "1", "--gpa", "0x100000", "--size", "0x10000", "--hva", "0x7f0000000000"]
SETUP = "call slot=1 gpa=0x100000 size=0x10000 hva=0x7f0000000000"


def run(argv, capsys):
    out = io.StringIO()
    code = cli.main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


def test_explain_create(capsys):
    code, out, err = run(["explain"] + CALL, capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert " ".join(lines[:2]).startswith(f"kvmviz 0.1.0, Linux {DEFAULT_KERNEL} model, variant merged: "
                                          "KVM_SET_USER_MEMORY_REGION slot=0x1")
    assert "change: CREATE" in lines
    assert any(line.startswith(" 12 activate   kvm_swap_active_memslots") and "*0x2" in line for line in lines)
    assert "as0/set1 (ACTIVE), generation 0x2, last_used_slot -" in lines
    assert lines[-1] == "result: 0 (success)"
    assert max(map(len, lines)) <= 78


def test_explain_with_setup_address_space_and_variant(capsys):
    code, out, _ = run(["explain", "--slot", "1", "--as", "1", "--size", "0x1000", "--hva", "0x7f0000000000",
                        "--variant", "seed", "--setup", SETUP], capsys)
    assert code == 0
    assert "slot=0x10001" in out and "variant seed" in out
    assert "as1 set0" in out.splitlines()[5]          # generations of the address space being changed


def test_explain_kernel_error_exit_1_with_errno(capsys):
    code, out, err = run(["explain", "--slot", "1", "--gpa", "0x1001", "--size", "0x1000",
                          "--hva", "0x7f0000000000"], capsys)
    assert code == 1
    assert "result: -EINVAL (errno 22)" in out
    assert err.strip() == ("kvmviz: error: EINVAL (errno 22): guest_phys_addr 0x1001 is not page-aligned "
                           "(slot 1, as 0)")


def test_explain_fail_prepare_shows_the_revert(capsys):
    code, out, err = run(["explain", "--slot", "1", "--size", "0", "--fail-prepare", "EIO", "--setup", SETUP],
                         capsys)
    assert code == 1 and "EIO (errno 5)" in err
    assert "change: DELETE" in out and "(prepare fails: EIO)" in out.replace("\n", " ")
    assert out.count("rcu_assign_pointer") == 2


def test_explain_broken_variant_prints_the_violation(capsys):
    code, out, _ = run(["explain", "--variant", "no-catch-up"] + CALL, capsys)
    assert code == 0
    assert "!! as0: at rest both sets must hold the same slot objects" in out


def test_explain_seed_as_posted_bug(capsys):
    code, out, err = run(["explain", "--variant", "seed-as-posted"] + CALL, capsys)
    assert code == 1
    assert "result: BUG() (no errno: the ioctl never returns)" in out
    assert "kernel BUG()" in err and "else if" in err
    assert "!! nr_memslot_pages is 0x0 but the slots hold 0x10 pages" in out


def test_explain_broken_model_state_is_reported_not_raised(capsys):
    for kernel in ("5.17", "6.12"):
        code, out, err = run(["explain", "--kernel", kernel, "--variant", "no-catch-up", "--slot", "1",
                              "--size", "0", "--setup", SETUP], capsys)
        assert code == 1 and "#1 is not in the id hash of as0/set0" in err and "Traceback" not in err


def test_explain_markdown_and_recipe(capsys):
    code, out, _ = run(["explain", "--markdown", "--recipe"] + CALL, capsys)
    assert code == 0 and "| # | stage | function |" in out
    recipe = out[out.index("kvmviz-recipe 1"):out.index("result:")].strip()
    assert recipe.splitlines()[-1] == "call slot=0x1 flags=0x0 gpa=0x100000 size=0x10000 hva=0x7f0000000000"
    assert export.replay_recipe(recipe).results == [0]


def test_diff_two_variants(capsys):
    code, out, _ = run(["diff", "--kernel", "5.17", "--variant", "merged", "--variant", "seed", "--slot", "1",
                        "--gpa", "0x300000", "--size", "0x10000", "--hva", "0x7f0000000000", "--setup", SETUP], capsys)
    assert code == 0
    assert "a = merged (27 steps), b = seed (28 steps)" in out
    assert "invariants under merged: every invariant holds at every step" in out
    assert "invariants under seed: every invariant holds at every step" in out
    assert max(map(len, out.splitlines())) <= 78


def test_diff_names_the_first_violation(capsys):
    code, out, _ = run(["diff", "--variant", "merged", "--variant", "gen-before-publish"] + CALL, capsys)
    assert code == 0
    assert "invariants under gen-before-publish: step 12 (kvm_swap_active_memslots): as0: active" in out.replace("\n", " ")


def test_recipe_run(tmp_path, capsys):
    path = tmp_path / "move.recipe"
    path.write_text("# a move under the seed\nkvmviz-recipe 1\nvariant seed\n" + SETUP +
                    "\ncall slot=1 gpa=0x300000 size=0x10000 hva=0x7f0000000000\n")
    code, out, _ = run(["recipe", "run", str(path)], capsys)
    assert code == 0
    assert "results: 0, 0" in out and "invariants: 0 violation(s)" in out
    assert "kvm_move_memslot" in out


@pytest.mark.parametrize("argv,message", [
    (["explain", "--gpa", "0"], "the following arguments are required: --slot"),
    (["explain", "--slot", "zz"], "argument --slot: 'zz' is not a number"),
    (["explain", "--slot", "-1"], "argument --slot: -1 is negative"),
    (["explain", "--slot", "1", "--variant", "nope"], "argument --variant: unknown variant 'nope'"),
    (["explain", "--slot", "1", "--fail-prepare", "EWHAT"], "'EWHAT' is not an errno"),
    (["explain", "--slot", "0x10001", "--as", "1"], "already carries an address space"),
    (["explain", "--slot", "1", "--hva", str(1 << 64)], "does not fit the ioctl's __u64 field"),
    (["explain", "--slot", "1", "--setup", "/no/such/file"], "no such recipe file"),
    (["explain", "--slot", "1", "--setup", "call slot=1 gpa=x size=1"], "recipe line 1"),
    (["diff", "--variant", "merged", "--slot", "1"], "exactly two --variant"),
    (["diff", "--kernel", "5.17", "--kernel", "6.12", "--kernel", "5.15", "--slot", "1"],
     "exactly two --variant or exactly two --kernel options (got 0 --variant, 3 --kernel)"),
    (["explain", "--slot", "1", "--kernel", "4.19"], "argument --kernel: invalid choice: '4.19'"),
    (["explain", "--slot", "1", "--address-spaces", "3"], "argument --address-spaces: invalid choice: 3"),
    (["explain", "--slot", "1", "--kernel", "5.15", "--variant", "seed"],
     "kvmviz explain: variant 'seed' changes the tree protocol of 5.17 and later; kernel 5.15 is the array design"),
    (["explain", "--slot", "1", "--kernel", "5.15", "--setup", "variant no-catch-up"], "kernel 5.15 is the array"),
    (["diff", "--kernel", "5.15", "--kernel", "6.12", "--variant", "seed", "--slot", "1"],
     "kvmviz diff: variant 'seed' changes the tree protocol"),
    (["recipe", "run", "/no/such/file"], "no such recipe file"),
    (["explain", "--slot", "1", "--setup", "vcpu 0 access"], "vcpu access takes gfn [write], got ''"),
    (["explain", "--slot", "1", "--setup", "vcpu 0 lock; vcpu 0 lock"], "already inside"),
    (["explain", "--slot", "1", "--setup", "mn end 0 0x1000"], "no invalidation"),
    (["explain", "--slot", "1", "--setup", "begin slot=1 size=0x1000 hva=0x10000"], "leaves a call running"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_subcommands_are_registered_from_a_list():
    names = [f.__name__ for f in cli.SUBCOMMANDS]
    assert names[:3] == ["add_explain", "add_diff", "add_recipe"]
    parser = cli.build_parser()
    assert parser.parse_args(["recipe", "run", "x"]).func is cli.run_recipe


def _subprocess(*argv):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__))))
    return subprocess.run([sys.executable, "-m", "kvmviz", *argv], capture_output=True, text=True, env=env,
                          timeout=60)


def test_python_m_kvmviz_subprocess():
    ok = _subprocess("explain", *CALL)
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "result: 0 (success)"
    bad = _subprocess("explain", "--slot", "1", "--size", "0")
    assert bad.returncode == 1
    assert "EINVAL (errno 22): cannot delete slot 1: it does not exist" in bad.stderr
    usage = _subprocess("diff", "--slot", "1")
    assert usage.returncode == 2 and "--variant" in usage.stderr


def test_console_script_is_declared():
    import tomllib
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["kvmviz"] == "kvmviz.cli:main"


# -- kernel versions ------------------------------------------------------------------------------
BEYOND = ["--slot", "1", "--gpa", hex(1 << 52), "--size", "0x10000", "--hva", "0x7f0000000000", "--setup", SETUP]


def _flat(text):
    return " ".join(text.split())


def test_explain_names_the_kernel_and_runs_its_rules(capsys):
    code, out, err = run(["explain", "--kernel", "6.12"] + BEYOND, capsys)
    assert code == 1 and "EINVAL (errno 22)" in err and "kvm_mmu_max_gfn()" in out
    assert _flat(out).startswith("kvmviz 0.1.0, Linux 6.12 model, variant merged: KVM_SET_USER_MEMORY_REGION slot=0x1")
    assert "VM on the Linux 6.12 model, variant merged, 2 address space(s)" in out
    code, out, _ = run(["explain", "--kernel", "5.17"] + BEYOND, capsys)
    assert code == 0 and "Linux 5.17 model" in out.splitlines()[0] and "kvm_mmu_max_gfn" not in out


def test_explain_address_spaces(capsys):
    code, out, err = run(["explain", "--kernel", "6.12", "--address-spaces", "1", "--as", "1", "--slot", "1",
                          "--size", "0x1000", "--hva", "0x7f0000000000"], capsys)
    assert code == 1 and "address space 1 >= 1" in err
    assert _flat(out).startswith("kvmviz 0.1.0, Linux 6.12 model, variant merged, 1 address space(s):")
    code, out, _ = run(["explain", "--address-spaces", "1", "--recipe"] + CALL, capsys)
    assert code == 0 and "address-spaces 1" in out.splitlines()


def test_explain_kernel_comes_from_the_setup_recipe_unless_given(capsys):
    setup = "kernel 6.12; " + SETUP
    move = ["--slot", "1", "--gpa", "0x300000", "--size", "0x10000", "--hva", "0x7f0000000000"]
    _, out, _ = run(["explain", "--setup", setup] + move, capsys)
    assert "Linux 6.12 model" in out.splitlines()[0] and "change: MOVE" in out
    _, out, _ = run(["explain", "--setup", setup, "--kernel", "5.15"] + move, capsys)
    assert "Linux 5.15 model" in out.splitlines()[0] and "kvm_dup_memslots" in out


def test_diff_two_kernels(capsys):
    code, out, _ = run(["diff", "--kernel", "5.17", "--kernel", "6.12"] + BEYOND, capsys)
    assert code == 0
    lines = out.splitlines()
    assert max(map(len, lines)) <= 78
    assert _flat(out).startswith("kvmviz 0.1.0, Linux 5.17 vs 6.12 models, variant merged: KVM_SET_USER_MEMORY_REGION")
    assert any(line.startswith("a = Linux 5.17 (27 steps), b = Linux 6.12 (") for line in lines)
    assert any(line.endswith("! prepare    kvm_arch_prepare_memory_region") for line in lines)
    assert "results 0 / -EINVAL" in _flat(out)
    assert "invariants under Linux 6.12: every invariant holds at every step" in lines


def test_diff_two_kernels_under_one_variant_and_two_variants_on_one_kernel(capsys):
    code, out, _ = run(["diff", "--kernel", "5.17", "--kernel", "6.12", "--variant", "seed"] + BEYOND, capsys)
    assert code == 0 and "Linux 5.17 vs 6.12 models, variant seed:" in _flat(out)
    assert "results 0 / -EINVAL" in _flat(out)
    code, out, _ = run(["diff", "--kernel", "6.12", "--variant", "merged", "--variant", "seed"] + BEYOND, capsys)
    assert code == 0 and "Linux 6.12 model, variant merged vs seed:" in _flat(out)
    assert any(line.startswith("a = merged (") for line in out.splitlines())
    assert "results -EINVAL / -EINVAL" in _flat(out)


def test_diff_pairs_two_kernels_with_two_variants(capsys):
    code, out, _ = run(["diff", "--kernel", "5.17", "--kernel", "6.12", "--variant", "merged",
                        "--variant", "no-catch-up"] + CALL, capsys)
    assert code == 0
    assert any(line.startswith("a = Linux 5.17, merged (") for line in out.splitlines())
    assert "invariants under Linux 5.17, merged: every invariant holds" in out
    assert "invariants under Linux 6.12, no-catch-up: step" in out


def test_recipe_run_on_another_kernel(tmp_path, capsys):
    path = tmp_path / "beyond.recipe"
    path.write_text(f"kernel 6.12\n{SETUP}\ncall slot=1 gpa={1 << 52:#x} size=0x10000 hva=0x7f0000000000\n")
    code, out, _ = run(["recipe", "run", str(path)], capsys)
    assert code == 0 and out.splitlines()[0] == f"kvmviz 0.1.0, Linux 6.12 model, variant merged: recipe {path}"
    assert "results: 0, -EINVAL" in out
    code, out, _ = run(["recipe", "run", str(path), "--kernel", "5.17"], capsys)
    assert code == 0 and "Linux 5.17 model, variant merged" in out.splitlines()[0]
    assert "results: 0, 0" in out
    code, _, err = run(["recipe", "run", str(path), "--kernel", "5.15"], capsys)
    assert code == 0 and err == ""
    path.write_text("variant seed\n" + SETUP)
    code, _, err = run(["recipe", "run", str(path), "--kernel", "5.15"], capsys)
    assert code == 2 and "kernel 5.15 is the array design" in err
