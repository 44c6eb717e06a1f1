"""A reviewer's own variant, not shipped: the swap waits on the wrong SRCU struct.

Written as a reviewer would (``docs/writing-a-variant.md``); ``tests/test_check.py``
checks that ``kvmviz check`` finds it broken. ``synchronize_srcu_expedited``
waits for ``kvm->irq_srcu`` instead of ``kvm->srcu``: no vCPU holds the
former while it walks the memslots, so the wait returns at once and the
writer goes on while a vCPU may still use the old set.
"""

from kvmviz import MergedProtocol


class WrongSrcu(MergedProtocol):
    """synchronize_srcu_expedited(&kvm->irq_srcu): the wrong struct, so no wait."""

    def synchronize_srcu_expedited(self, gp, old_active):
        self.vm.srcu.synchronized(gp)        # the call returns as if the grace period were over
        yield self.step("synchronize_srcu_expedited",
                        "wait for kvm->irq_srcu (the wrong struct): no vCPU holds it, so this returns at once.")


class NotAProtocol:
    """Not a MergedProtocol subclass: loading it is refused."""


class Raises(MergedProtocol):
    """A method with a bug of its own: a typo raises AttributeError."""

    def kvm_delete_memslot(self, old, new, invalid):
        yield from self.kvm_replace_memslot(old.as_id, old, None, function=self.kvm_delete_memslot.__nam__)
