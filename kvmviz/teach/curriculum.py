"""The lessons' exercises: questions and situations; the engine supplies the answers.

Keys are ``"LL.n"`` (lesson, number). Every right answer is computed by
``kvmviz.teach.exercises`` from a fresh run of the engine when it is checked; this
module only says which situation to build and what to look at.

>>> from kvmviz.teach.exercises import lesson
>>> [len(lesson(n)) >= 3 for n in (2, 3, 4, 5, 7)]
[True, True, True, True, True]
"""

from functools import lru_cache

from ..engine.constants import KVM_MEM_LOG_DIRTY_PAGES as LOG, KVM_MEM_READONLY as RO
from .answers import HVA, ChooseErrno, PickStep, PredictState, SpotInvariant, situation, slot_in
from ..engine.errors import KvmError
from ..engine.fmt import gen_text, result_text

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


#: What ``Vcpu.access`` can report for a read (reference §2.3): a fault on an INVALID copy is retried.
REASONS = ("ok", "no-slot", "retry", "readonly")


def _access(gfn, fresh=False):
    def probe(sit):
        if fresh:
            vcpu = sit.vm.add_vcpu()
            vcpu.srcu_read_lock()
        else:
            vcpu = sit.vm.vcpus[0]
        return vcpu.access(gfn).reason
    return probe


#: A vCPU inside its SRCU read section since before the update.
READER_INSIDE = "vcpu 0 lock"
#: An MMU-notifier invalidation of the first page of ``HVA`` in progress.
NOTIFIER_RUNNING = f"mn start {HVA:#x} {HVA + 0x1000:#x}"


def _slot_of(gfn):
    def show(sit):
        slot = sit.vm.gfn_to_memslot(gfn)
        return [f"gfn {gfn:#x}: {slot}"]
    return show


def _generations(*as_ids):
    return lambda sit: [f"as{a}: {[s.label for s in sit.vm.memslots(a)]}, generation "
                        f"{gen_text(sit.vm.generation(a))}" for a in as_ids]


def _steps_of(function):
    """Evidence: the numbered steps of the run that model ``function``."""
    return lambda sit: [f"{i:2d} {s}" for i, s in enumerate(sit.steps, 1) if s.function == function]


L01 = (
    PredictState("01.1", "The VM has the PC layout (slots 0, 1, 2). Which slot id holds guest physical "
                 "address 0x12345678? (-1 for none)", situation(PC), _lookup(0x12345), advance=0,
                 hint="gfn = gpa >> 12; find the slot with base_gfn <= gfn < base_gfn + npages (reference §5.1).",
                 explain="gfn 0x12345 lies in slot 1, which covers gfns 0x100..0x3ffff (1 MiB to 1 GiB).",
                 show=_slot_of(0x12345)),
    PredictState("01.2", "Same VM. Which host virtual address backs guest physical address 0x100003abc?",
                 situation(PC), _hva_of(0x100003ABC), "address", advance=0,
                 hint="hva = userspace_addr + (gfn - base_gfn) * 4096 + the offset in the page.",
                 explain="gfn 0x100003 is page 3 of slot 2 (base gfn 0x100000, hva HVA + 1 GiB): "
                         "0x7f0040000000 + 3 * 0x1000 + 0xabc.", show=_slot_of(0x100003)),
    PredictState("01.3", "Same VM, fresh: look up gfn 0x50, then gfn 0x100020. Which object is the "
                 "active set's last_used_slot now?", situation(PC, before=_look_up(0x50, 0x100020)),
                 lambda sit: sit.vm.active_set(0).last_used_slot.label, "label", advance=0,
                 hint="Every successful tree search caches its result (reference §5.1).",
                 explain="each successful lookup caches the slot it found; the last one found slot 2, "
                         "the object #3.", show=_slot_of(0x100020)),
    PredictState("01.4", "On a fresh VM, create slot 0 of address space 1 (SMM): slot = 1 << 16. "
                 "What is the generation of as1 afterwards?", situation([((1 << 16), 0, 0, 0x1000, HVA)]),
                 lambda sit: sit.vm.generation(1), "generation", advance=0,
                 explain="as1 starts at 1 and one swap adds 2 (the number of address spaces): 0x3. "
                         "as0 did not move.", show=_generations(0, 1)),
)

