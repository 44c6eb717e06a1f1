"""The registry of ``kvm_set_memslot`` variants that ``VM(variant=...)`` runs.

The engine knows one variant, ``merged`` (Linux 5.17+ as merged, reference §2);
``kvmviz.variants`` registers the shipped others, and a reviewer registers their own
with ``register(name, cls, ...)`` or passes the class itself: ``VM(variant=MyProtocol)``.
Every variant is a ``MergedProtocol`` subclass, so two variants can run the same calls
and be compared step by step (``kvmviz.export.diff``).

>>> names()[0], describe("merged").broken
('merged', False)
>>> describe("nope")
Traceback (most recent call last):
...
ValueError: unknown variant 'nope'; choose from merged, seed, seed-as-posted, invalid-in-place, no-srcu-wait, gen-before-publish, no-catch-up
"""

from dataclasses import dataclass

from .rules import RULES
from .tree.protocol import MergedProtocol


@dataclass(frozen=True)
class Variant:
    """One algorithm variant: its protocol class and what a reviewer should know.

    ``violates`` is the invariant rule (a key of ``kvmviz.engine.rules.RULES``) the
    checker reports first for a deliberately broken variant.

    >>> print(str(describe("merged")).split(":")[0])
    merged [ok]
    """

    name: str
    protocol: type
    broken: bool
    description: str
    source: str
    violates: str = ""

    def __str__(self):
        tag = "BROKEN" if self.broken else "ok"
        return f"{self.name} [{tag}]: {self.description}\n  source: {self.source}"


_REGISTRY = {}


def register(name, cls, *, description="", source="", broken=False, violates=""):
    """Add variant ``name`` running protocol class ``cls`` (a ``MergedProtocol`` subclass).

    Registering a name again replaces it (a reviewer reloading their file). ``violates``
    is empty or a key of ``RULES``.

    >>> class Mine(MergedProtocol): pass
    >>> register("mine", Mine, description="no change yet").protocol.__name__
    'Mine'
    >>> unregister("mine")
    """
    if not (isinstance(cls, type) and issubclass(cls, MergedProtocol)):
        raise TypeError(f"variant {name!r}: {cls!r} is not a MergedProtocol subclass")
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"a variant name is one word, not {name!r}")
    if violates and violates not in RULES:
        raise ValueError(f"variant {name!r}: violates={violates!r} is not a key of RULES ({', '.join(RULES)})")
    v = Variant(name, cls, broken, description or (cls.__doc__ or "").strip().split("\n")[0], source, violates)
    _REGISTRY[name] = v
    return v


def unregister(name):
    """Remove a registered variant (the shipped ``merged`` stays)."""
    if name != "merged":
        _REGISTRY.pop(name, None)


def names(broken=None):
    """Names of all registered variants (``broken=True``/``False`` to filter).

    >>> "merged" in names(broken=False)
    True
    """
    return [v.name for v in _REGISTRY.values() if broken is None or v.broken == broken]


def describe(name):
    """The ``Variant`` called ``name``; ``ValueError`` listing the names if unknown."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(names())}") from None


def resolve(variant):
    """The ``Variant`` for a name or a protocol class (a class need not be registered).

    >>> resolve(MergedProtocol).name
    'merged'
    """
    if isinstance(variant, type):
        for v in _REGISTRY.values():
            if v.protocol is variant:
                return v
        if not issubclass(variant, MergedProtocol):
            raise TypeError(f"{variant.__qualname__} is not a MergedProtocol subclass")
        return Variant(variant.__qualname__, variant, False, (variant.__doc__ or "").strip(), "user class")
    return describe(variant)


def make_protocol(vm, variant):
    """The protocol object ``VM(variant=...)`` runs its updates with (a name or a class).

    >>> from kvmviz import VM
    >>> type(make_protocol(VM(), "seed")).__name__
    'SeedProtocol'
    """
    return resolve(variant).protocol(vm)


register("merged", MergedProtocol, source=(
    "Linux 5.17 as merged: v7 of Maciej S. Szmigiero's series, "
    "cover.1638817637.git.maciej.szmigiero@oracle.com, with commit 244893fa2859 "
    "(Sean Christopherson, dynamic `new`); reference §0, §2"), description=(
    "The update as merged for Linux 5.17: `new` is allocated by __kvm_set_memory_region and "
    "installed as it is; DELETE and MOVE allocate an INVALID copy of the old slot, publish it, "
    "then swap again; commit frees what became unreachable."))
