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
>>> ref612 = RefVM("6.12", address_spaces=1, max_gfn=0xfffff)
>>> ref612.call(1, 0, 0xfffff000, 0x2000, 0x100000), ref612.generations
((-22, 'CREATE'), [0])
"""

import errno

PAGE = 4096
USER_SLOTS, SLOTS_NUM, AS_NUM = 32764, 32767, 2
MAX_PAGES = (1 << 31) - 1
TASK_SIZE_MAX = (1 << 47) - PAGE
U64 = (1 << 64) - 1


GMEM = 4


class RefVM:
    """Per address space a dict id -> (base_gfn, npages, flags, hva); 6.12: guest_memfd bindings.

    ``kernel`` "5.15"/"5.17"/"6.12"; on 6.12 ``max_gfn`` bounds CREATE/MOVE
    at prepare and, with ``private_mem``, GUEST_MEMFD slots bind pages of
    guest_memfd files (``gmem``: fd -> size; ``bound``: (fd, page) -> slot id).
    """

    def __init__(self, kernel="5.17", address_spaces=AS_NUM, max_gfn=None, private_mem=False):
        self.kernel, self.n, self.max_gfn, self.private_mem = kernel, address_spaces, max_gfn, private_mem
        self.slots = [{} for _ in range(address_spaces)]
        self.generations = list(range(address_spaces))
        self.gmem, self.bound, self.binding = {}, {}, {}

    def _swaps(self, as_id, n):
        self.generations[as_id] += self.n * n

    def _flags_ok(self, flags, v2):
        if self.kernel != "6.12":
            return not flags & ~3
        if not v2 and flags & ~3:
            return False
        if flags & GMEM:
            return self.private_mem and not flags & ~GMEM
        return not flags & ~3

    def call(self, slot, flags, gpa, size, hva, fail=0, gmem=None):
        """Return ``(0 or -errno, change or None)`` and update the state.

        ``gmem`` = ``(fd, offset)`` makes it a KVM_SET_USER_MEMORY_REGION2 call (6.12).
        """
        as_id, id_ = slot >> 16, slot & 0xFFFF
        fd, offset = gmem or (0, 0)
        bad = (not self._flags_ok(flags, gmem is not None) or id_ >= USER_SLOTS or size % PAGE or gpa % PAGE
               or hva % PAGE or size > TASK_SIZE_MAX or hva > TASK_SIZE_MAX - size
               or (flags & GMEM and (offset % PAGE or offset + size > U64)) or as_id >= self.n
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
            self._unbind(as_id, id_)
            return 0, "DELETE"
        if old is not None:
            if flags & GMEM or hva != old[3] or npages != old[1] or (flags ^ old[2]) & (2 | GMEM):
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
        if flags & GMEM:
            pages = [(fd, offset // PAGE + k) for k in range(npages)]
            if fd not in self.gmem:
                return -errno.EBADF, None
            if offset + size > self.gmem[fd] or any(p in self.bound for p in pages):
                return -errno.EINVAL, None
        if not fail and self.max_gfn is not None and change in ("CREATE", "MOVE") \
                and gfn + npages - 1 > self.max_gfn:
            fail = errno.EINVAL
        if change == "MOVE":
            self._swaps(as_id, 2)
        elif not fail:
            self._swaps(as_id, 1)
        if fail:
            return -fail, change
        table[id_] = (gfn, npages, flags, hva)
        if flags & GMEM:
            self.binding[(as_id, id_)] = pages
            self.bound.update(dict.fromkeys(pages, id_))
        return 0, change

    def _unbind(self, as_id, id_):
        for page in self.binding.pop((as_id, id_), ()):
            del self.bound[page]

    def create_guest_memfd(self, size):
        """A guest_memfd file of ``size`` bytes; its fd (3, 4, ... like the model's)."""
        fd = 3 + len(self.gmem)
        self.gmem[fd] = size
        return fd

    def layout(self, as_id):
        """Sorted ``(id, base_gfn, npages, flags, hva)`` of an address space."""
        return sorted((i,) + v for i, v in self.slots[as_id].items())