L02 = (
    PredictState("02.1", "CREATE slot 1 on a fresh VM. The writer has just marked the inactive set in "
                 "progress. After the next step, which set of as0 is active?",
                 situation(begin=SLOT1, run=("kvm_swap_active_memslots", 1)),
                 lambda sit: sit.vm.active_idx[0], "set",
                 explain="the next step is rcu_assign_pointer: it publishes the inactive set, set1, which "
                         "already holds the new slot."),
    PredictState("02.2", "Same moment. After the next step, what generation does a new reader of as0 see?",
                 situation(begin=SLOT1, run=("kvm_swap_active_memslots", 1)),
                 lambda sit: sit.vm.generation(0), "generation",
                 explain="set1 is published with the old generation plus bit 63 (in progress); the final "
                         "0x2 is stored only after the grace period."),
    PickStep("02.3", "CREATE slot 1 on a fresh VM. At which step do both sets of as0 hold the new slot?",
             situation(begin=SLOT1), _both_hold(1),
             hint="The set that was active during the swap is caught up last (kvm_activate_memslot).",
             explain="kvm_activate_memslot repeats the insert on set0 right after the swap made it inactive."),
    PredictState("02.4", "Let that CREATE finish. What generation does the set that is now inactive "
                 "still carry?", situation(begin=SLOT1), lambda sit: sit.vm.inactive_set(0).generation,
                 "generation", advance="end",
                 hint="Only the active set's generation is kept up to date (reference §3.1).",
                 explain="only the set being published gets a new generation; set0 keeps its stale 0x0 "
                         "until the next swap publishes it.",
                 show=lambda sit: [f"set{s.node_idx}: generation {gen_text(s.generation)}"
                                   for s in sit.vm.sets[0]]),
    PredictState("02.5", "A fresh VM, then three CREATEs (slots 1, 2, 3). What is the generation of as0?",
                 situation([SLOT1, SLOT2, (3, 0, 0x300000, 0x1000, HVA + 0x20000)]),
                 lambda sit: sit.vm.generation(0), "generation", advance=0,
                 explain="three CREATEs, one swap each, +2 per swap: 0 + 3 * 2 = 0x6.", show=_generations(0)),
    PickStep("02.6", "CREATE slot 1 on a fresh VM. At which step is slots_arch_lock released?",
             situation(begin=SLOT1), lambda sit: "slots_arch_lock" not in sit.vm.locks,
             hint="It is released inside the swap, before the wait for readers (reference §1.5).",
             explain="kvm_swap_active_memslots drops slots_arch_lock (and mn_invalidate_lock) right after "
                     "the publish, before synchronize_srcu_expedited: a reader may need it to finish."),
    SpotInvariant("02.7", "After a CREATE, a buggy helper removes slot 1 from the ACTIVE set directly, "
                  "outside any update. Which invariant breaks?", situation([SLOT1], before=_drop_from_active),
                  explain="outside an update both sets must hold the same objects; set1 lost slot 1, set0 "
                          "still has it."),
)

L03 = (
    PredictState("03.1", "Slot 1 exists (#1). FLAGS_ONLY turns LOG_DIRTY_PAGES on; prepare has just "
                 "finished. After the next step, which object does the INACTIVE set hold for slot 1?",
                 situation([SLOT1], begin=SLOT1_LOG, run=("kvm_arch_prepare_memory_region", 1)),
                 slot_in("inactive"), "label",
                 explain="kvm_update_flags_memslot replaces #1 by the new object #2 in the inactive set."),
    PredictState("03.2", "Same update, same moment. After the next step, which object does the ACTIVE set "
                 "hold for slot 1?", situation([SLOT1], begin=SLOT1_LOG, run=("kvm_arch_prepare_memory_region", 1)),
                 slot_in("active"), "label", hint="Readers must never see a half-edited set.",
                 explain="the active set is not touched until the swap: readers still find #1."),
    PickStep("03.3", "Slot 1 logs dirty pages. FLAGS_ONLY turns logging off. At which step is its dirty "
             "bitmap freed?", situation([SLOT1_LOG], begin=SLOT1),
             lambda sit: sit.old.dirty_bitmap.freed,
             hint="The bitmap may only go once no reader can reach the old slot (reference §2.4).",
             explain="commit frees the old slot and its bitmap, after the swap's grace period: no reader can "
                     "reach #1 any more."),
    PredictState("03.4", "How many swaps (pointer publications) does that FLAGS_ONLY perform?",
                 situation([SLOT1_LOG], begin=SLOT1), _swaps, advance="end",
                 hint="Each rcu_assign_pointer step publishes one set; count them (reference §2.2).",
                 explain="FLAGS_ONLY, like CREATE, swaps once: nothing has to disappear from the readers' "
                         "view first.",
                 show=_steps_of("rcu_assign_pointer")),
    ChooseErrno("03.5", "Slot 1 exists, read-write. Userspace calls again with the same values plus "
                "KVM_MEM_READONLY. What does the ioctl return?", situation([SLOT1]),
                call=(1, RO, 0x100000, 0x10000, HVA)),
)

