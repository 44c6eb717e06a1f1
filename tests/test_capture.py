"""Live captures: QEMU on the real /dev/kvm, the shipped captured traces, three-way replay, bad input.

Tests marked ``qemu`` run QEMU; without it (or without a usable /dev/kvm)
they skip with the reason, or fail when ``CI=true`` (``.ci/run`` installs
``qemu-system-x86``). Each scenario is captured once per session.
"""

import importlib
import os
import subprocess
import sys
import time

import pytest

from kvmviz import VM, trace
from kvmviz.trace.capture import SCENARIOS, CaptureError, Scenario, capture, read_header

cap = importlib.import_module("kvmviz.trace.capture")      # the module (trace.capture is the function)
from kvmviz.trace.threeway import on_host

SHIPPED = {s: f"captured-{s}.log" for s in SCENARIOS}
FOUR_GIB = 1 << 32


def _missing():
    try:
        cap.qemu_version()
        cap.check_kvm()
    except CaptureError as e:
        return str(e)
    return None


def _need_qemu():
    reason = _missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def _host_or_skip():
    from kvmviz.host import available
    ok, why = available()
    if not ok:
        pytest.skip(f"no usable /dev/kvm: {why}")


def _model():
    from kvmviz.host.model import model_for_host
    return model_for_host(history=False)


@pytest.fixture(scope="module")
def live():
    """Every scenario captured once: ``{scenario: (text, seconds)}``."""
    _need_qemu()
    out = {}
    for scenario in SCENARIOS:
        start = time.monotonic()
        out[scenario] = capture(scenario, timeout=60)
        out[scenario] = (out[scenario], time.monotonic() - start)
    return out


def _changes(text):
    return [rc.change for rc in trace.replay(text, VM(address_spaces=1, history=False)).calls]


def _calls(text):
    return trace.parse_qemu(text).calls


# -- shipped captured traces (no QEMU needed) ------------------------------------------------
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_shipped_capture_has_the_header_and_parses_whole(scenario):
    text = trace.load(SHIPPED[scenario])
    head = read_header(text)
    assert text.startswith("# captured with kvmviz capture (kvmviz ")
    assert head["scenario"].startswith(f"{scenario} - ")
    assert head["command"].startswith("/usr/bin/qemu-system-x86_64 -nodefaults -machine pc -accel kvm ")
    assert "-nic none" in head["command"] and "-trace kvm_set_user_memory" in head["command"]
    assert head["qemu"].startswith("QEMU emulator version 7.2") and head["kernel"].startswith("6.18")
    assert head["date"].startswith("2026-")
    parsed = trace.parse_qemu(text)
    assert parsed.unparsed == [] and parsed.other == [] and parsed.calls[0].line == 1 + len(
        [line for line in text.splitlines() if line.startswith("#")])
    assert all(c.ret == 0 and c.era == "slot" and c.pid is not None for c in parsed.calls)


def test_shipped_hotplug_adds_two_dimms_at_4_gib_and_removes_the_second():
    calls = _calls(trace.load(SHIPPED["hotplug"]))
    tail = [(c.id, c.flags, c.guest_phys_addr, c.memory_size) for c in calls[-3:]]
    assert tail == [(6, 0, FOUR_GIB, 128 << 20), (7, 0, FOUR_GIB + (128 << 20), 128 << 20),
                    (7, 0, FOUR_GIB + (128 << 20), 0)]


def test_shipped_readonly_maps_the_pflash_and_a_rom_dimm_read_only():
    calls = _calls(trace.load(SHIPPED["readonly"]))
    assert (1, 2, 0xffff0000, 0x10000) in [(c.id, c.flags, c.guest_phys_addr, c.memory_size) for c in calls]
    assert [(c.flags, c.guest_phys_addr, c.memory_size) for c in calls[-2:]] == [(2, FOUR_GIB, 2 << 20),
                                                                                  (0, FOUR_GIB, 0)]


def test_shipped_migrate_logs_every_ram_slot_then_stops():
    report = trace.replay(trace.load(SHIPPED["migrate"]), VM(address_spaces=1, history=False))
    toggles = [(rc.call.id, rc.call.flags & 1) for rc in report.calls if rc.change == "FLAGS_ONLY"]
    slots = sorted({i for i, _ in toggles})
    assert slots == sorted(s[0] for s in report.layout()[0]) and len(slots) == 6
    assert [on for _, on in toggles] == [1] * 6 + [0] * 6
    assert all(flags & 1 == 0 for *_, flags in report.layout()[0])


def test_shipped_boot_maps_the_vga_framebuffer_with_dirty_logging():
    layout = trace.replay(trace.load(SHIPPED["boot"]), VM(address_spaces=1, history=False)).layout()[0]
    assert (3, 0xfd000, 0x1000, 1) in layout and (1, 0xfffc0, 0x40, 2) in layout


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_shipped_capture_agrees_three_ways(scenario):
    _host_or_skip()
    from kvmviz.host import HostVM
    report = trace.replay(trace.load(SHIPPED[scenario]), _model())
    assert report.mismatches == [] and report.vm.address_spaces == 1
    with HostVM(memory=1 << 12) as host:
        result = on_host(report, host)
    assert result.counts() == {"agree": len(report.calls), "explained": 0, "not run": 0, "UNEXPLAINED": 0}


