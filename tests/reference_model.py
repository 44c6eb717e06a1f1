"""A brute-force reference model of KVM_SET_USER_MEMORY_REGION's outcome.

Written independently of kvmviz's engine from reference §3.1 and §4: plain
dicts, linear scans, no trees, no steps. It predicts the errno, the final
slots and the generations; the property tests compare kvmviz against it.

>>> ref = RefVM()
>>> ref.call(1, 0, 0x1000, 0x1000, 0x100000)
(0, 'CREATE')
>>> ref.call(2, 0, 0x1000, 0x1000, 0x200000)
(-17, None)
>>> ref.generations
[2, 1]
"""

import errno

PAGE = 4096
USER_SLOTS, SLOTS_NUM, AS_NUM = 32764, 32767, 2
MAX_PAGES = (1 << 31) - 1
TASK_SIZE_MAX = (1 << 47) - PAGE
U64 = (1 << 64) - 1


class RefVM:
    """Per address space a dict id -> (base_gfn, npages, flags, hva)."""

    def __init__(self):
        self.slots = [{} for _ in range(AS_NUM)]
        self.generations = list(range(AS_NUM))

    def _swaps(self, as_id, n):
        self.generations[as_id] += AS_NUM * n

    def call(self, slot, flags, gpa, size, hva, fail=0):
        """Return ``(0 or -errno, change or None)`` and update the state."""
        as_id, id_ = slot >> 16, slot & 0xFFFF
        bad = (id_ >= USER_SLOTS or flags & ~3 or size % PAGE or gpa % PAGE or hva % PAGE
               or size > TASK_SIZE_MAX or hva > TASK_SIZE_MAX - size or as_id >= AS_NUM
               or gpa + size > U64 or size // PAGE > MAX_PAGES)
        if bad:
            return -errno.EINVAL, None
        table = self.slots[as_id]
        old = table.get(id_)
        gfn, npages = gpa // PAGE, size // PAGE
        if size == 0:
            if old is None:
                return -errno.EINVAL, None
            self._swaps(as_id, 2)
            if fail:
                return -fail, "DELETE"
            del table[id_]
            return 0, "DELETE"
        if old is not None:
            if hva != old[3] or npages != old[1] or (flags ^ old[2]) & 2:
                return -errno.EINVAL, None
            change = "MOVE" if gfn != old[0] else "FLAGS_ONLY" if flags != old[2] else "NONE"
            if change == "NONE":
                return 0, change
        else:
            change = "CREATE"
        if change in ("CREATE", "MOVE"):
            for other, (g, n, _, _) in table.items():
                if other != id_ and g < gfn + npages and gfn < g + n:
                    return -errno.EEXIST, None
        if change == "MOVE":
            self._swaps(as_id, 2)
        elif not fail:
            self._swaps(as_id, 1)
        if fail:
            return -fail, change
        table[id_] = (gfn, npages, flags, hva)
        return 0, change

    def layout(self, as_id):
        """Sorted ``(id, base_gfn, npages, flags, hva)`` of an address space."""
        return sorted((i,) + v for i, v in self.slots[as_id].items())
