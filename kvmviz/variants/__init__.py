"""Algorithm variants of the memslot update, for reviewing patches.

``names()`` lists them, ``describe(name)`` says what each one is, whether it
is deliberately broken, and where it comes from; ``VM(variant=name)`` runs it.
Every variant is a ``MergedProtocol`` subclass, so two variants can be run on
the same calls and compared step by step (``kvmviz.export.diff``).

>>> names()[:3]
['merged', 'seed', 'seed-as-posted']
>>> v = describe("seed"); v.broken, v.source.split(",")[0]
(False, 'Sean Christopherson')
>>> describe("nope")
Traceback (most recent call last):
...
ValueError: unknown variant 'nope'; choose from merged, seed, seed-as-posted, invalid-in-place, no-srcu-wait, gen-before-publish, no-catch-up
"""

from ..engine.variant import Variant, describe, make_protocol, names, register, resolve, unregister
from . import broken, seed

_BROKEN_SOURCE = "kvmviz: a deliberately broken change, written for review practice; "

_VARIANTS = (
    Variant("seed", seed.SeedProtocol, False,
            "Sean Christopherson's 27 Oct 2021 proposal, its dispatch read as intended: one `working` "
            "slot is allocated up front for every change type (before slots_arch_lock) and filled with "
            "kvm_copy_memslot from `new`, a struct on the stack; MOVE rewrites the old slot object at "
            "its new gfn and hands the INVALID copy, with INVALID cleared, to commit to free. It landed "
            "briefly in mainline (a54d806688fe) before 244893fa2859 replaced it.", seed.SOURCE),
    Variant("seed-as-posted", seed.SeedAsPostedProtocol, True,
            "The same proposal with its dispatch exactly as posted: an `if` where `else if` was meant "
            "starts a second chain (MOVE? FLAGS_ONLY? else BUG()), so CREATE and DELETE do their work "
            "and then hit BUG(): the ioctl never returns and commit never runs. MOVE and FLAGS_ONLY "
            "work. The sketch was compile-tested only.", seed.SOURCE, "accounting"),
    Variant("invalid-in-place", broken.InvalidInPlaceProtocol, True,
            "DELETE/MOVE set KVM_MEMSLOT_INVALID on the live slot as well as on its copy, 'so vCPUs stop "
            "at once'. vCPUs inside their SRCU section see the slot change under them with no new "
            "generation, and a reverted DELETE leaves the slot INVALID for good.",
            _BROKEN_SOURCE + "breaks reference §2.1 (kvm_invalidate_memslot)", "in-place"),
    Variant("no-srcu-wait", broken.NoSrcuWaitProtocol, True,
            "The swap skips synchronize_srcu_expedited. The writer stores the final generation, edits "
            "the set it just unpublished and frees slots while vCPUs that entered before the swap are "
            "still using them.", _BROKEN_SOURCE + "breaks reference §3.4 step 5", "grace-period"),
    Variant("gen-before-publish", broken.GenBeforePublishProtocol, True,
            "The swap stores the next generation in the new set before publishing it, instead of the "
            "in-progress mark: readers see a final generation while old readers still run, so a cache "
            "filled from the old set never goes stale; and since the swap still adds N at its end, the "
            "generation moves by 2N per swap.", _BROKEN_SOURCE + "breaks reference §3.1-§3.2",
            "generation"),
    Variant("no-catch-up", broken.NoCatchUpProtocol, True,
            "kvm_activate_memslot swaps but does not replay the change on the set that just became "
            "inactive ('nobody reads it'). The sets disagree at rest, the next update edits the stale "
            "set and publishes it, and slots vanish or come back from the dead.",
            _BROKEN_SOURCE + "breaks reference §2.1 (kvm_activate_memslot)", "same-at-rest"),
)
for _v in _VARIANTS:
    register(_v.name, _v.protocol, description=_v.description, source=_v.source, broken=_v.broken,
             violates=_v.violates)


__all__ = ["Variant", "names", "describe", "make_protocol", "register", "unregister", "resolve"]
