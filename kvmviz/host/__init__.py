"""The real kernel as kvmviz's oracle: a thin ``/dev/kvm`` binding and the differential check.

Not part of the pure engine (which never imports this package). See
``kvm`` (ioctls, ``HostVM``), ``guest`` (a real vCPU that reads and writes
gpas) and ``check`` (the same calls on the model and on the kernel), ``model``
(``model_for_host``: a ``kvmviz.VM`` configured like the running kernel).

>>> from kvmviz import host
>>> ok, why = host.available()
>>> (host.model_for_host().kernel if ok else "6.12") in ("5.15", "5.17", "6.12")
True
"""

from .guest import Guest, GuestAccess
from .ioctl import Memory
from .kvm import Capabilities, HostVM, available
from .model import model_for_host

__all__ = ["available", "HostVM", "Capabilities", "Guest", "GuestAccess", "Memory", "model_for_host"]
