"""benchmarks/memslot_perf.py beside the real kernel: table 1, the targets, the results file, --write-costs.

Checks the benchmark's logic on tiny runs and made-up figures; the figures
themselves are measured by running the benchmark, never in a test.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from kvmviz.host import available
from kvmviz.host.timing import KernelTimer
from kvmviz.viz import scaling
from kvmviz.viz.figure import legibility

ROOT = Path(__file__).resolve().parent.parent
KVM, WHY = available()


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("memslot_perf", ROOT / "benchmarks" / "memslot_perf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figures_for(bench, kernel_move=100e-6, on_move=250e-6, on_small=200e-6):
    """Table 1 figures at 10 and 32764 slots: every cell 1.0 except the MOVEs given."""
    figures = {(n, op, c): 1.0 for n in (10, 32764) for op in bench.OPS
               for c in ("tree on", "tree off", "array", "kernel")}
    figures.update({(32764, "MOVE", "kernel"): kernel_move, (32764, "MOVE", "tree on"): on_move,
                    (32764, "MOVE", "tree off"): 150e-6, (10, "MOVE", "tree on"): on_small})
    return figures


def test_targets_say_met_and_not_met_from_the_runs_figures(bench):
    results = {(32764, t, d): dict(seconds=s, cost={}) for t, d, s in
               (("move inactive", "array", 2e-3), ("move inactive", "tree", 1e-4), ("setup", "array", 30.0),
                ("setup", "tree", 2.0))}
    results[(10, "unmap", "array")] = dict(seconds=1.0, cost={}, sampled=True)
    found = bench.targets(figures_for(bench), results, list(bench.SERIES_NS),
                          dict(elapsed=1000, kernel_ns=list(bench.KERNEL_NS), replay=25_000))
    assert [t["met"] for t in found] == [True, True, True, True, True, False, False, False, True, None]
    assert found[0]["value"] == "2.50x" and found[2]["value"] == "1.25x"       # 250/100 us; 250/200 us
    assert bench.target_lines(found)[-1].endswith("not judged")


def test_targets_against_a_noisy_kernel_are_not_judged(bench):
    spread = {(32764, "MOVE", "kernel"): 5.0}
    found = bench.targets(figures_for(bench), {}, [10], dict(elapsed=5, kernel_ns=[10], spread=spread))
    assert [t["met"] for t in found[:3]] == [None, None, True]           # the own-baseline target stands
    assert "differ 5.0x" in found[0]["value"]


def test_targets_against_a_kernel_slowed_in_the_big_rounds_are_not_judged(bench):
    """A run of 2 Dec 2026: the kernel's MOVE took 29 us at 509 slots, 159 at 8194, 147 at 32764: the machine."""
    figures = figures_for(bench, kernel_move=147e-6)
    figures.update({(10, "MOVE", "kernel"): 52e-6, (509, "MOVE", "kernel"): 29.4e-6, (8194, "MOVE", "kernel"): 159e-6,
                    (32764, "setup", "kernel"): 2.0, (32764, "setup", "tree on"): 3.0})
    found = bench.targets(figures, {}, [10], dict(elapsed=5, kernel_ns=[10]))
    assert [t["met"] for t in found[:4]] == [None, None, True, False]      # the setup has no such rule
    assert "took 5.0x its MOVE at fewer slots" in found[0]["value"]
    steady = {**figures, (32764, "MOVE", "kernel"): 30e-6}
    assert [t["met"] for t in bench.targets(steady, {}, [10], dict(elapsed=5, kernel_ns=[10]))[:2]] == [False, False]


def test_targets_need_a_full_run_for_the_time_limit(bench):
    found = bench.targets({}, {}, [10], dict(elapsed=5, kernel_ns=[10]))
    limit = next(t for t in found if "15 minutes" in t["target"])
    assert limit["met"] is None and "not a full run" in limit["value"]


def test_kernel_table_prints_ratios_to_the_kernel_and_drops_the_column_without_one(bench):
    figures = figures_for(bench)
    lines = bench.kernel_table(figures, [10, 32764], "6.18")
    move = next(line for line in lines if line.split()[:2] == ["32764", "MOVE"])
    assert move.split("|")[1].split() == ["250", "150", "1,000,000", "100"]              # microseconds per ioctl
    assert move.split("|")[2].split() == ["2.5x", "1.5x", "1e+04x"]
    assert len(lines) == 2 + 2 * len(bench.OPS)
    assert "kernel" not in bench.kernel_table(figures, [10], None)[0]


def test_op_calls_go_there_and_back_on_the_last_slot(bench):
    layout = bench.Layout(10, bench.MEM_SIZE)
    last = layout.region(8)
    for op in ("MOVE", "FLAGS_ONLY", "DELETE+CREATE"):
        there, back = bench.op_calls(layout, op)
        assert back == last and there[0] == last[0] == 9 and there != last


def test_a_run_writes_its_results_file_not_package_data(bench, tmp_path, monkeypatch):
    costs = tmp_path / "costs.json"
    monkeypatch.setattr(bench, "COSTS_JSON", costs)
    out = tmp_path / "results.json"
    bench.main(["--slots", "10", "--kernel-slots", "10", "--repeats", "1", "--rounds", "1", "--pairs", "2",
                "--skip-replay", "--results", str(out)])
    assert not costs.exists()
    data = json.loads(out.read_text())
    columns = {r["column"] for r in data["table1"]}
    assert columns == {"tree on", "tree off", "array"} | ({"kernel"} if KVM else set())
    assert {(r["design"], r["test"]) for r in data["table2"]} == {(d, t) for d in bench.DESIGNS
                                                                  for t in bench.TESTS if t != "move active"}
    fig = scaling.plot_scaling(results=out)
    assert len(fig.axes) == 2 * len(scaling.PANELS)
    drawn = {line.get_label() for line in fig.axes[len(scaling.PANELS)].get_lines()}
    assert ("real kernel" in drawn) == KVM and "tree model, history on" in drawn
    assert legibility(fig)[1] == []              # text >= 10 px inside the figure, no legend over data


def test_write_costs_is_the_step_that_writes_the_plot_data(bench, tmp_path, monkeypatch):
    costs = tmp_path / "costs.json"
    monkeypatch.setattr(bench, "COSTS_JSON", costs)
    bench.main(["--write-costs", "--slots", "10"])
    stored = {(r["design"], r["test"]): r["work"] for r in scaling.load_costs() if r["n"] == 10}
    assert {(r["design"], r["test"]): r["work"] for r in json.loads(costs.read_text())} == stored


@pytest.mark.host
@pytest.mark.skipif(not KVM, reason=f"no usable /dev/kvm: {WHY}")
def test_kernel_timer_times_passes_and_names_a_refused_call():
    with KernelTimer() as k:
        k.new_vm()
        create, delete = (1, 0, 0x100000, 0x1000, 0x7f0000000000), (1, 0, 0x100000, 0, 0x7f0000000000)
        times = k.run([create, delete], repeat=4)
        assert len(times) == 4 and all(0 < t < 1 for t in times)
        k.run([create])
        with pytest.raises(RuntimeError, match=r"call 0 \(2, 0, 1048576, 4096, .*\) returned -17"):
            k.run([(2, 0, 0x100000, 0x1000, 0x7f0000000000)])          # overlaps slot 1: -EEXIST