L04 = (
    PickStep("04.1", "DELETE slot 1 (gfns 0x100..0x10f). At which step does a lookup of gfn 0x100 in the "
             "active set first find an INVALID slot?", situation([SLOT1], begin=DELETE1), _sees(0x100, False),
             explain="swap #1's rcu_assign_pointer publishes the set that holds the INVALID copy."),
    PredictState("04.2", "Same DELETE, stopped right after swap #1's publish. A vCPU enters SRCU now and its "
                 "guest reads gfn 0x100: what does the x86 fault path do (Linux 5.13 and later)?",
                 situation([SLOT1], begin=DELETE1, run=("rcu_assign_pointer", 1)),
                 _access(0x100, fresh=True), "choice", advance=0, choices=REASONS,
                 hint="The lookup finds the INVALID copy. Since 5.13 (e0c378684b65) KVM does not treat it as "
                      "MMIO any more (reference §2.3).",
                 explain="the fault finds the INVALID copy and returns RET_PF_RETRY: the vCPU re-enters the "
                         "guest and faults again until swap #2; no exit, no MMIO SPTE.",
                 show=lambda sit: [str(sit.vm.vcpus[-1].access(0x100))]),
    PredictState("04.3", "How many times does x86 zap all shadow pages during one DELETE?",
                 situation([SLOT1], begin=DELETE1), lambda sit: sit.vm.arch.zap_all_count, advance="end",
                 hint="Look for kvm_arch_flush_shadow_memslot (reference §2.1, x86).",
                 explain="one kvm_arch_flush_shadow_memslot between the swaps; with KVM_X86_QUIRK_SLOT_ZAP_ALL "
                         "(the default) it zaps every shadow page.",
                 show=_steps_of("kvm_arch_flush_shadow_memslot")),
    PredictState("04.4", "MOVE slot 1 (#1) to gfn 0x400. Swap #1 is about to store its final generation. "
                 "After that step, which object does the INACTIVE set hold for slot 1?",
                 situation([SLOT1], begin=MOVE1, run=("kvm_arch_memslots_updated", 1)),
                 slot_in("inactive"), "label",
                 explain="swap #1 published the set with the INVALID copy; the other set, now inactive, still "
                         "holds the original #1 (until kvm_move_memslot replaces it)."),
    PredictState("04.5", "Slot 1 was just created (generation 0x2). MOVE it to gfn 0x400. What is the "
                 "generation of as0 when the ioctl returns?", situation([SLOT1], begin=MOVE1),
                 lambda sit: sit.vm.generation(0), "generation", advance="end",
                 explain="a MOVE swaps twice (INVALID copy, then the moved slot): 0x2 + 2 * 2 = 0x6."),
    ChooseErrno("04.6", "Slots 1 (gfns 0x100..0x10f) and 2 (gfns 0x200..0x20f) exist. MOVE slot 1 to gpa "
                "0x1f8000. What does the ioctl return?", situation([SLOT1, SLOT2]),
                call=(1, 0, 0x1F8000, 0x10000, HVA)),
    ChooseErrno("04.7", "Same slots. MOVE slot 1 to gpa 0x108000, overlapping its own old range. "
                "What does the ioctl return?", situation([SLOT1, SLOT2]),
                call=(1, 0, 0x108000, 0x10000, HVA),
                explain="the overlap check skips the slot being moved, and gfns 0x108..0x117 meet no other slot."),
)

