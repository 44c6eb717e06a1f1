"""Import and replay QEMU's memslot traces (``-trace kvm_set_user_memory``).

``parse_qemu(text)`` reads the log; ``replay(text_or_calls)`` runs every call
through the model and compares the model's return value with the logged one.
``shipped()`` names the traces that come with kvmviz; ``load(name)`` reads one.
``capture(scenario)`` records a live trace from QEMU on this machine's
/dev/kvm (``kvmviz.trace.capture``: a process and a socket, outside the pure
engine, which never calls it).

>>> from kvmviz import trace
>>> report = trace.replay(trace.load("qemu-vga-dirty-log.log"))
>>> report.counts["CREATE"], len(report.mismatches)
(15, 2)
"""

from .qemu import MemoryCall, QemuTrace, Unparsed, format_qemu, parse_qemu
from .replay import Mismatch, ReplayedCall, ReplayReport, load, replay, shipped
from .capture import CaptureError, capture   # the function shadows its module's name

__all__ = ["parse_qemu", "format_qemu", "replay", "load", "shipped", "MemoryCall", "QemuTrace",
           "Unparsed", "Mismatch", "ReplayedCall", "ReplayReport", "capture", "CaptureError"]
