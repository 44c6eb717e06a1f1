"""The lessons' exercises: questions and situations; the engine supplies the answers.

Keys are ``"LL.n"`` (lesson, number). Every right answer is computed by
``kvmviz.teach.exercises`` from a fresh run of the engine when it is checked; this
module only says which situation to build and what to look at.

>>> from kvmviz.teach.exercises import lesson
>>> [len(lesson(n)) >= 3 for n in (2, 3, 4, 5, 7)]
[True, True, True, True, True]
"""

import errno

from ..engine.constants import KVM_MEM_LOG_DIRTY_PAGES as LOG, KVM_MEM_READONLY as RO
from .answers import (HVA, ChooseErrno, PickStep, PredictState, SpotInvariant, situation, slot_in)
from ..engine.errors import KvmError

GIB = 1 << 30

#: A small PC-like layout: low RAM, RAM below 4 GiB, RAM above 4 GiB (reference §1.1).
PC = ((0, 0, 0x0, 0xA0000, HVA),
      (1, 0, 0x100000, GIB - 0x100000, HVA + 0x100000),
      (2, 0, 4 * GIB, GIB, HVA + GIB))

SLOT1 = (1, 0, 0x100000, 0x10000, HVA)                 # gfns 0x100..0x10f
SLOT1_LOG = (1, LOG, 0x100000, 0x10000, HVA)
SLOT2 = (2, 0, 0x200000, 0x10000, HVA + 0x10000)       # gfns 0x200..0x20f
MOVE1 = (1, 0, 0x400000, 0x10000, HVA)                 # slot 1 to gfn 0x400
DELETE1 = (1, 0, 0, 0, 0)


def _lookup(gfn, as_id=0):
    def probe(sit):
        slot = sit.vm.gfn_to_memslot(gfn, as_id)
        return slot.id if slot is not None else -1
    return probe


def _hva_of(gpa):
    def probe(sit):
        slot = sit.vm.gfn_to_memslot(gpa >> 12)
        return slot.userspace_addr + ((gpa >> 12) - slot.base_gfn << 12) + (gpa & 0xFFF)
    return probe


def _look_up(*gfns):
    def act(vm):
        for gfn in gfns:
            vm.gfn_to_memslot(gfn)
    return act


def _swaps(sit):
    return sum(s.function == "rcu_assign_pointer" for s in sit.steps)


def _both_hold(id):
    return lambda sit: all(s.id_to_memslot(id) is not None for s in sit.vm.sets[0])


def _sees(gfn, valid):
    def predicate(sit):
        slot = sit.vm.active_set(0).search_memslots(gfn)
        return slot is not None and slot.invalid != valid
    return predicate


def _rule_number(call):
    def probe(sit):
        try:
            sit.vm.set_user_memory_region(*call)
        except KvmError as e:
            return int(e.rule.split("#")[1]) if "#" in e.rule else 0
        return -1
    return probe


def _drop_from_active(vm):
    vm.active_set(0).replace(vm.memslots(0)[0], None)


def _grow_in_place(vm):
    vm.memslots(0)[0].npages += 0x10


def _reader_inside(vm):
    vm.add_vcpu().srcu_read_lock()


#: What ``Vcpu.access`` can report for a read (reference §2.3): a fault on an INVALID copy is retried.
REASONS = ("ok", "no-slot", "retry", "readonly")


def _access(gfn, fresh=False):
    def probe(sit):
        vcpu = sit.vm.vcpus[0]
        if fresh:
            vcpu = sit.vm.add_vcpu()
            vcpu.srcu_read_lock()
        return vcpu.access(gfn).reason
    return probe


def _notifier_running(vm):
    vm.mmu_notifier_invalidate_range_start(HVA, HVA + 0x1000)


L01 = (
    PredictState("01.1", "The VM has the PC layout (slots 0, 1, 2). Which slot id holds guest physical "
                 "address 0x12345678? (-1 for none)", situation(PC), _lookup(0x12345), advance=0,
                 hint="gfn = gpa >> 12; find the slot with base_gfn <= gfn < base_gfn + npages (reference §5.1)."),
    PredictState("01.2", "Same VM. Which host virtual address backs guest physical address 0x100003abc?",
                 situation(PC), _hva_of(0x100003ABC), advance=0,
                 hint="hva = userspace_addr + (gfn - base_gfn) * 4096 + the offset in the page."),
    PredictState("01.3", "Same VM, fresh: look up gfn 0x50, then gfn 0x100020. Which object is the "
                 "active set's last_used_slot now?", situation(PC, before=_look_up(0x50, 0x100020)),
                 lambda sit: sit.vm.active_set(0).last_used_slot.label, "label", advance=0,
                 hint="Every successful tree search caches its result (reference §5.1)."),
    PredictState("01.4", "On a fresh VM, create slot 0 of address space 1 (SMM): slot = 1 << 16. "
                 "What is the generation of as1 afterwards?", situation([((1 << 16), 0, 0, 0x1000, HVA)]),
                 lambda sit: sit.vm.generation(1), "generation", advance=0),
)

