"""Helpers for the lesson notebooks: kernel links and step tables as Markdown.

Every step names the kernel function it models; the lessons link each one to
its definition in Bootlin's Elixir cross-referencer at Linux v5.17 (v5.15 for
the array code, v6.12 for functions 5.17 does not have), so a learner can read
the real code next to the model (kvmviz copies none of it).

>>> elixir_url("kvm_swap_active_memslots")
'https://elixir.bootlin.com/linux/v5.17/A/ident/kvm_swap_active_memslots'
>>> import kvmviz
>>> steps = kvmviz.VM().set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
>>> print(steps_markdown(steps[:1]))   # doctest: +ELLIPSIS
| # | stage | kernel function | what happens | as0 generation |
|---|---|---|---|---|
| 1 | validate | [`__kvm_set_memory_region`](https://elixir...) | all checks passed: CREATE ... | 0x0 |
"""

import html

from ..engine.errors import KvmError
from ..engine.fmt import gen_text

ELIXIR = "https://elixir.bootlin.com/linux/{version}/A/ident/"

#: Functions of the 5.15 array code (reference §6) that 5.17 no longer has: linked at v5.15.
ARRAY_ONLY = frozenset(("kvm_dup_memslots", "kvm_copy_memslots", "install_new_memslots", "update_memslots",
                        "kvm_memslot_delete", "kvm_memslot_insert_back", "kvm_memslot_move_backward",
                        "kvm_memslot_move_forward"))

#: Functions the 6.12 model runs that v5.17 does not have: linked at v6.12.
NEWER = frozenset(("kvm_arch_guest_memory_reclaimed", "kvm_gmem_bind", "kvm_gmem_unbind", "kvm_gmem_create"))

#: Where each modelled function lives in v5.17 (for link titles).
FILES = {
    "search_memslots": "include/linux/kvm_host.h",
    "____gfn_to_memslot": "include/linux/kvm_host.h",
    "__gfn_to_memslot": "include/linux/kvm_host.h",
    "id_to_memslot": "include/linux/kvm_host.h",
    "__gfn_to_hva_memslot": "include/linux/kvm_host.h",
    "kvm_for_each_memslot_in_gfn_range": "include/linux/kvm_host.h",
    "kvm_for_each_memslot_in_hva_range": "virt/kvm/kvm_main.c",
    "rcu_assign_pointer": "include/linux/rcupdate.h",
    "srcu_read_lock": "include/linux/srcu.h",
    "srcu_read_unlock": "include/linux/srcu.h",
    "make_mmio_spte": "arch/x86/kvm/mmu/spte.c",
    "check_mmio_spte": "arch/x86/kvm/mmu/mmu.c",
    "handle_mmio_page_fault": "arch/x86/kvm/mmu/mmu.c",
    "kvm_mmu_page_fault": "arch/x86/kvm/mmu/mmu.c",
    "kvm_mmu_zap_all_fast": "arch/x86/kvm/mmu/mmu.c",
    "vcpu_cache_mmio_info": "arch/x86/kvm/x86.h",
    "kvm_smm_changed": "arch/x86/kvm/x86.c",
    "synchronize_srcu_expedited": "kernel/rcu/srcutree.c",
    "rcuwait_wait_event": "include/linux/rcuwait.h",
    "kfree": "mm/slab.c",
    "kvfree": "mm/util.c",
    "kvm_gmem_bind": "virt/kvm/guest_memfd.c",
    "kvm_gmem_unbind": "virt/kvm/guest_memfd.c",
    "kvm_gmem_create": "virt/kvm/guest_memfd.c",
}
ARCH_X86 = "arch/x86/kvm/x86.c"


def elixir_url(function, version=None):
    """Elixir's identifier search for ``function`` at ``version``.

    By default v5.17, v5.15 for the array code, v6.12 for what 5.17 lacks; a
    table of the 5.15 array model passes ``"v5.15"`` for every function (its
    ``kvm_set_memslot`` is not 5.17's).

    >>> elixir_url("update_memslots"), elixir_url("kvm_set_memslot", "v5.15")[-28:]
    ('https://elixir.bootlin.com/linux/v5.15/A/ident/update_memslots', '5.15/A/ident/kvm_set_memslot')
    """
    if version is None:
        version = "v5.15" if function in ARRAY_ONLY else "v6.12" if function in NEWER else "v5.17"
    return ELIXIR.format(version=version) + function


def kernel_file(function):
    """The v5.17 source file of a modelled kernel function.

    >>> kernel_file("kvm_arch_flush_shadow_memslot"), kernel_file("kvm_set_memslot")
    ('arch/x86/kvm/x86.c', 'virt/kvm/kvm_main.c')
    """
    if function in FILES:
        return FILES[function]
    return ARCH_X86 if function.startswith("kvm_arch_") else "virt/kvm/kvm_main.c"


def kernel_link(function, version=None):
    """A Markdown link to ``function`` at Elixir (``version`` as ``elixir_url``), titled with its file."""
    return f'[`{function}`]({elixir_url(function, version)} "{kernel_file(function)}")'


def _cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def steps_markdown(steps, as_id=0, start=1, version=None):
    """The steps as a Markdown table, numbered from ``start``, each function linked (at ``version``)."""
    rows = ["| # | stage | kernel function | what happens | as%d generation |" % as_id,
            "|---|---|---|---|---|"]
    for i, s in enumerate(steps, start):
        wait = " (waiting)" if s.waiting else ""
        rows.append(f"| {i} | {s.stage} | {kernel_link(s.function, version)}{wait} | {_cell(s.text)} | "
                    f"{_cell(gen_text(s.generation(as_id)))} |")
    return "\n".join(rows)