def test_replay_host_cli_reports_each_call_and_the_summary():
    _host_or_skip()
    done = subprocess.run([sys.executable, "-m", "kvmviz", "replay", "qemu-vga-dirty-log.log", "--host"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("model: kernel 6.12 (tree), 1 address space(s)")
    assert "call    1 line     9: logged 0       model -EINVAL host -EINVAL explained" in lines
    assert ("logged = model = host: 14; model = host, log differs (explained): 15; not run on the host: 0; "
            "model != host (unexplained): 0") in lines
    assert "the log starts mid-run" in done.stdout and "a kernel without SMM refuses as_id 1" in done.stdout


def test_replay_host_refuses_a_model_option():
    done = subprocess.run([sys.executable, "-m", "kvmviz", "replay", "captured-boot.log", "--host",
                           "--address-spaces", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


# -- live captures ----------------------------------------------------------------------------
@pytest.mark.qemu
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fresh_capture_repeats_the_shipped_change_types(live, scenario):
    text, seconds = live[scenario]
    assert read_header(text)["scenario"].startswith(scenario)
    assert _changes(text) == _changes(trace.load(SHIPPED[scenario]))
    assert seconds < (20 if SCENARIOS[scenario].firmware == "seabios" else 5)


@pytest.mark.qemu
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fresh_capture_agrees_on_model_and_host(live, scenario):
    from kvmviz.host import HostVM
    report = trace.replay(live[scenario][0], _model())
    assert report.unparsed == [] and report.mismatches == []
    with HostVM(memory=1 << 12) as host:
        assert on_host(report, host).unexplained == []


def _leak_probe(monkeypatch, step):
    """Run a capture whose only step is ``step(run)``; returns the ``_Run`` it used."""
    seen = []

    def probe(run):
        seen.append(run)
        step(run)
    monkeypatch.setitem(SCENARIOS, "probe", Scenario("test", "halt", (probe,)))
    return seen


def _gone(run):
    assert run.proc.poll() is not None, "QEMU still runs"
    assert not os.path.exists(f"/proc/{run.proc.pid}"), "QEMU's process is still there"
    assert not os.path.exists(run.tmp)


@pytest.mark.qemu
def test_a_qmp_error_is_one_line_and_leaves_no_qemu(monkeypatch):
    _need_qemu()
    seen = _leak_probe(monkeypatch, lambda run: run.step("no-such-command"))
    with pytest.raises(CaptureError, match=r"^QMP no-such-command failed: The command no-such-command has not"):
        capture("probe")
    _gone(seen[0])


@pytest.mark.qemu
def test_a_timeout_kills_qemu(monkeypatch):
    _need_qemu()
    seen = _leak_probe(monkeypatch, cap._boot)          # the halt firmware never prints "No bootable device"
    with pytest.raises(CaptureError, match=r"^timeout: the capture took more than 1 s$"):
        capture("probe", timeout=1)
    _gone(seen[0])


@pytest.mark.qemu
def test_ctrl_c_kills_qemu(monkeypatch):
    _need_qemu()

    def interrupt(run):
        raise KeyboardInterrupt
    seen = _leak_probe(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        capture("probe")
    _gone(seen[0])


def test_trace_capture_is_the_function():
    assert trace.capture is capture and cap.capture is capture and cap.__name__ == "kvmviz.trace.capture"


def test_without_qemu_the_command_says_how_to_install_it(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    out = tmp_path / "boot.log"
    done = subprocess.run([sys.executable, "-m", "kvmviz", "capture", "boot", "-o", str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr == ("kvmviz capture: QEMU not found: no qemu-system-x86_64 on PATH "
                           "(install it: apt-get install qemu-system-x86)\n")


def test_an_unusable_kvm_device_is_one_line(tmp_path):
    if _missing() and "QEMU not found" in _missing():
        pytest.skip(_missing())
    with pytest.raises(CaptureError, match=r"^/nonexistent/kvm is unusable: No such file or directory"):
        capture("hotplug", kvm="/nonexistent/kvm")


@pytest.mark.qemu
def test_kvmviz_capture_writes_the_file_and_a_summary(tmp_path):
    _need_qemu()
    out = tmp_path / "hotplug.log"
    done = subprocess.run([sys.executable, "-m", "kvmviz", "capture", "hotplug", "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"kvmviz capture hotplug: 13 kvm_set_user_memory calls (CREATE 10, DELETE 3) "
                                  f"captured in ")
    assert done.stderr.endswith(f" -> {out}\n") and done.stdout == ""
    assert _changes(out.read_text()) == _changes(trace.load(SHIPPED["hotplug"]))