L02 = (
    PredictState("02.1", "CREATE slot 1 on a fresh VM. The writer has just marked the inactive set in "
                 "progress. After the next step, which set of as0 is active?",
                 situation(begin=SLOT1, run=("kvm_swap_active_memslots", 1)),
                 lambda sit: sit.vm.active_idx[0], "set"),
    PredictState("02.2", "Same moment. After the next step, what generation does a new reader of as0 see?",
                 situation(begin=SLOT1, run=("kvm_swap_active_memslots", 1)),
                 lambda sit: sit.vm.generation(0), "generation"),
    PredictState("02.3", "Let that CREATE finish. What generation does the set that is now inactive "
                 "still carry?", situation(begin=SLOT1), lambda sit: sit.vm.inactive_set(0).generation,
                 "generation", advance="end",
                 hint="Only the active set's generation is kept up to date (reference §3.1)."),
    PredictState("02.4", "A fresh VM, then three CREATEs (slots 1, 2, 3). What is the generation of as0?",
                 situation([SLOT1, SLOT2, (3, 0, 0x300000, 0x1000, HVA + 0x20000)]),
                 lambda sit: sit.vm.generation(0), "generation", advance=0),
    PickStep("02.5", "CREATE slot 1 on a fresh VM. At which step do both sets of as0 hold the new slot?",
             situation(begin=SLOT1), _both_hold(1),
             hint="The set that was active during the swap is caught up last (kvm_activate_memslot)."),
    SpotInvariant("02.6", "After a CREATE, a buggy helper removes slot 1 from the ACTIVE set directly, "
                  "outside any update. Which invariant breaks?", situation([SLOT1], before=_drop_from_active)),
)

L03 = (
    PredictState("03.1", "Slot 1 exists (#1). FLAGS_ONLY turns LOG_DIRTY_PAGES on; prepare has just "
                 "finished. After the next step, which object does the INACTIVE set hold for slot 1?",
                 situation([SLOT1], begin=SLOT1_LOG, run=("kvm_arch_prepare_memory_region", 1)),
                 slot_in("inactive"), "label"),
    PredictState("03.2", "Same update, same moment. After the next step, which object does the ACTIVE set "
                 "hold for slot 1?", situation([SLOT1], begin=SLOT1_LOG, run=("kvm_arch_prepare_memory_region", 1)),
                 slot_in("active"), "label", hint="Readers must never see a half-edited set."),
    PickStep("03.3", "Slot 1 logs dirty pages. FLAGS_ONLY turns logging off. At which step is its dirty "
             "bitmap freed?", situation([SLOT1_LOG], begin=SLOT1),
             lambda sit: sit.old.dirty_bitmap.freed,
             hint="The bitmap may only go once no reader can reach the old slot (reference §2.4)."),
    PredictState("03.4", "How many swaps (pointer publications) does that FLAGS_ONLY perform?",
                 situation([SLOT1_LOG], begin=SLOT1), _swaps, advance="end",
                 hint="Each rcu_assign_pointer step publishes one set; count them (reference §2.2)."),
    ChooseErrno("03.5", "Slot 1 exists, read-write. Userspace calls again with the same values plus "
                "KVM_MEM_READONLY. What does the ioctl return?", situation([SLOT1]),
                call=(1, RO, 0x100000, 0x10000, HVA)),
)

