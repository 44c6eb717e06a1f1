"""The real kernel as the oracle: kvmviz.host, the differential suite and `kvmviz host-check`.

Marked ``host``. Without a usable /dev/kvm every test skips with the reason
(project machines and CI have one, so there they run; with ``CI=true`` a
missing /dev/kvm fails instead of skipping).
"""

import errno
import io
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import kvmviz
from kvmviz import KvmError
from kvmviz.cli import main
from kvmviz.engine.constants import KVM_MEM_LOG_DIRTY_PAGES as LOG, KVM_MEM_READONLY as RO, PAGE_SIZE as P
from kvmviz.host import HostVM, available
from kvmviz.host import check
from kvmviz.host.guest import free_place
from kvmviz.host.model import describe, host_capabilities, model_for_host, nearest_kernel
from conftest import HVA

OK, WHY = available()
if not OK and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI needs /dev/kvm for the host tests: {WHY}")
pytestmark = [pytest.mark.host, pytest.mark.skipif(not OK, reason=f"no usable /dev/kvm: {WHY}")]


@pytest.fixture(scope="module")
def caps():
    return host_capabilities()


def _fds():
    return len(os.listdir("/proc/self/fd"))


# -- the binding ------------------------------------------------------------------------
def test_return_codes_are_the_kernels_and_nothing_stays_open():
    before = _fds()
    with HostVM() as h:
        base = h.memory.base
        assert h.set_user_memory_region(1, 0, 0x100000, 0x2000, base) == 0
        assert h.set_user_memory_region(2, 0, 0x101000, 0x1000, base) == -errno.EEXIST
        assert h.set_user_memory_region(1, 0, 0x100000, 0x2000, base + P) == -errno.EINVAL
        assert h.set_user_memory_region(9, 0, 0, 0, base) == -errno.EINVAL        # delete missing
        assert h.set_user_memory_region(1, 0, 0x100000, 0, base) == 0
        assert h.guest().read(0x2000).outcome == "mmio"
    assert _fds() == before


@pytest.mark.parametrize("args", [(-1, 0, 0, 0, 0), (1 << 32, 0, 0, 0, 0), (0, 0, 1 << 64, 0, 0),
                                  (0, 0, 0, 0.5, 0), (0, True, 0, 0, 0), ("1", 0, 0, 0, 0)])
def test_values_the_ioctl_cannot_hold_are_refused_before_it(args):
    with HostVM() as h:
        with pytest.raises(ValueError):
            h.set_user_memory_region(*args)
        assert h.regions == {}


def test_capabilities_of_this_kernel(caps):
    assert caps.release == os.uname().release
    assert caps.api_version == 12 and caps.nr_memslots == kvmviz.KVM_USER_MEM_SLOTS
    assert caps.address_spaces in (1, 2)


def test_the_guest_reads_writes_and_exits_like_a_guest():
    with HostVM() as h:
        m = h.memory
        m.write(m.base + 3 * P + 5, b"\x77")
        assert h.set_user_memory_region(1, 0, 0x80000000, 4 * P, m.base) == 0
        assert h.set_user_memory_region(2, RO, 0x10000, P, m.base + 8 * P) == 0
        g = h.guest()
        assert (g.read(0x80003005).outcome, g.read(0x80003005).value) == ("ok", 0x77)
        assert g.read(0x80004000).outcome == "mmio"
        assert g.write(0x80001000, 0x42).outcome == "ok" and m.read(m.base + P) == 0x42
        w = g.write(0x10000, 0x13)
        assert (w.outcome, w.mmio_write) == ("mmio", True) and m.read(m.base + 8 * P) != 0x13
        assert h.regions == {1: (0x80000000, 4 * P), 2: (0x10000, P)}      # the code slot is gone again
        with pytest.raises(ValueError):
            g.read(1 << 32)


def test_dirty_log_after_real_guest_writes():
    with HostVM() as h:
        assert h.set_user_memory_region(1, LOG, 0x100000, 8 * P, h.memory.base) == 0
        for page in (1, 6):
            assert h.guest().write(0x100000 + page * P, 1).outcome == "ok"
        assert h.get_dirty_log(1, 8) == (0, {1, 6})
        assert h.get_dirty_log(1, 8) == (0, set())
        assert h.get_dirty_log(2, 8) == (-errno.ENOENT, None)


def test_free_place_avoids_slots_and_the_probed_page():
    slot, page = free_place({32763: (0xFFFFF000, P), 0: (0, 0xFFFF0000)}, 0xFFFFE123)
    assert (slot, page) == (32762, 0xFFFFD000)


