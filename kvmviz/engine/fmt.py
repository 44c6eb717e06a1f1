"""How kvmviz prints a generation and an ioctl's return code: one formatter each, for every front end.

Not a kernel function: the kernel keeps generations as a ``u64`` whose bit 63
(``KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS``) marks a swap in progress (reference
§3.1), and returns ``-errno`` from the ioctl. Step texts, traces, plots and
exercises all print them through these two functions.

>>> gen_text(2), gen_text(2 | 1 << 63)
('0x2', '0x2|IP')
>>> result_text(0), result_text(-22), result_text(-22, number=True), result_text("BUG"), result_text(None)
('0', '-EINVAL', '-22 (EINVAL)', 'BUG', '')
"""

import errno

from .constants import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS as IP


def gen_text(g):
    """A generation in hex, with ``|IP`` for the in-progress bit 63: ``0x4`` or ``0x4|IP``.

    >>> gen_text(4 | IP)
    '0x4|IP'
    """
    return f"{g & ~IP:#x}|IP" if g & IP else f"{g:#x}"


def result_text(r, none="", number=False):
    """An ioctl result: ``0``, ``-EINVAL`` (``-22 (EINVAL)`` with ``number``), ``BUG``/``WARN``, or ``none`` while running.

    ``BUG``/``WARN`` end a call whose broken variant hit a kernel ``BUG()``
    (no errno: the ioctl never returns). An errno Linux does not name stays
    a number.

    >>> result_text(-999), result_text(None, none="running")
    ('-999', 'running')
    """
    if r is None:
        return none
    if isinstance(r, int) and r < 0:
        name = errno.errorcode.get(-r)
        if name is None:
            return str(r)
        return f"{r} ({name})" if number else f"-{name}"
    return str(r)