L04 = (
    PickStep("04.1", "DELETE slot 1 (gfns 0x100..0x10f). At which step does a lookup of gfn 0x100 in the "
             "active set first find an INVALID slot?", situation([SLOT1], begin=DELETE1), _sees(0x100, False)),
    PredictState("04.2", "MOVE slot 1 (#1) to gfn 0x400. Swap #1 is about to store its final generation. "
                 "After that step, which object does the INACTIVE set hold for slot 1?",
                 situation([SLOT1], begin=MOVE1, run=("kvm_arch_memslots_updated", 1)),
                 slot_in("inactive"), "label"),
    PredictState("04.3", "Slot 1 was just created (generation 0x2). MOVE it to gfn 0x400. What is the "
                 "generation of as0 when the ioctl returns?", situation([SLOT1], begin=MOVE1),
                 lambda sit: sit.vm.generation(0), "generation", advance="end"),
    PredictState("04.4", "How many times does x86 zap all shadow pages during one DELETE?",
                 situation([SLOT1], begin=DELETE1), lambda sit: sit.vm.arch.zap_all_count, advance="end",
                 hint="Look for kvm_arch_flush_shadow_memslot (reference §2.1, 5.17 x86)."),
    ChooseErrno("04.5", "Slots 1 (gfns 0x100..0x10f) and 2 (gfns 0x200..0x20f) exist. MOVE slot 1 to gpa "
                "0x1f8000. What does the ioctl return?", situation([SLOT1, SLOT2]),
                call=(1, 0, 0x1F8000, 0x10000, HVA)),
    ChooseErrno("04.6", "Same slots. MOVE slot 1 to gpa 0x108000, overlapping its own old range. "
                "What does the ioctl return?", situation([SLOT1, SLOT2]),
                call=(1, 0, 0x108000, 0x10000, HVA)),
)

L05 = (
    PredictState("05.1", "Slot 1 exists (generation 0x2). DELETE it, and prepare fails. What is the "
                 "generation of as0 afterwards?", situation([SLOT1], begin=DELETE1, fail_prepare=True),
                 lambda sit: sit.vm.generation(0), "generation", advance="end"),
    PredictState("05.2", "Same VM. CREATE slot 2, and prepare fails. What is the generation of as0 "
                 "afterwards?", situation([SLOT1], begin=SLOT2, fail_prepare=True),
                 lambda sit: sit.vm.generation(0), "generation", advance="end"),
    PickStep("05.3", "MOVE slot 1 with a failing prepare. At which step does a lookup of gfn 0x100 find a "
             "valid (not INVALID) slot again?", situation([SLOT1], begin=MOVE1, fail_prepare=True),
             _sees(0x100, True), hint="The revert is a swap: the pointer moves back."),
    PredictState("05.4", "After that failed MOVE returns, which object does the active set hold for slot 1?",
                 situation([SLOT1], begin=MOVE1, fail_prepare=True), slot_in("active"), "label",
                 advance="end"),
    ChooseErrno("05.5", "Slot 1 exists. DELETE it while kvm_arch_prepare_memory_region fails with ENOMEM "
                "(injected). What does the ioctl return?", situation([SLOT1]), call=DELETE1,
                fail_prepare=True),
)

L06 = (
    PickStep("06.1", "vcpu0 entered an SRCU read-side section before the CREATE of slot 1 began. At which "
             "step does the writer first have to wait?", situation(before=_reader_inside, begin=SLOT1),
             lambda sit: bool(sit.upd.blocked)),
    PickStep("06.2", "An MMU-notifier invalidation is running (invalidate_range_start was called, not yet "
             "end) when the CREATE of slot 1 begins. At which step does the writer first have to wait?",
             situation(before=_notifier_running, begin=SLOT1), lambda sit: bool(sit.upd.blocked)),
    PredictState("06.3", "In 06.1, while the writer waits for vcpu0, which set of as0 is active?",
                 situation(before=_reader_inside, begin=SLOT1, run=("synchronize_srcu_expedited", 1)),
                 lambda sit: sit.vm.active_idx[0], "set", advance=0,
                 hint="The grace period starts after the pointer is published (reference §3.4)."),
    PredictState("06.4", "Same moment. What generation does a reader that enters now see?",
                 situation(before=_reader_inside, begin=SLOT1, run=("synchronize_srcu_expedited", 1)),
                 lambda sit: sit.vm.generation(0), "generation", advance=0),
    PredictState("06.5", "Slot 1 exists; vcpu0 entered SRCU, then a DELETE of slot 1 began. The writer now waits "
                 "for vcpu0 after swap #1. vcpu0 reads gfn 0x100: what is the outcome?",
                 situation([SLOT1], before=_reader_inside, begin=DELETE1, run=("synchronize_srcu_expedited", 1)),
                 _access(0x100), "choice", advance=0, choices=REASONS,
                 hint="vcpu0 still uses the set it loaded at srcu_read_lock (reference §2.3, §3.4)."),
    PredictState("06.6", "Same moment. A new vCPU enters SRCU now and reads gfn 0x100: what is the outcome?",
                 situation([SLOT1], before=_reader_inside, begin=DELETE1, run=("synchronize_srcu_expedited", 1)),
                 _access(0x100, fresh=True), "choice", advance=0, choices=REASONS,
                 hint="A reader that enters after the publish sees the newly published set, which holds the "
                      "INVALID copy; what does the x86 fault path do with it (reference §2.3)?"),
)

