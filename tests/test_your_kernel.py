"""Lesson 11's experiments: model and kernel side by side, live or from the recorded run."""

import os

import pytest

from kvmviz import trace
from kvmviz.teach import your_kernel as yk


@pytest.fixture(scope="module")
def recorded():
    return yk.Kernel.recorded("a test")


def test_without_dev_kvm_the_recorded_kernel_is_used_and_says_so():
    k = yk.Kernel.here(path="/nonexistent/kvm")
    assert not k.live
    assert k.why.startswith("recorded: no usable /dev/kvm here (") and "recorded on" in k.why
    assert k.release == k.caps.release and k.release.startswith("6.")


def test_recorded_calls_agree_with_the_model(recorded):
    rows = yk.calls_side_by_side(recorded)
    assert [r.what for r in rows] == [what for what, _ in yk.CALLS]
    assert all(r.same for r in rows), [r for r in rows if not r.same]
    by_what = {r.what: r.kernel for r in rows}
    assert by_what["slot 2 in address space 1 (SMM)"] == "-EINVAL"          # no SMM on the recording host
    assert by_what["MOVE slot 1 to gpa 1 << 52 (gfn 2**40)"] == "-EINVAL"    # the max-gfn check of prepare
    assert by_what["slot 2 overlapping slot 1's gpas"] == "-EEXIST"


def test_recorded_guest_and_dirty_log_agree_with_the_model(recorded):
    guest = yk.guest_side_by_side(recorded)
    assert [r.kernel for r in guest] == ["ok 0x3", "MMIO exit (read)", "MMIO exit (write)", "ok 0xa5",
                                         "MMIO exit (read)"]
    assert all(r.same for r in guest)
    dirty = yk.dirty_log_side_by_side(recorded)
    assert [(r.model, r.kernel) for r in dirty] == [("pages [3, 5]", "pages [3, 5]"), ("pages []", "pages []")]


def test_recorded_three_way_replay_and_host_check(recorded):
    three = yk.replay_three_ways(recorded, trace.load("captured-hotplug.log"))
    assert three.counts() == {"agree": 13, "explained": 0, "not run": 0, "UNEXPLAINED": 0}
    assert "all 123 comparisons match" in yk.host_check(recorded)


def test_a_model_that_disagrees_shows_up_as_no():
    rows = [yk.Row("x", "0", "-EINVAL", False)]
    assert "| x | `0` | `-EINVAL` | **no** |" in yk.markdown(rows)


@pytest.mark.host
def test_live_kernel_agrees_with_its_model():
    k = yk.Kernel.here()
    if not k.live:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs /dev/kvm for the host tests: {k.why}")
        pytest.skip(k.why)
    for experiment in yk.EXPERIMENTS.values():
        rows = experiment(k)
        assert rows and all(r.same for r in rows), [r for r in rows if not r.same]
    three = yk.replay_three_ways(k, trace.load("captured-hotplug.log"))
    assert three.counts()["UNEXPLAINED"] == 0