#: A gpa just past the model's default max gfn (2**40 - 1: 52 physical address bits, shadow paging).
BEYOND_MAX_GFN = 1 << 52

L05 = (
    PredictState("05.1", "Slot 1 exists (generation 0x2). CREATE slot 2, and prepare fails. What is the "
                 "generation of as0 afterwards?", situation([SLOT1], begin=SLOT2, fail_prepare=True),
                 lambda sit: sit.vm.generation(0), "generation", advance="end",
                 explain="a CREATE prepares before it edits anything: on failure nothing was published, no "
                         "swap, the generation stays 0x2."),
    PredictState("05.2", "Slot 1 exists (generation 0x2). DELETE it, and prepare fails. What is the "
                 "generation of as0 afterwards?", situation([SLOT1], begin=DELETE1, fail_prepare=True),
                 lambda sit: sit.vm.generation(0), "generation", advance="end",
                 explain="swap #1 had published the INVALID copy; the revert is a second swap: +4 although "
                         "no slot changed."),
    ChooseErrno("05.3", "Slot 1 exists. DELETE it while kvm_arch_prepare_memory_region fails with ENOMEM "
                "(injected). What does the ioctl return?", situation([SLOT1]), call=DELETE1,
                fail_prepare=True,
                explain="the injected -ENOMEM is returned after the revert; slot 1 is unchanged."),
    PickStep("05.4", "MOVE slot 1 with a failing prepare. At which step does a lookup of gfn 0x100 find a "
             "valid (not INVALID) slot again?", situation([SLOT1], begin=MOVE1, fail_prepare=True),
             _sees(0x100, True), hint="The revert is a swap: the pointer moves back.",
             explain="the revert's rcu_assign_pointer publishes the set that still holds the original slot."),
    PredictState("05.5", "After that failed MOVE returns, which object does the active set hold for slot 1?",
                 situation([SLOT1], begin=MOVE1, fail_prepare=True), slot_in("active"), "label",
                 advance="end",
                 explain="the original object #1 is back in both sets; the INVALID copy and the unused new "
                         "slot were freed."),
    PredictState("05.6", "A real failure, no injection: Linux 6.12, slot 1 exists (generation 0x2). MOVE it to "
                 "gpa 1 << 52, beyond the highest gfn the x86 MMU can map. Validation passes. What is the "
                 "generation of as0 when the ioctl returns (with -EINVAL)?",
                 situation([SLOT1], begin=(1, 0, BEYOND_MAX_GFN, 0x10000, HVA), kernel="6.12"),
                 lambda sit: sit.vm.generation(0), "generation", advance="end",
                 hint="Where does 6.12 check the max gfn: before or after swap #1 (reference §4.5)?",
                 explain="kvm_arch_prepare_memory_region refuses the new range, after swap #1 published the "
                         "INVALID copy: the MOVE is reverted by a second swap, 0x2 + 4."),
)

