"""The invariants by key (``RULES``) and ``Violation``, what the checker returns.

One table for every part of kvmviz: the checker files each violation under a
key of ``RULES``, a broken variant names the key it breaks
(``Variant.violates``), and the "spot the invariant" exercises offer the keys
as answers with the descriptions below. The first five are the invariants of
reference §1.7, in its order (an exercise accepts their numbers). The module
sits under ``invariants`` and the two designs' checkers, which all import it.

>>> list(RULES)[:5]
['in-place', 'same-at-rest', 'differ-by-one', 'gfn-order', 'free-after-gp']
>>> v = Violation("locks", "no update is running but slots_lock is still held")
>>> v.rule, "still held" in v, v == "no update is running but slots_lock is still held"
('locks', True, True)
"""

from types import MappingProxyType

#: key -> one line for learners, with the reference section the rule comes from.
RULES = MappingProxyType({
    "in-place": "1. a slot readers can reach is never modified in place (reference §1.7.1)",
    "same-at-rest": "2. at rest both sets hold the same slot objects; 5.15 keeps no scratch copy (§1.7.2, §6.3)",
    "differ-by-one": "3. mid-update the two sets (5.15: the array and its scratch copy) differ by exactly one "
                     "slot (§1.7.3)",
    "gfn-order": "4. slots never overlap in gfn; each sits in gfn order under its own base_gfn (§1.7.4, §6.1)",
    "free-after-gp": "5. nothing is freed while a set, or a reader inside SRCU, can still reach it (§1.7.5)",
    "grace-period": "the writer waits for old readers: a swap ends, and the set it unpublished is edited, only "
                    "after the readers from before the publish left (§3.4 step 5)",
    "generation": "the generation rules: as_id + N per swap, IP bit only mid-swap (§3.1)",
    "stale-cache": "a lookup cache points into the set it serves: last_used_slot, and a vCPU cache tagged with "
                   "the current generation (§3.2, §5.1)",
    "indexes-agree": "the indexes of a set hold the same slots: gfn tree, hva tree, id hash and node_idx "
                     "(5.15: id_to_index, used_slots) (§1.1, §1.3, §6.1)",
    "address-space": "a slot and a set belong to the address space they sit in (as_id, §1.1)",
    "locks": "every lock is released when the ioctl returns (§1.5)",
    "accounting": "nr_memslot_pages counts the pages of all slots; 5.15 keeps no count (§1.4, §4.6)",
})


class Violation(str):
    """One broken invariant: the sentence a learner reads, filed under ``rule`` (a key of ``RULES``).

    A ``str``, so it prints, compares and searches as its sentence.

    >>> Violation("no-such-rule", "x")
    Traceback (most recent call last):
    ...
    ValueError: 'no-such-rule' is not a key of RULES
    """

    def __new__(cls, rule, text):
        if rule not in RULES:
            raise ValueError(f"{rule!r} is not a key of RULES")
        self = super().__new__(cls, text)
        self.rule = rule
        return self

    def __getnewargs__(self):
        # copy and pickle rebuild it with its rule
        return self.rule, str(self)
