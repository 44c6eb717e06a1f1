"""The 5.15 array model's fast representation gives what the kernel's one-by-one loops give.

Immutable slot values copied by slice, shifts found by binary search and
moved as one slice, the hva walk answered by ``HvaIndex``: each is checked
against a plain transcription of the kernel's loop (reference §6.2, §5.3),
including the work it must count.
"""

from hypothesis import given, settings, strategies as st

from kvmviz.engine.array.memslots import (BASE, FLAGS, HVA, ID, NPAGES, ArrayMemslots, GfnColumns, HvaIndex,
                                          new_entry)


def loop_update(slots, index, new, change):
    """``update_memslots`` as the kernel loops: one entry shifted (and re-indexed) at a time."""
    slots, index = [list(e) for e in slots], list(index)
    if change == "DELETE":
        i = index[new[ID]]
        for j in range(i, len(slots) - 1):
            slots[j] = slots[j + 1]
            index[slots[j][ID]] = j
        slots.pop()
        index[new[ID]] = -1
        return slots, index, len(slots) - i
    if change == "CREATE":
        i = start = len(slots)
        slots.append(None)
    else:
        i = start = index[new[ID]]
        while i < len(slots) - 1 and new[BASE] <= slots[i + 1][BASE]:
            slots[i] = slots[i + 1]
            index[slots[i][ID]] = i
            i += 1
    end = i
    while i > 0 and new[BASE] >= slots[i - 1][BASE]:
        slots[i] = slots[i - 1]
        index[slots[i][ID]] = i
        i -= 1
    slots[i] = list(new)
    index[new[ID]] = i
    return slots, index, end - start + end - i


# distinct slots of 1-3 pages 4 pages apart, then a sequence of changes
layouts = st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True)
changes = st.lists(st.tuples(st.sampled_from(["MOVE", "DELETE", "CREATE", "FLAGS_ONLY"]),
                             st.integers(0, 11), st.integers(0, 60)), max_size=8)


def overlaps(slots, id, gfn, npages):
    return any(e[BASE] < gfn + npages and gfn < e[BASE] + e[NPAGES] for e in slots if e[ID] != id)


@settings(max_examples=300, deadline=None)
@given(layouts, changes)
def test_slice_shifts_equal_the_kernels_loop(gfns, script):
    s = ArrayMemslots()
    for i, k in enumerate(gfns):
        s.update_memslots(new_entry(uid=i, id=i, base_gfn=4 * k, npages=1 + k % 3), "CREATE")
    for change, id, k in script:
        present = s.id_to_index[id] >= 0
        old = s.memslots[s.id_to_index[id]] if present else None
        npages = old[NPAGES] if present else 1 + k % 3
        gfn = 4 * k if change in ("CREATE", "MOVE") else old and old[BASE]
        if (change == "CREATE") == present or overlaps(s.memslots, id, gfn, npages):
            continue                     # not a call validation would let through
        new = new_entry(uid=99, id=id, base_gfn=gfn, npages=npages, flags=1 if change == "FLAGS_ONLY" else 0)
        want_slots, want_index, want_shifted = loop_update(s.memslots, s.id_to_index, new, change)
        shifted_before = s.cost["entries_shifted"]
        s.update_memslots(new, change)
        assert [list(e) for e in s.memslots] == want_slots
        assert list(s.id_to_index[:16]) == want_index[:16]
        assert s.cost["entries_shifted"] - shifted_before == want_shifted
        kept, fresh = s._columns, GfnColumns(s.memslots)     # kept in step with the records, not rebuilt
        assert kept.entries == s.memslots
        assert (kept.bases, kept.ends, kept.ids) == (fresh.bases, fresh.ends, fresh.ids)


hva_slots = st.lists(st.tuples(st.integers(0, 30), st.integers(1, 4)), max_size=10)


@settings(max_examples=300, deadline=None)
@given(hva_slots, st.integers(0, 40), st.integers(0, 8))
def test_hva_index_finds_what_a_linear_walk_finds(slots, start_page, length):
    """Overlapping and aliased hva ranges (allowed between slots) included."""
    entries = [new_entry(id=i, base_gfn=100 * i, npages=n, userspace_addr=page << 12)
               for i, (page, n) in enumerate(slots)]
    start, last = start_page << 12, ((start_page + length) << 12) - 1 + (length == 0)
    linear = [i for i, e in enumerate(entries) if e[HVA] <= last and start < e[HVA] + (e[NPAGES] << 12)]
    assert HvaIndex(entries).hits(start, last) == linear


def test_hva_walk_counts_every_entry_and_notices_a_changed_array():
    s = ArrayMemslots()
    for i in range(4):
        s.update_memslots(new_entry(uid=i, id=i, base_gfn=0x10 * i, npages=1, userspace_addr=0x1000 * i), "CREATE")
    assert [v.id for v in s.iter_hva_range(0x2000, 0x2fff)] == [2]
    s.memslots[0], s.memslots[1] = s.memslots[1], s.memslots[0]       # a change behind the structure's back
    s.memslots[2] = s.memslots[2][:HVA] + [0x2000] + s.memslots[2][HVA + 1:]
    assert sorted(v.id for v in s.iter_hva_range(0x2000, 0x2fff)) == [1, 2]
    assert s.cost["array_entries_scanned"] == 8


def test_a_copy_shares_the_records_and_edits_never_reach_the_original():
    s = ArrayMemslots()
    s.update_memslots(new_entry(uid=1, id=1, base_gfn=0x10, npages=1), "CREATE")
    dup = s.kvm_dup_memslots(seq=2, change="FLAGS_ONLY")
    dup.set_flags(1, 0x10000)
    assert s.memslots[0][FLAGS] == 0 and dup.memslots[0][FLAGS] == 0x10000
    assert dup.cost["slots_copied"] == 1


def test_columns_that_missed_a_change_are_rebuilt():
    s = ArrayMemslots()
    for i in range(3):
        s.update_memslots(new_entry(uid=i, id=i, base_gfn=0x10 * i, npages=1), "CREATE")
    s.memslots[0] = new_entry(uid=7, id=2, base_gfn=0x40, npages=1)      # behind the structure's back
    assert [v.id for v in s.iter_gfn_range(0x40, 0x41)] == [2]
    assert list(s.columns().bases) == [0x40, 0x10, 0x0]