L07 = (
    ChooseErrno("07.1", "Fresh VM: slot id 32764 (the first x86 internal slot), 2 MiB at gpa 0.",
                situation(), call=(32764, 0, 0, 0x200000, HVA)),
    ChooseErrno("07.2", "Fresh VM: slot 1 with memory_size 0x1800.", situation(), call=(1, 0, 0, 0x1800, HVA)),
    ChooseErrno("07.3", "Fresh VM: slot 1 in address space 2 (slot = 2 << 16 | 1).", situation(),
                call=((2 << 16) | 1, 0, 0, 0x1000, HVA)),
    ChooseErrno("07.4", "Slot 1 exists at gfns 0x100..0x10f. CREATE slot 2 at gpa 0x10f000, one page.",
                situation([SLOT1]), call=(2, 0, 0x10F000, 0x1000, HVA + 0x10000)),
    ChooseErrno("07.5", "Fresh VM: DELETE slot 5, which does not exist.", situation(), call=(5, 0, 0, 0, 0)),
    ChooseErrno("07.6", "Slot 1 exists. Call again with exactly the same values.", situation([SLOT1]),
                call=SLOT1),
    ChooseErrno("07.7", "Slot 1 exists with 16 pages. Call again with 32 pages, same gpa and hva.",
                situation([SLOT1]), call=(1, 0, 0x100000, 0x20000, HVA)),
    ChooseErrno("07.8", "Fresh VM: slot 1 whose userspace_addr is 0x800000000000 (the first non-canonical address with "
                "4-level paging; the kernel half starts at 0xffff800000000000).",
                situation(), call=(1, 0, 0, 0x1000, 0x800000000000)),
    PredictState("07.9", "Fresh 5.17 VM: flags = 0x4 AND guest_phys_addr = 0x1001. Which numbered check of "
                 "reference §4.2 refuses the call?", situation(kernel="5.17"),
                 _rule_number((1, 4, 0x1001, 0x1000, HVA)), advance=0,
                 hint="The checks run in the order of the table; the first one that fails wins. (On 6.12 the "
                      "v1 ioctl refuses bit 2, GUEST_MEMFD, even before check 1: reference §4.5.)"),
)

#: 100 one-page slots, 1 MiB apart in gpa and hva.
HUNDRED = tuple((i, 0, i << 20, 0x1000, HVA + (i << 20)) for i in range(100))
ABC = ((1, 0, 0x100000 << 12, 0x10000, HVA + (1 << 20)), (2, 0, 0xC0000 << 12, 0x10000, HVA + (2 << 20)),
       (3, 0, 0x0, 0x10000, HVA + (3 << 20)))


def _cost(counter):
    return lambda sit: sum(s.cost.get(counter, 0) for s in sit.steps)


def _array_index(id):
    return lambda sit: [e.id for e in sit.vm.active_set(0).entries()].index(id)


L08 = (
    PredictState("08.1", "Array model (5.15). Slots A (gfn 0x100000), B (0xc0000) and C (0x0) exist; CREATE "
                 "slot 4 at gfn 0x80000. At which array index (0 = first) does it land?",
                 situation(ABC, begin=(4, 0, 0x80000 << 12, 0x10000, HVA + (4 << 20)), implementation="array"),
                 _array_index(4), advance="end",
                 hint="The array is sorted by base_gfn, highest first (reference §6.1, §6.2)."),
    PredictState("08.2", "Array model: slot 1 was just created (generation 0x2). MOVE it to gfn 0x400. What is "
                 "the generation of as0 afterwards?",
                 situation([SLOT1], begin=MOVE1, implementation="array"),
                 lambda sit: sit.vm.generation(0), "generation", advance="end"),
    PredictState("08.3", "Array model with 100 slots. How many slot values does one DELETE copy, counting "
                 "every copy?", situation(HUNDRED, begin=(50, 0, 0, 0, 0), implementation="array"),
                 _cost("slots_copied"), advance="end",
                 hint="Count kvm_dup_memslots, the copy after swap #1, and the value copy of old (§6.3)."),
    PredictState("08.4", "Tree model with 100 slots. How many slot structs does one MOVE allocate?",
                 situation(HUNDRED, begin=(60, 0, 0x7000000000, 0x1000, HVA + (60 << 20))),
                 _cost("slots_allocated"), advance="end",
                 hint="Who allocates new, and what else does a MOVE need (reference §2.4)?"),
)