#: The locks a memslot update takes, in lock order (reference §1.5).
LOCKS = ("slots_lock", "slots_arch_lock", "mn_invalidate_lock")


def _srcu_note(step):
    if step.function == "rcu_assign_pointer":
        return "publish: new readers see it"
    if step.function == "synchronize_srcu_expedited":
        return "grace period: wait for older readers"
    return ""


def locks_markdown(steps, as_id=0, start=1):
    """The steps as a lock diagram: where each lock is taken, held and released, and what SRCU does.

    A cell says ``take`` or ``release`` where the step changes the lock and
    ``█`` while it stays held (``Step.locks`` is the set held after a step).

    >>> import kvmviz
    >>> steps = kvmviz.VM().set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
    >>> print(locks_markdown(steps).splitlines()[2])   # doctest: +ELLIPSIS
    | 1 | [`__kvm_set_memory_region`](...) | take |  |  |  | 0x0 |
    """
    rows = ["| # | kernel function | " + " | ".join(f"`{lock}`" for lock in LOCKS) +
            f" | SRCU | as{as_id} generation |", "|---" * (len(LOCKS) + 4) + "|"]
    held = frozenset()
    for i, s in enumerate(steps, start):
        cells = ["take" if lock in s.locks and lock not in held else "█" if lock in s.locks
                 else "release" if lock in held else "" for lock in LOCKS]
        rows.append(f"| {i} | {kernel_link(s.function)} | " + " | ".join(cells) +
                    f" | {_srcu_note(s)} | {_cell(gen_text(s.generation(as_id)))} |")
        held = s.locks
    return "\n".join(rows)


def functions_markdown(steps):
    """The distinct kernel functions of ``steps``, in order, as a linked list."""
    seen = list(dict.fromkeys(s.function for s in steps))
    return "\n".join(f"- {kernel_link(f)} ({kernel_file(f)})" for f in seen)


def describe_call(vm, slot, flags, guest_phys_addr, memory_size, userspace_addr, fail_prepare=False):
    """Make one ``KVM_SET_USER_MEMORY_REGION`` call and say what it returned.

    Never raises for bad input: a kernel error or an argument that does not
    fit the ioctl's fields becomes the sentence.

    >>> import kvmviz
    >>> vm = kvmviz.VM()
    >>> describe_call(vm, 1, 0, 0, 0x1000, 0x10000)
    'returns 0: CREATE of slot 1 (as0), 1 swap(s); as0 generation now 0x2'
    >>> describe_call(vm, 2, 0, 0x1001, 0x1000, 0x10000)
    'returns -EINVAL: guest_phys_addr 0x1001 is not page-aligned (slot 2, as 0) (check §4.2#4)'
    """
    try:
        steps = vm.set_user_memory_region(slot, flags, guest_phys_addr, memory_size, userspace_addr,
                                          fail_prepare=fail_prepare)
    except KvmError as e:
        return f"returns -{e.errname}: {e.message} (check §{e.rule})"
    except ValueError as e:
        return f"not a valid call: {e}"
    as_id, change = slot >> 16, steps[-1].change
    if change == "NONE":
        return f"returns 0: nothing to change; as{as_id} generation stays {gen_text(vm.generation(as_id))}"
    swaps = sum(s.function == "rcu_assign_pointer" for s in steps)
    return (f"returns 0: {change} of slot {slot & 0xFFFF} (as{as_id}), {swaps} swap(s); "
            f"as{as_id} generation now {gen_text(vm.generation(as_id))}")


def html_text(text):
    """``text`` as HTML: escaped, with `backticked` parts as ``<code>``.

    >>> html_text("call `f(a<b)` now")
    'call <code>f(a&lt;b)</code> now'
    """
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


class WorkedAnswer:
    """The collapsed worked answer of an exercise, computed by the engine when it is created.

    Shows as a ``<details>`` block (closed until clicked) in a notebook and in
    static HTML: the answer, the one-line why, and the engine's evidence.

    >>> from kvmviz.teach.exercises import get
    >>> w = WorkedAnswer(get("02.5"))
    >>> w.worked.answer, "<details" in w._repr_html_(), "0x6" in w.text()
    ('0x6', True, True)
    """

    def __init__(self, exercise):
        self.exercise = exercise
        self.worked = exercise.worked()

    def text(self):
        """The worked answer as plain text."""
        w = self.worked
        lines = [f"Worked answer to {self.exercise.key}: {w.answer}", *([w.why] if w.why else [])]
        return "\n".join(lines + [f"  {line}" for line in w.evidence])

    def _repr_html_(self):
        w = self.worked
        why = f"<p>{html_text(w.why)}</p>" if w.why else ""
        evidence = ("<pre style=\"white-space:pre-wrap;font-size:90%\">" +
                    html.escape("\n".join(w.evidence)) + "</pre>") if w.evidence else ""
        return (f'<details class="kvmviz-worked"><summary>Worked answer to {self.exercise.key} '
                f"(computed by the engine when this notebook ran)</summary>"
                f"<p><b>Answer: <code>{html.escape(w.answer)}</code></b></p>{why}{evidence}</details>")

    def __repr__(self):
        return self.text()