L06 = (
    PickStep("06.1", "vcpu0 entered an SRCU read-side section before the CREATE of slot 1 began. At which "
             "step does the writer first have to wait?", situation(before=READER_INSIDE, begin=SLOT1),
             lambda sit: bool(sit.upd.blocked),
             explain="synchronize_srcu_expedited, after the publish: vcpu0 may still use the old set."),
    PredictState("06.2", "In 06.1, while the writer waits for vcpu0, which set of as0 is active?",
                 situation(before=READER_INSIDE, begin=SLOT1, run=("synchronize_srcu_expedited", 1)),
                 lambda sit: sit.vm.active_idx[0], "set", advance=0,
                 hint="The grace period starts after the pointer is published (reference §3.4).",
                 explain="the publish came first; the grace period waits only for readers of the old set0.",
                 show=lambda sit: [str(sit.steps[-1])]),
    PredictState("06.3", "Same moment. What generation does a reader that enters now see?",
                 situation(before=READER_INSIDE, begin=SLOT1, run=("synchronize_srcu_expedited", 1)),
                 lambda sit: sit.vm.generation(0), "generation", advance=0,
                 explain="the swap is between publish and final store: the old generation with bit 63 set.",
                 show=_generations(0)),
    PickStep("06.4", "An MMU-notifier invalidation is running (invalidate_range_start was called, not yet "
             "end) when the CREATE of slot 1 begins. At which step does the writer first have to wait?",
             situation(before=NOTIFIER_RUNNING, begin=SLOT1), lambda sit: bool(sit.upd.blocked),
             explain="the swap waits before publishing, so that range_start and range_end see the same slots."),
    PredictState("06.5", "Slot 1 exists; vcpu0 entered SRCU, then a DELETE of slot 1 began. The writer now waits "
                 "for vcpu0 after swap #1. vcpu0 reads gfn 0x100: what is the outcome?",
                 situation([SLOT1], before=READER_INSIDE, begin=DELETE1, run=("synchronize_srcu_expedited", 1)),
                 _access(0x100), "choice", advance=0, choices=REASONS,
                 hint="vcpu0 still uses the set it loaded at srcu_read_lock (reference §2.3, §3.4).",
                 explain="vcpu0 loaded the old set before swap #1; that set still holds the valid slot.",
                 show=lambda sit: [str(sit.vm.vcpus[0].access(0x100))]),
    PredictState("06.6", "Same moment. A new vCPU enters SRCU now and reads gfn 0x100: what is the outcome?",
                 situation([SLOT1], before=READER_INSIDE, begin=DELETE1, run=("synchronize_srcu_expedited", 1)),
                 _access(0x100, fresh=True), "choice", advance=0, choices=REASONS,
                 hint="A reader that enters after the publish sees the newly published set, which holds the "
                      "INVALID copy; what does the x86 fault path do with it (reference §2.3)?",
                 explain="it sees the newly published set with the INVALID copy: RET_PF_RETRY, no MMIO.",
                 show=lambda sit: [str(sit.vm.vcpus[-1].access(0x100))]),
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
                call=SLOT1, explain="nothing differs from the existing slot: the ioctl returns 0 with no swap."),
    ChooseErrno("07.7", "Slot 1 exists with 16 pages. Call again with 32 pages, same gpa and hva.",
                situation([SLOT1]), call=(1, 0, 0x100000, 0x20000, HVA)),
    ChooseErrno("07.8", "Fresh VM: slot 1 whose userspace_addr is 0x800000000000 (the first non-canonical address with "
                "4-level paging; the kernel half starts at 0xffff800000000000).",
                situation(), call=(1, 0, 0, 0x1000, 0x800000000000)),
    PredictState("07.9", "Fresh 5.17 VM: flags = 0x4 AND guest_phys_addr = 0x1001. Which numbered check of "
                 "reference §4.2 refuses the call?", situation(kernel="5.17"),
                 _rule_number((1, 4, 0x1001, 0x1000, HVA)), advance=0,
                 hint="The checks run in the order of the table; the first one that fails wins. (On 6.12 the "
                      "v1 ioctl refuses bit 2, GUEST_MEMFD, even before check 1: reference §4.5.)",
                 explain="check 1 (flags) runs before check 4 (gpa alignment): the first failing check wins."),
)
#: 100 one-page slots, 1 MiB apart in gpa and hva.
HUNDRED = tuple((i, 0, i << 20, 0x1000, HVA + (i << 20)) for i in range(100))
ABC = ((1, 0, 0x100000 << 12, 0x10000, HVA + (1 << 20)), (2, 0, 0xC0000 << 12, 0x10000, HVA + (2 << 20)),
       (3, 0, 0x0, 0x10000, HVA + (3 << 20)))


def _cost(counter):
    return lambda sit: sum(s.cost.get(counter, 0) for s in sit.steps)


def _cost_steps(counter):
    return lambda sit: [f"{i:2d} {s.function}: {counter} {s.cost[counter]}"
                        for i, s in enumerate(sit.steps, 1) if s.cost.get(counter)]


def _array_index(id):
    return lambda sit: [e.id for e in sit.vm.active_set(0).entries()].index(id)


