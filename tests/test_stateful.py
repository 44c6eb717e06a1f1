"""A hostile user, as a hypothesis state machine (issue 14's target).

Random calls (whole or step by step), history moves (back, forward, goto),
vCPU readers, MMU-notifier ranges and bad arguments, on every variant and
kernel version. After each operation:

- no exception other than ``KvmError``, ``ValueError`` or ``TypeError``
  escapes (a broken variant's ``BUG``/``WARN`` is the update's last step),
- the invariants hold for variants that are not broken,
- a refused operation left the state and the history exactly as they were,
- ``history.goto(k)`` and back reproduces the state (its own rule).

``OPS`` counts the operations run; ``test_enough_operations`` checks the
total (at least 50,000 per run).
"""

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import kvmviz
from kvmviz import KvmError, check_invariants, variants
from kvmviz.engine.errors import ModelBug
from conftest import HVA

SETUPS = [("5.15", "merged")] + [(k, v) for k in ("5.17", "6.12") for v in variants.names()]
BROKEN = set(variants.names(broken=True))
#: KvmErrors raised after the call changed state (a prepare or guest_memfd bind failure)
LATE_RULES = ("4.4", "4.5")
EXAMPLES, STEPS = 600, 100
OPS = [0]

slots = st.integers(0, 3)
gpas = st.sampled_from([0, 0x100000, 0x200000, 0x201000, 0x400000])
sizes = st.sampled_from([0, 0x1000, 0x2000, 0x10000])
flags = st.sampled_from([0, 0, 1, 2])
gfns = st.sampled_from([0, 0x100, 0x101, 0x200, 0x201, 0x20f, 0x400, 0x1234])
hvas = st.sampled_from([HVA, HVA + 0x1000, HVA + 0x100000, HVA + 0x200000])
bad = st.sampled_from([1.5, "x", True, -1, None, 1 << 200, "0x10"])


def _slot(s):
    return (s.label, s.id, s.base_gfn, s.npages, s.flags, s.userspace_addr, s.invalid)


def fingerprint(vm):
    """Everything a refused operation must leave alone, history included."""
    sets = tuple(tuple(map(_slot, vm.memslots(a, w))) for a in range(vm.address_spaces)
                 for w in ("active", "inactive"))
    vcpus = tuple((v.pinned, v.smm, v.pinned_gens, getattr(v.last_used_slot, "label", v.last_used_slot),
                   v.mmio_gfn, v.mmio_gen, len(v.hva_caches)) for v in vm.vcpus)
    upd = vm.update
    h = vm.history
    return (sets, vm.generations(), vm.locks, vm.changing, vm.swaps, vm.nr_memslot_pages, vm.mn_ranges,
            vm.mn_active_invalidate_count, tuple((str(r), g) for r, g in vm.srcu.readers), vm.srcu.seq,
            vm.srcu.completed, vcpus, vm.mmio_sptes, vm.uid, vm.alloc_seq,
            len(h), h.cursor, len(h.entries), id(h.events[-1]) if h.events else None,
            None if upd is None else (upd.call, len(upd.steps), upd.result))