# -- model_for_host ----------------------------------------------------------------------
def test_model_for_host_follows_the_kernel(caps):
    vm = model_for_host(caps)
    assert vm.kernel == nearest_kernel(caps.release) == "6.12"
    assert vm.address_spaces == caps.address_spaces
    top = vm.max_gfn << 12
    with HostVM() as h:      # the max gfn the model chose is the kernel's, to the page
        assert h.set_user_memory_region(1, 0, top, P, h.memory.base) == 0
        assert h.set_user_memory_region(2, 0, top + P, P, h.memory.base) == -errno.EINVAL
    assert "address space" in describe(vm)


def test_a_move_beyond_max_gfn_reverts_with_two_swaps_in_the_model(caps):
    vm = model_for_host(caps)
    vm.set_user_memory_region(1, 0, 0x100000, P, HVA)
    gen = vm.generation()
    with pytest.raises(KvmError) as e:
        vm.set_user_memory_region(1, 0, (vm.max_gfn + 1) << 12, P, HVA)
    assert e.value.errno == errno.EINVAL
    assert vm.generation() == gen + 2 * vm.address_spaces
    assert vm.memslots()[0].base_gfn == 0x100


# -- the differential suite ------------------------------------------------------------------
@pytest.mark.parametrize("case", check.CASES, ids=[c.name for c in check.CASES])
def test_case_agrees_with_the_kernel(case):
    report = check.run(cases=[case])
    r, = report.results
    assert r.differences == (), "\n".join(map(str, r.differences))
    assert r.calls > 0 and r.matches == r.calls + r.probes


def test_guest_visible_outcomes_are_really_compared():
    report = check.run(cases=[c for c in check.CASES if c.name in ("readers", "change-types", "modify")])
    assert sum(r.probes for r in report.results) >= 60
    assert report.differences == []


def test_the_suite_reports_a_wrong_model():
    wrong = lambda: kvmviz.VM(kernel="5.17", history=False)      # two address spaces, no max-gfn check
    report = check.run(cases=[c for c in check.CASES if c.name in ("address-spaces", "max-gfn")],
                       make_vm=wrong)
    first = report.differences[0]
    assert (first.case, first.model, first.host) == ("address-spaces", "0", "-EINVAL")
    assert "slot=0x10001" in first.item and first.rule
    assert any(d.case == "max-gfn" and d.host == "-EINVAL" for d in report.differences)


def test_guest_memfd_follows_the_vm_caps(caps):
    """6.18 lets a default VM bind guest_memfd (cap 1 on the VM fd); a 6.12 default VM model refuses."""
    case = [c for c in check.CASES if c.name == "memory-region2"]
    assert check.run(cases=case).differences == []
    default_vm = lambda: model_for_host(caps, private_mem=False, history=False)
    diffs = check.run(cases=case, make_vm=default_vm).differences
    assert caps.guest_memfd == 1 and (diffs[0].model, diffs[0].host) == ("-EINVAL", "0")
    assert "need a VM with private memory for GUEST_MEMFD" in diffs[0].rule


_CALLS = st.lists(st.tuples(*(st.integers(0, len(p) - 1) for p in check.pools(None))), min_size=25, max_size=35)


def test_random_sequences_agree():
    """Hypothesis draws call sequences from small pools: at least 3000 calls, every one agreeing."""
    pools, calls_made = check.pools(model_for_host().max_gfn), []

    @settings(max_examples=110, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_CALLS)
    def sequence_agrees(indexes):
        calls = [check.Call(*(pool[i] for pool, i in zip(pools, ix))) for ix in indexes]
        case = check.Case("hypothesis", "drawn by hypothesis", lambda _: calls + [check.PROBE])
        report = check.run(cases=[case])
        assert report.differences == [], "\n".join(map(str, report.differences))
        calls_made.append(report.calls)

    sequence_agrees()
    assert sum(calls_made) >= 3000, sum(calls_made)


# -- kvmviz host-check --------------------------------------------------------------------------
def test_host_check_prints_a_matching_table():
    out = io.StringIO()
    assert main(["host-check", "--random", "2", "--case", "modify", "--case", "npages"], out) == 0
    text = out.getvalue()
    assert f"Linux {os.uname().release}" in text and "model:  kernel 6.12" in text
    assert "modify" in text and "random x2" in text and "comparisons match" in text


def test_host_check_json():
    out = io.StringIO()
    assert main(["host-check", "--json", "--random", "1", "--case", "slot-ids"], out) == 0
    data = json.loads(out.getvalue())
    assert data["differences"] == [] and data["kernel"]["nr_memslots"] == 32764
    assert [c["name"] for c in data["cases"]] == ["slot-ids", "random-0"]


def test_host_check_without_kvm_exits_2_with_why():
    out = io.StringIO()
    assert main(["host-check", "--device", "/nonexistent/kvm"], out) == 2
    assert out.getvalue().startswith("kvmviz host-check: cannot use the real kernel: /nonexistent/kvm does not")


def test_host_check_bad_arguments_exit_2():
    assert main(["host-check", "--random", "-1"], io.StringIO()) == 2
    assert main(["host-check", "--case", "nope"], io.StringIO()) == 2
