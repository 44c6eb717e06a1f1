"""kvmviz: a faithful, steppable model of KVM's memslot updates (Linux 5.17+).

>>> import kvmviz
>>> vm = kvmviz.VM()
>>> _ = vm.set_user_memory_region(1, 0, 0x100000, 0x200000, 0x7f0000000000)
>>> vm.generation(0), kvmviz.check_invariants(vm)
(2, [])
"""

from .engine.constants import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID, KVM_USER_MEM_SLOTS
from .engine.errors import KvmError
from .engine.invariants import check_invariants
from .engine.kernels import KERNELS
from .engine.memslot import Memslot
from .engine.tree.protocol import MergedProtocol
from .engine import __version__
from .engine.scenario import Scenario
from .engine.schedule import Schedule, Tick, Timeline
from .engine.events import ReaderAction
from .engine.vcpu import Access, GfnToHvaCache, Vcpu
from .engine.validate import CHANGES, CREATE, DELETE, FLAGS_ONLY, MOVE, NONE
from .engine.step import STAGES, Step, Update
from .engine.vm import VM
from . import export, variants
from .teach import exercises, lessons

__all__ = ["VM", "MergedProtocol", "KERNELS", "KvmError", "Memslot", "Step", "Update", "check_invariants", "Scenario", "Schedule", "Tick", "Timeline",
           "ReaderAction", "Vcpu", "Access", "GfnToHvaCache", "STAGES", "CHANGES",
           "CREATE", "DELETE", "MOVE", "FLAGS_ONLY", "NONE", "KVM_MEM_LOG_DIRTY_PAGES",
           "KVM_MEM_READONLY", "KVM_MEMSLOT_INVALID", "KVM_USER_MEM_SLOTS", "__version__",
           "export", "variants", "exercises", "lessons"]