L09 = (
    SpotInvariant("09.1", "Variant no-catch-up: kvm_activate_memslot swaps but skips the second replace. "
                  "Run a CREATE of slot 1: which invariant breaks first?", situation(begin=SLOT1, variant="no-catch-up")),
    SpotInvariant("09.2", "Variant invalid-in-place: DELETE also sets KVM_MEMSLOT_INVALID on the live slot. "
                  "Which invariant breaks first?", situation([SLOT1], begin=DELETE1, variant="invalid-in-place")),
    SpotInvariant("09.3", "Variant gen-before-publish: the swap stores old + 2 before publishing instead of "
                  "the in-progress mark. Which invariant breaks first on a CREATE?",
                  situation(begin=SLOT1, variant="gen-before-publish")),
    SpotInvariant("09.4", "Variant no-srcu-wait, with vcpu0 inside SRCU since before the CREATE of slot 1. "
                  "Which invariant breaks first?",
                  situation(before=_reader_inside, begin=SLOT1, variant="no-srcu-wait")),
    SpotInvariant("09.5", "The seed proposal exactly as posted (variant seed-as-posted). Run a CREATE of slot "
                  "1: which invariant does the checker report once the update stops?",
                  situation(begin=SLOT1, variant="seed-as-posted"),
                  hint="Look at the last step of the run: which function ran, and which did not?"),
    PredictState("09.6", "Variant seed (the 27 Oct 2021 proposal read as intended): slot 1 (#1) exists; MOVE "
                 "it to gfn 0x400. Which object holds slot 1 afterwards?",
                 situation([SLOT1], begin=MOVE1, variant="seed"), slot_in("active"), "label", advance="end",
                 hint="The proposal reuses one of the existing objects for MOVE (reference §7.2)."),
    PredictState("09.7", "Same MOVE with the seed variant: how many slot structs does it allocate?",
                 situation([SLOT1], begin=MOVE1, variant="seed"), _cost("slots_allocated"), advance="end",
                 hint="One spare slot is allocated up front for every change type (reference §7.2)."),
)

def _trace(name, read):
    """A probe that replays the shipped QEMU trace ``name`` and reads the report."""
    def probe(sit):
        from .. import trace
        return read(trace.replay(trace.load(name), keep_steps=False))
    return probe


def _gen_moves(first, last, as_id=0):
    return lambda r: r.call(last).gens_after[as_id] - r.call(first).gens_before[as_id]


CHANGE_NAMES = ("create", "delete", "move", "flags_only", "none")
ERRNO_NAMES = ("0", "einval", "eexist", "eio", "enomem")

L10 = (
    PredictState("10.1", "The SMM boot trace (qemu-boot-smm.log), call 4: `Slot#0 flags=0x0 gpa=0x0 size=0x0`. "
                 "Which change does the model classify it as?", situation(),
                 _trace("qemu-boot-smm.log", lambda r: r.call(4).change.lower()), "choice", advance=0,
                 choices=CHANGE_NAMES, hint="Look at memory_size (reference §4.3)."),
    PredictState("10.2", "Same trace: calls 4 and 5 shrink slot 0 from 3 GiB to 768 KiB. By how much does the "
                 "generation of as0 move across those two calls?", situation(),
                 _trace("qemu-boot-smm.log", _gen_moves(4, 5)), advance=0,
                 hint="A slot cannot be resized in place: count the swaps of each call (reference §3.1)."),
    PredictState("10.3", "The generated large-VM trace (large-vm-generated.log): which change type is the "
                 "most frequent?", situation(),
                 _trace("large-vm-generated.log", lambda r: max(("CREATE", "DELETE", "MOVE", "FLAGS_ONLY"),
                                                                key=r.counts.get).lower()),
                 "choice", advance=0, choices=CHANGE_NAMES[:4],
                 hint="What does live migration do to every slot, twice?"),
    PredictState("10.4", "The VGA dirty-log trace (qemu-vga-dirty-log.log) starts mid-run: its first call "
                 "deletes a slot the log never created. What would the model return for it?", situation(),
                 _trace("qemu-vga-dirty-log.log",
                        lambda r: _errname(r.mismatches[0].modelled) if r.mismatches else "0"),
                 "choice", advance=0, choices=ERRNO_NAMES,
                 hint="Deleting a slot id that does not exist is reference §4.2 check 10."),
)


def _errname(r):
    return errno.errorcode[-r].lower() if r else "0"


CATALOGUE = L01 + L02 + L03 + L04 + L05 + L06 + L07 + L08 + L09 + L10
