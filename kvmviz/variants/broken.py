"""Deliberately broken variants of the merged protocol, for review practice.

Each class overrides exactly one method of ``MergedProtocol`` with a change a
reviewer could plausibly be sent, and each is caught by
``kvmviz.check_invariants`` during an ordinary workload (see
``tests/test_variants.py``); where it matters, a vCPU inside its SRCU
read-side section also sees something it must not.

>>> from kvmviz import VM, check_invariants
>>> vm = VM(variant="no-catch-up")
>>> _ = vm.set_user_memory_region(1, 0, 0x100000, 0x1000, 0x7f0000000000)
>>> check_invariants(vm)[0][:60]
'as0: at rest both sets must hold the same slot objects, but '
"""

from ..engine.constants import KVM_MEMSLOT_INVALID
from ..engine.tree.protocol import MergedProtocol


class InvalidInPlaceProtocol(MergedProtocol):
    """Sets ``KVM_MEMSLOT_INVALID`` on the live slot, not only on its copy.

    Breaks the rule that no slot reachable from the active set is written
    (reference §1.7, §2.1 ``kvm_invalidate_memslot``).

    >>> from kvmviz import VM, check_invariants
    >>> vm = VM(variant="invalid-in-place")
    >>> _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> _ = vm.set_user_memory_region(1, 0, 0, 0, 0x7f0000000000)          # DELETE
    >>> check_invariants(vm)[0].split(" while")[0]
    'as0: #1.flags changed in place (0x0 -> 0x10000)'
    """

    name = "invalid-in-place"

    def kvm_invalidate_memslot(self, old, invalid):
        """Broken ``kvm_invalidate_memslot``: flag ``old`` itself first."""
        old.flags |= KVM_MEMSLOT_INVALID
        yield self.step("kvm_invalidate_memslot",
                        f"BROKEN: set KVM_MEMSLOT_INVALID on {old.label} itself, the slot vCPUs are using "
                        "right now, so that they stop at once; then go on as merged.")
        yield from super().kvm_invalidate_memslot(old, invalid)


class NoSrcuWaitProtocol(MergedProtocol):
    """Forgets ``synchronize_srcu_expedited`` in the swap.

    The writer then edits and frees what old readers still use (reference
    §1.5, §3.4 step 5).

    >>> from kvmviz import VM, check_invariants
    >>> vm = VM(variant="no-srcu-wait"); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> vcpu = vm.add_vcpu(); vcpu.srcu_read_lock()
    >>> _ = vm.set_user_memory_region(1, 0, 0, 0, 0)            # DELETE: never waits for vcpu0
    >>> vcpu.gfn_to_memslot(0) is None                          # the slot vanished inside the section
    True
    >>> any("synchronize_srcu_expedited was skipped" in v for v in check_invariants(vm))
    True
    """

    name = "no-srcu-wait"

    def reader_blockers(self):
        """Readers never hold this swap up."""
        return []

    def synchronize_srcu_expedited(self, gp, old_active):
        """Broken: claims the grace period is over without waiting."""
        yield self.step("synchronize_srcu_expedited",
                        f"BROKEN: no wait for the grace period; readers that entered before the swap may "
                        f"still be walking {old_active.name}.")


class GenBeforePublishProtocol(MergedProtocol):
    """Stores the next generation before publishing, instead of the in-progress mark.

    Readers then see a final generation while old readers still run, so a cache
    filled from the old set carries a generation that never goes stale
    (reference §3.2); the swap's last step still adds N, so each swap moves the
    generation by 2N.

    >>> from kvmviz import VM
    >>> vm = VM(variant="gen-before-publish"); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> vm.generation(0), vm.swaps[0]
    (4, 1)
    """

    name = "gen-before-publish"

    def publish(self, as_id, new_active):
        """Broken ``rcu_assign_pointer`` step: bump the generation first."""
        new_active.generation = (new_active.generation & ~(1 << 63)) + self.vm.address_spaces
        return super().publish(as_id, new_active)


class NoCatchUpProtocol(MergedProtocol):
    """``kvm_activate_memslot`` swaps but never brings the other set in line.

    "Nobody reads the inactive set", but the next update edits it and
    publishes it (reference §2.1 ``kvm_activate_memslot``).

    >>> from kvmviz import VM
    >>> vm = VM(variant="no-catch-up"); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x7f0000000000)
    >>> len(vm.memslots(0, "active")), len(vm.memslots(0, "inactive"))
    (1, 0)
    """

    name = "no-catch-up"

    def kvm_activate_memslot(self, old, new):
        """Broken ``kvm_activate_memslot``: the swap only."""
        yield from self.kvm_swap_active_memslots((old or new).as_id)