L08 = (
    PredictState("08.1", "Array model (5.15). Slots A (gfn 0x100000), B (0xc0000) and C (0x0) exist; CREATE "
                 "slot 4 at gfn 0x80000. At which array index (0 = first) does it land?",
                 situation(ABC, begin=(4, 0, 0x80000 << 12, 0x10000, HVA + (4 << 20)), implementation="array"),
                 _array_index(4), advance="end",
                 hint="The array is sorted by base_gfn, highest first (reference §6.1, §6.2).",
                 explain="sorted by base_gfn descending: A (0x100000), B (0xc0000), then D (0x80000), then C (0).",
                 show=lambda sit: [f"array: {[(e.label, hex(e.base_gfn)) for e in sit.vm.active_set(0).entries()]}"]),
    PredictState("08.2", "Array model: slot 1 was just created (generation 0x2). MOVE it to gfn 0x400. What is "
                 "the generation of as0 afterwards?",
                 situation([SLOT1], begin=MOVE1, implementation="array"),
                 lambda sit: sit.vm.generation(0), "generation", advance="end",
                 explain="the array code swaps twice for a MOVE too, with the same +2 per swap: 0x6."),
    PredictState("08.3", "Array model with 100 slots. How many slot values does one DELETE copy, counting "
                 "every copy?", situation(HUNDRED, begin=(50, 0, 0, 0, 0), implementation="array"),
                 _cost("slots_copied"), advance="end",
                 hint="Count kvm_dup_memslots, the copy after swap #1, and the value copy of old (§6.3).",
                 explain="kvm_dup_memslots copies all 100, the copy after swap #1 all 100 again, plus the value "
                         "copy of old: 201.", show=_cost_steps("slots_copied")),
    PredictState("08.4", "Tree model with 100 slots. How many slot structs does one MOVE allocate?",
                 situation(HUNDRED, begin=(60, 0, 0x7000000000, 0x1000, HVA + (60 << 20))),
                 _cost("slots_allocated"), advance="end",
                 hint="Who allocates new, and what else does a MOVE need (reference §2.4)?",
                 explain="two, whatever the number of slots: new (in __kvm_set_memory_region) and the INVALID "
                         "copy.", show=_cost_steps("slots_allocated")),
)

L09 = (
    PredictState("09.1", "Variant seed (the 27 Oct 2021 proposal read as intended): slot 1 (#1) exists; MOVE "
                 "it to gfn 0x400. Which object holds slot 1 afterwards?",
                 situation([SLOT1], begin=MOVE1, variant="seed"), slot_in("active"), "label", advance="end",
                 hint="The proposal reuses one of the existing objects for MOVE (reference §7.2).",
                 explain="the sketch unlinks old (#1) from the inactive tree, rewrites its gfn and links it "
                         "again: the same object."),
    PredictState("09.2", "Same MOVE with the seed variant: how many slot structs does it allocate?",
                 situation([SLOT1], begin=MOVE1, variant="seed"), _cost("slots_allocated"), advance="end",
                 hint="One spare slot is allocated up front for every change type (reference §7.2).",
                 explain="one: the working slot, allocated up front and used as the INVALID copy; old is "
                         "reused for the moved slot.", show=_cost_steps("slots_allocated")),
    SpotInvariant("09.3", "The seed proposal exactly as posted (variant seed-as-posted). Run a CREATE of slot "
                  "1: which invariant does the checker report once the update stops?",
                  situation(begin=SLOT1, variant="seed-as-posted"),
                  hint="Look at the last step of the run: which function ran, and which did not?",
                  explain="the dispatch falls through to BUG() before commit, so nr_memslot_pages never counts "
                          "the new slot's pages."),
    SpotInvariant("09.4", "Variant no-catch-up: kvm_activate_memslot swaps but skips the second replace. "
                  "Run a CREATE of slot 1: which invariant breaks first?",
                  situation(begin=SLOT1, variant="no-catch-up"),
                  explain="without the catch-up replace the set that was active during the swap never gets "
                          "the new slot: at rest the sets differ."),
    SpotInvariant("09.5", "Variant invalid-in-place: DELETE also sets KVM_MEMSLOT_INVALID on the live slot. "
                  "Which invariant breaks first?", situation([SLOT1], begin=DELETE1, variant="invalid-in-place"),
                  explain="the flag is written into a slot readers can still reach: an in-place change."),
    SpotInvariant("09.6", "Variant gen-before-publish: the swap stores old + 2 before publishing instead of "
                  "the in-progress mark. Which invariant breaks first on a CREATE?",
                  situation(begin=SLOT1, variant="gen-before-publish"),
                  explain="the published set never carries bit 63: readers during the grace period could cache "
                          "under the final generation."),
    SpotInvariant("09.7", "Variant no-srcu-wait, with vcpu0 inside SRCU since before the CREATE of slot 1. "
                  "Which invariant breaks first?",
                  situation(before=READER_INSIDE, begin=SLOT1, variant="no-srcu-wait"),
                  explain="the swap finishes while vcpu0, which entered before the publish, may still use the "
                          "old set."),
)


