"""One memslot set: kvm_replace_memslot's table, lookups and their costs (reference §2.1, §5)."""

from hypothesis import given, settings, strategies as st

from kvmviz.engine.memslot import Memslot
from kvmviz.engine.tree.memslots import MemslotSet, hash_32

uid = iter(range(1, 10**9))


def slot(id, gfn, npages, hva=0x10000000):
    return Memslot(uid=next(uid), id=id, base_gfn=gfn, npages=npages, userspace_addr=hva)


def contents(s):
    return ([x.label for x in s.slots()],
            sorted(x.label for b in s.id_hash for x in b.values()),
            sorted(x.label for _, _, x in s.hva_tree))


def test_replace_table_of_reference_2_1():
    s = MemslotSet(as_id=0, node_idx=1)
    a = slot(1, 0x100, 0x10)
    s.replace(None, a)                                            # CREATE: add, insert, insert
    assert contents(s) == ([a.label], [a.label], [a.label]) and a.nodes == 0b10
    b = slot(1, 0x100, 0x10)
    before = dict(s.cost)
    s.replace(a, b)                                               # same gfn: O(1) gfn replace
    assert s.cost["gfn_tree_nodes"] - before.get("gfn_tree_nodes", 0) == 1
    assert s.cost["hash_ops"] - before["hash_ops"] == 2 and a.nodes == 0 and b.nodes == 0b10
    c = slot(1, 0x300, 0x10)
    s.replace(b, c)                                               # MOVE: erase + insert
    assert [x.base_gfn for x in s.slots()] == [0x300] and s.id_to_memslot(1) is c
    s.replace(c, None)                                            # DELETE
    assert contents(s) == ([], [], []) and len(s) == 0


def test_replace_moves_last_used_slot_along():
    s = MemslotSet()
    a, b = slot(1, 0, 4), slot(1, 0, 4, hva=0x10000000)
    s.replace(None, a)
    assert s.gfn_to_memslot(2) is a and s.last_used_slot is a
    s.replace(a, b)
    assert s.last_used_slot is b
    s.replace(b, None)
    assert s.last_used_slot is None


def test_lookup_cache_is_tried_first():
    s = MemslotSet()
    a, b = slot(1, 0, 4), slot(2, 0x10, 4)
    s.replace(None, a), s.replace(None, b)
    assert s.gfn_to_memslot(0x11) is b
    nodes = s.cost["gfn_tree_nodes"]
    assert s.gfn_to_memslot(0x13) is b and s.cost["gfn_tree_nodes"] == nodes   # cache hit: no walk
    assert s.gfn_to_memslot(0x14) is None and s.last_used_slot is b            # a miss keeps it


def test_id_hash_has_128_buckets_keyed_by_hash_32():
    s = MemslotSet()
    slots = [slot(i, i * 8, 1) for i in range(300)]
    for x in slots:
        s.replace(None, x)
    assert len(s.id_hash) == 128
    assert all(s.id_hash[hash_32(x.id)][x.id] is x for x in slots)
    assert max(len(b) for b in s.id_hash) - min(len(b) for b in s.id_hash) <= 2   # a good spread


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 6)), max_size=20),
       st.integers(0, 70), st.integers(0, 12))
def test_gfn_range_walk_matches_brute_force(spans, start, length):
    """kvm_for_each_memslot_in_gfn_range yields exactly the overlapping slots, in order."""
    s, placed, end_of_last = MemslotSet(), [], -1
    for gfn, n in sorted(spans):
        if gfn > end_of_last:                                    # keep slots disjoint
            x = slot(len(placed), gfn, n)
            s.replace(None, x)
            placed.append(x)
            end_of_last = gfn + n - 1
    got = [x.label for x in s.iter_gfn_range(start, start + length)]
    want = [x.label for x in placed if x.base_gfn < start + length and start < x.end_gfn]
    assert got == want


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8)), max_size=20),
       st.integers(0, 50), st.integers(0, 10))
def test_hva_walk_matches_brute_force(spans, lo, length):
    """Overlapping hva ranges: the interval tree finds exactly the slots meeting the range."""
    s, placed = MemslotSet(), []
    for i, (page, n) in enumerate(spans):
        x = slot(i, i * 16, n, hva=page << 12)
        s.replace(None, x)
        placed.append(x)
    first, last = lo << 12, ((lo + length) << 12) - 1 if length else lo << 12
    got = sorted(x.label for x in s.iter_hva_range(first, last))
    want = sorted(x.label for x in placed if x.userspace_addr <= last and first <= x.hva_last)
    assert got == want


def test_walk_cost_is_logarithmic_plus_hits():
    small, big = MemslotSet(), MemslotSet()
    for s, n in ((small, 16), (big, 4096)):
        for i in range(n):
            s.replace(None, slot(i, i * 2, 1, hva=0x10000000 + i * 0x2000))
    costs = []
    for s in (small, big):
        before = s.cost["hva_tree_nodes"]
        hits = s.iter_hva_range(0x10000000 + 4 * 0x2000, 0x10000000 + 4 * 0x2000)
        costs.append(s.cost["hva_tree_nodes"] - before)
        assert len(hits) == 1
    assert costs[1] < 4 * costs[0] < 4 * 40              # 256x the slots, a few more nodes
