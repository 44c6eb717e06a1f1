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

from dataclasses import dataclass

from ..protocol import MergedProtocol
from . import broken, seed

_MERGED_SOURCE = ("Linux 5.17 as merged: v7 of Maciej S. Szmigiero's series, "
                  "cover.1638817637.git.maciej.szmigiero@oracle.com, with commit 244893fa2859 "
                  "(Sean Christopherson, dynamic `new`); reference §0, §2")
_BROKEN_SOURCE = "kvmviz: a deliberately broken change, written for review practice; "


@dataclass(frozen=True)
class Variant:
    """One algorithm variant: its protocol class and what a reviewer should know.

    >>> describe("no-srcu-wait").violates
    'grace period'
    """

    name: str
    protocol: type
    broken: bool
    description: str
    source: str
    violates: str = ""          # the invariant family the checker reports, for broken variants

    def __str__(self):
        tag = "BROKEN" if self.broken else "ok"
        return f"{self.name} [{tag}]: {self.description}\n  source: {self.source}"


_VARIANTS = (
    Variant("merged", MergedProtocol, False,
            "The update as merged for Linux 5.17: `new` is allocated by __kvm_set_memory_region and "
            "installed as it is; DELETE and MOVE allocate an INVALID copy of the old slot, publish it, "
            "then swap again; commit frees what became unreachable.", _MERGED_SOURCE),
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
            "work. The sketch was compile-tested only.", seed.SOURCE, "page count"),
    Variant("invalid-in-place", broken.InvalidInPlaceProtocol, True,
            "DELETE/MOVE set KVM_MEMSLOT_INVALID on the live slot as well as on its copy, 'so vCPUs stop "
            "at once'. vCPUs inside their SRCU section see the slot change under them with no new "
            "generation, and a reverted DELETE leaves the slot INVALID for good.",
            _BROKEN_SOURCE + "breaks reference §2.1 (kvm_invalidate_memslot)", "in place"),
    Variant("no-srcu-wait", broken.NoSrcuWaitProtocol, True,
            "The swap skips synchronize_srcu_expedited. The writer stores the final generation, edits "
            "the set it just unpublished and frees slots while vCPUs that entered before the swap are "
            "still using them.", _BROKEN_SOURCE + "breaks reference §3.4 step 5", "grace period"),
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
            _BROKEN_SOURCE + "breaks reference §2.1 (kvm_activate_memslot)", "agreement"),
)
_BY_NAME = {v.name: v for v in _VARIANTS}


def names(broken=None):
    """Names of all variants (``broken=True``/``False`` to filter).

    >>> names(broken=False)
    ['merged', 'seed']
    """
    return [v.name for v in _VARIANTS if broken is None or v.broken == broken]


def describe(name):
    """The ``Variant`` called ``name``; ``ValueError`` listing the names if unknown.

    >>> print(describe("no-catch-up").description.split(".")[0])
    kvm_activate_memslot swaps but does not replay the change on the set that just became inactive ('nobody reads it')
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(names())}") from None


def make_protocol(vm, name):
    """The protocol object ``VM(variant=name)`` runs its updates with.

    >>> from kvmviz import VM
    >>> type(make_protocol(VM(), "seed")).__name__
    'SeedProtocol'
    """
    return describe(name).protocol(vm)


__all__ = ["Variant", "names", "describe", "make_protocol"]