@lru_cache(maxsize=4)
def _replayed(name):
    """The shipped QEMU trace ``name`` replayed on the default model (the same report each time)."""
    from .. import trace
    return trace.replay(trace.load(name), keep_steps=False)


def _trace(name, read):
    """A probe that reads the replay report of the shipped trace ``name``."""
    return lambda sit: read(_replayed(name))


def _trace_show(name, *numbers):
    """Evidence: the report's counts and the listed calls of the shipped trace ``name``."""
    def show(sit):
        r = _replayed(name)
        counts = ", ".join(f"{k} {v}" for k, v in r.counts.items() if v)
        return [f"{name}: {counts}"] + [f"call {n}: {r.call(n).call.text} -> {r.call(n).change}, "
                                        f"as0 generation {r.call(n).gens_before[0]:#x} -> {r.call(n).gens_after[0]:#x}"
                                        for n in numbers]
    return show


def _gen_moves(first, last, as_id=0):
    return lambda r: r.call(last).gens_after[as_id] - r.call(first).gens_before[as_id]


CHANGE_NAMES = ("create", "delete", "move", "flags_only", "none")
ERRNO_NAMES = ("0", "einval", "eexist", "eio", "enomem")

L10 = (
    PredictState("10.1", "The SMM boot trace (qemu-boot-smm.log), call 4: `Slot#0 flags=0x0 gpa=0x0 size=0x0`. "
                 "Which change does the model classify it as?", situation(),
                 _trace("qemu-boot-smm.log", lambda r: r.call(4).change.lower()), "choice", advance=0,
                 choices=CHANGE_NAMES, hint="Look at memory_size (reference §4.3).",
                 explain="memory_size 0 on an existing slot is a DELETE, whatever the other fields say.",
                 show=_trace_show("qemu-boot-smm.log", 4)),
    PredictState("10.2", "Same trace: calls 4 and 5 shrink slot 0 from 3 GiB to 768 KiB. By how much does the "
                 "generation of as0 move across those two calls?", situation(),
                 _trace("qemu-boot-smm.log", _gen_moves(4, 5)), advance=0,
                 hint="A slot cannot be resized in place: count the swaps of each call (reference §3.1).",
                 explain="a DELETE (two swaps, +4) then a CREATE (one swap, +2): 6.",
                 show=_trace_show("qemu-boot-smm.log", 4, 5)),
    PredictState("10.3", "The VGA dirty-log trace (qemu-vga-dirty-log.log) starts mid-run: its first call "
                 "deletes a slot the log never created. What would the model return for it?", situation(),
                 _trace("qemu-vga-dirty-log.log",
                        lambda r: _errname(r.mismatches[0].modelled) if r.mismatches else "0"),
                 "choice", advance=0, choices=ERRNO_NAMES,
                 hint="Deleting a slot id that does not exist is reference §4.2 check 10.",
                 explain="a DELETE of a slot the model never saw fails check 10 with -EINVAL; the kernel had "
                         "the slot and returned 0, so the replay reports an explained mismatch.",
                 show=lambda sit: [f"call {m.number} (line {m.line}): logged {m.logged}, model {m.modelled}: "
                                   f"{m.why}" for m in _replayed("qemu-vga-dirty-log.log").mismatches[:1]]),
    PredictState("10.4", "Same VGA trace: every CREATE has flags=0x1 and every DELETE flags=0x0. How many of its "
                 "calls are FLAGS_ONLY?", situation(),
                 _trace("qemu-vga-dirty-log.log", lambda r: r.counts.get("FLAGS_ONLY", 0)), advance=0,
                 hint="FLAGS_ONLY needs an existing slot whose flags change with the same gpa, size and hva "
                      "(reference §4.3). What does a call with size 0 do to a slot?",
                 explain="none: each call either deletes the slot (size 0; its flags field is ignored) or "
                         "creates it again with logging on. Logging is never switched on a live slot.",
                 show=_trace_show("qemu-vga-dirty-log.log", 3, 5)),
    PredictState("10.5", "The generated large-VM trace (large-vm-generated.log): which change type is the "
                 "most frequent?", situation(),
                 _trace("large-vm-generated.log", lambda r: max(("CREATE", "DELETE", "MOVE", "FLAGS_ONLY"),
                                                                key=r.counts.get).lower()),
                 "choice", advance=0, choices=CHANGE_NAMES[:4],
                 hint="What does live migration do to every slot, twice?",
                 explain="a live migration turns dirty logging on for every RAM slot and off again: two "
                         "FLAGS_ONLY calls per slot.", show=_trace_show("large-vm-generated.log")),
)


