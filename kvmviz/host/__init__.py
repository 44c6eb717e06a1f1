"""The real kernel as kvmviz's oracle: a thin ``/dev/kvm`` binding and the differential check.

Not part of the pure engine (which never imports this package). See
``kvm`` (ioctls, ``HostVM``), ``guest`` (a real vCPU that reads and writes
gpas) and ``check`` (the same calls on the model and on the kernel).
"""

from .guest import Guest, GuestAccess
from .ioctl import Memory
from .kvm import Capabilities, HostVM, available

__all__ = ["available", "HostVM", "Capabilities", "Guest", "GuestAccess", "Memory"]