class HostileUser(RuleBasedStateMachine):
    """Calls, steps, history moves, readers and bad arguments on one VM."""

    @initialize(setup=st.sampled_from(SETUPS))
    def make_vm(self, setup):
        self.kernel, self.variant = setup
        self.vm = kvmviz.VM(kernel=self.kernel, variant=self.variant)

    def _do(self, fn, *args, late_ok=False):
        """Run one operation; a refusal must change nothing."""
        OPS[0] += 1
        before = fingerprint(self.vm)
        try:
            return fn(*args)
        except KvmError as e:
            if not (late_ok and e.rule in LATE_RULES):
                assert fingerprint(self.vm) == before, f"refused {fn.__name__}{args} changed the VM: {e}"
        except (ValueError, TypeError) as e:
            assert fingerprint(self.vm) == before, f"refused {fn.__name__}{args} changed the VM: {e}"
        except ModelBug as e:
            # a whole call raises its BUG/WARN result: only broken variants, and the update is over
            last = self.vm.history.events[-1]
            assert self.variant in BROKEN and self.vm.update is None and last.result in ("BUG", "WARN"), e
        return None

    # -- the writer -----------------------------------------------------------
    @rule(slot=slots, fl=flags, gpa=gpas, size=sizes, fail=st.sampled_from([0, 0, 0, 12]))
    def call(self, slot, fl, gpa, size, fail):
        self._do(self.vm.set_user_memory_region, slot, fl, gpa, size, HVA + (slot << 20), fail, late_ok=True)

    @rule(slot=slots, fl=flags, gpa=gpas, size=sizes)
    def begin(self, slot, fl, gpa, size):
        self._do(self.vm.begin_set_user_memory_region, slot, fl, gpa, size, HVA + (slot << 20))

    @precondition(lambda self: self.vm.update is not None)
    @rule(n=st.integers(1, 12))
    def step(self, n):
        upd = self.vm.update
        for _ in range(n):
            if self._do(next, upd) is None or upd.result is not None:
                return

    @precondition(lambda self: self.vm.update is not None)
    @rule()
    def run_update(self):
        upd = self.vm.update
        self._do(lambda: list(upd))
        assert upd.result is not None or upd.blocked or not self.vm.history.at_frontier

    # -- history -------------------------------------------------------------------
    @rule(n=st.integers(1, 40))
    def back(self, n):
        OPS[0] += 1
        for _ in range(n):
            self.vm.history.back()

    @rule(n=st.integers(1, 40))
    def forward(self, n):
        OPS[0] += 1
        for _ in range(n):
            self.vm.history.forward()

    @rule(data=st.data())
    def goto_and_back(self, data):
        """``goto(k)`` and back to where we were reproduces the same state."""
        OPS[0] += 1
        h = self.vm.history
        here, before = h.cursor, fingerprint(self.vm)
        h.goto(data.draw(st.integers(0, len(h))))
        h.goto(here)
        assert fingerprint(self.vm) == before

    @rule()
    def to_end(self):
        OPS[0] += 1
        self.vm.history.goto(len(self.vm.history))

    # -- readers ----------------------------------------------------------------------
    @precondition(lambda self: len(self.vm.vcpus) < 3)
    @rule()
    def add_vcpu(self):
        self._do(self.vm.add_vcpu)

    @precondition(lambda self: self.vm.vcpus)
    @rule(data=st.data(), what=st.sampled_from(["lock", "unlock", "access", "write", "lookup", "smm", "ghc"]),
          gfn=gfns)
    def vcpu(self, data, what, gfn):
        v = data.draw(st.sampled_from(self.vm.vcpus))
        fn = {"lock": v.srcu_read_lock, "unlock": v.srcu_read_unlock, "smm": lambda: v.set_smm(not v.smm),
              "access": lambda: v.access(gfn), "write": lambda: v.access(gfn, True),
              "lookup": lambda: v.gfn_to_memslot(gfn), "ghc": lambda: v.gfn_to_hva_cache_init(gfn << 12, 16)}[what]
        self._do(fn)

    @rule(start=hvas, pages=st.integers(1, 3))
    def notifier_start(self, start, pages):
        self._do(self.vm.mmu_notifier_invalidate_range_start, start, start + (pages << 12))

    @precondition(lambda self: self.vm.mn_ranges)
    @rule(data=st.data())
    def notifier_end(self, data):
        self._do(self.vm.mmu_notifier_invalidate_range_end, *data.draw(st.sampled_from(self.vm.mn_ranges)))

    # -- bad arguments -------------------------------------------------------------------
    @rule(value=bad, where=st.sampled_from(["access", "as_id", "generation", "goto", "smm", "mn", "ghc", "slot"]))
    def bad_argument(self, value, where):
        vm = self.vm
        v = vm.vcpus[0] if vm.vcpus else None
        fn = {"access": v and (lambda: v.access(value)), "as_id": v and (lambda: v.access(0, as_id=value)),
              "generation": lambda: vm.generation(value), "goto": lambda: vm.history.goto(value),
              "smm": v and (lambda: v.set_smm(value)), "mn": lambda: vm.mmu_notifier_invalidate_range_start(value, 5),
              "ghc": v and (lambda: v.gfn_to_hva_cache_init(value, 8)),
              "slot": lambda: vm.set_user_memory_region(value, 0, 0, 0x1000, HVA)}[where]
        if fn is None or (where == "smm" and value is True) or (where == "as_id" and value is None):
            return
        OPS[0] += 1
        before = fingerprint(vm)
        try:
            fn()
        except (KvmError, ValueError, TypeError):
            assert fingerprint(vm) == before
        else:
            raise AssertionError(f"{where}({value!r}) was accepted")

    @invariant()
    def invariants_hold(self):
        if hasattr(self, "vm") and self.variant not in BROKEN:
            assert check_invariants(self.vm) == []


HostileUser.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                         derandomize=True, database=None, phases=(Phase.explicit, Phase.generate),
                                         suppress_health_check=list(HealthCheck))
test_hostile_user = HostileUser.TestCase


def test_enough_operations():
    """The state machine above ran at least 50,000 operations (skipped if it did not run)."""
    import pytest
    if not OPS[0]:
        pytest.skip("the state machine did not run in this session")
    print(f"state machine: {OPS[0]} operations")
    assert OPS[0] >= 50_000, OPS[0]
