"""kvmviz: a faithful, steppable model of KVM's memslot updates (Linux 5.17+).

>>> import kvmviz
>>> vm = kvmviz.VM()
>>> _ = vm.set_user_memory_region(1, 0, 0x100000, 0x200000, 0x7f0000000000)
>>> vm.generation(0), kvmviz.check_invariants(vm)
(2, [])
"""

from .constants import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID, KVM_USER_MEM_SLOTS
from .errors import KvmError
from .invariants import check_invariants
from .kernels import KERNELS
from .memslot import Memslot
from .schedule import Schedule, Tick, Timeline
from .srcu import ReaderAction
from .vcpu import Access, GfnToHvaCache, Vcpu
from .set_memory_region import CHANGES, CREATE, DELETE, FLAGS_ONLY, MOVE, NONE
from .step import STAGES, Step, Update
from .vm import VM

__version__ = "0.1.0"

from . import export, variants  # noqa: E402  (they read __version__)

__all__ = ["VM", "KERNELS", "KvmError", "Memslot", "Step", "Update", "check_invariants", "Schedule", "Tick", "Timeline",
           "ReaderAction", "Vcpu", "Access", "GfnToHvaCache", "STAGES", "CHANGES",
           "CREATE", "DELETE", "MOVE", "FLAGS_ONLY", "NONE", "KVM_MEM_LOG_DIRTY_PAGES",
           "KVM_MEM_READONLY", "KVM_MEMSLOT_INVALID", "KVM_USER_MEM_SLOTS", "__version__",
           "export", "variants"]