def _errname(r):
    return result_text(r).lstrip("-").lower()


def _guest_writes(*gfns):
    def act(vm):
        vcpu = vm.add_vcpu()
        vcpu.srcu_read_lock()
        for gfn in gfns:
            vcpu.access(gfn, write=True)
        vcpu.srcu_read_unlock()
    return act


def _dirty_twice(slot):
    def probe(sit):
        sit.first_log = sorted(sit.vm.get_dirty_log(slot))
        return len(sit.vm.get_dirty_log(slot))
    return probe


#: The machine-like model of lesson 11: 6.12 without SMM (one address space), as the project machines run.
NO_SMM = {"kernel": "6.12", "address_spaces": 1}

L11 = (
    PredictState("11.1", "A kernel built without SMM has one memslot address space (the project machines' 6.18 "
                 "does). On such a VM, what is the generation of as0 after one CREATE?",
                 situation([SLOT1], **NO_SMM), lambda sit: sit.vm.generation(0), "generation", advance=0,
                 hint="Each swap adds the VM's number of address spaces (kvm_arch_nr_memslot_as_ids, 6.8+).",
                 explain="one swap adds kvm_arch_nr_memslot_as_ids(kvm) = 1: 0x0 + 1.", show=_generations(0)),
    PredictState("11.2", "A READONLY slot at gpa 0 (one page). The guest WRITES gfn 0. What does the model's fault "
                 "path report (the real kernel turns it into a KVM_EXIT_MMIO with is_write = 1)?",
                 situation([(0, RO, 0, 0x1000, HVA)], before=READER_INSIDE, **NO_SMM),
                 lambda sit: sit.vm.vcpus[0].access(0, write=True).reason, "choice", advance=0, choices=REASONS,
                 hint="The slot exists and is found; what does a READONLY slot refuse (docs/kernel-6.12.md §4.7)?",
                 explain="the lookup finds the slot, but a write to a READONLY slot gets no writable page: KVM "
                         "emulates it as an MMIO write, and memory stays unchanged.",
                 show=lambda sit: [str(sit.vm.vcpus[0].access(0, write=True))]),
    PredictState("11.3", "Slot 0 logs dirty pages (16 pages at gpa 0). The guest writes gfns 3 and 5. Userspace "
                 "calls KVM_GET_DIRTY_LOG twice. How many dirty pages does the SECOND call report?",
                 situation([(0, LOG, 0, 0x10000, HVA)], before=_guest_writes(3, 5), **NO_SMM), _dirty_twice(0),
                 advance=0, hint="What does KVM_GET_DIRTY_LOG do to the bitmap it returns (docs/kernel-6.12.md §5)?",
                 explain="without manual protection KVM_GET_DIRTY_LOG returns the bitmap and clears it (and "
                         "write-protects the pages again): nothing was written in between.",
                 show=lambda sit: [f"first get: pages {sit.first_log}", "second get: pages []"]),
)


CATALOGUE = L01 + L02 + L03 + L04 + L05 + L06 + L07 + L08 + L09 + L10 + L11
