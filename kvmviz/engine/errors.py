"""The error type of kvmviz: a kernel errno with a message for learners.

>>> import errno
>>> e = KvmError(errno.EINVAL, "guest_phys_addr 0x1001 is not page-aligned", rule="4.2#4")
>>> isinstance(e, OSError), e.errno, e.rule
(True, 22, '4.2#4')
>>> str(e)
'[Errno 22] EINVAL: guest_phys_addr 0x1001 is not page-aligned (reference §4.2#4)'
"""

import errno as _errno


class KvmError(OSError):
    """A failed ``KVM_SET_USER_MEMORY_REGION``: ``.errno`` is the kernel's errno.

    ``.rule`` names the check (a reference section); ``.slot`` the slot id, if any.
    """

    def __init__(self, err, message, rule=None, slot=None):
        name = _errno.errorcode.get(err, str(err))
        where = f" (reference §{rule})" if rule else ""
        super().__init__(err, f"{name}: {message}{where}")
        self.rule = rule
        self.slot = slot
        self.message = message

    @property
    def errname(self):
        """The symbolic errno name, e.g. ``'EEXIST'``."""
        return _errno.errorcode.get(self.errno, str(self.errno))


class ModelBug(RuntimeError):
    """The model hit a kernel ``BUG()``/``WARN()`` (only broken variants do).

    Not an errno: the kernel would oops and the ioctl never return. An
    ``Update`` ends with a ``BUG``/``WARN`` step whose ``error`` is this.

    >>> isinstance(ModelBug("BUG: double free of #3"), RuntimeError)
    True
    """
