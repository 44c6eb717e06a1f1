"""``model_for_host``: a ``kvmviz.VM`` configured like the running kernel.

What it reads, and why:

- the kernel release (``uname -r``): the nearest modelled version, 6.12
  for every 6.x kernel (they all have the x86 max-gfn check at prepare,
  86931ff7207b; ``KVM_SET_USER_MEMORY_REGION2`` only from 6.8), 5.17 for
  5.17-5.19, 5.15 before;
- ``KVM_CAP_MULTI_ADDRESS_SPACE`` on a VM fd: memslot address spaces
  (``kvm_arch_nr_memslot_as_ids``; 0 means one, an x86 kernel without SMM);
- the host's ``kvm_mmu_max_gfn()`` for versions that check it at prepare:
  with TDP (EPT/NPT) on, the host's MAXPHYADDR (``address sizes`` in
  ``/proc/cpuinfo``), else 52 bits (shadow paging);
- ``KVM_CAP_GUEST_MEMFD`` on a VM fd, which 6.12 answers with
  ``kvm_arch_has_private_mem(kvm)``: whether a VM of the default type takes
  GUEST_MEMFD slots (``private_mem``; 6.18 lets default VMs use guest_memfd,
  6.12 does not; taken only with one address space, as a 6.12 VM with
  private memory has).

>>> vm = model_for_host(Capabilities("6.18.1", 12, 32764, 0, 1, 1, 1), tdp=False)
>>> vm.kernel, vm.address_spaces, hex(vm.max_gfn), vm.private_mem
('6.12', 1, '0xffffffffff', True)
>>> model_for_host(Capabilities("5.15.0", 12, 509, 2, 1, 0, 0)).kernel
'5.15'
"""

import os
import re
import struct

from ..engine.constants import PAGE_SHIFT
from ..engine.kernels import KERNELS, has
from ..engine.vm import VM
from .kvm import Capabilities, HostVM

#: ``/sys/module/*/parameters`` that say whether KVM uses two-dimensional paging.
TDP_PARAMS = ("/sys/module/kvm_intel/parameters/ept", "/sys/module/kvm_amd/parameters/npt")


def nearest_kernel(release):
    """The modelled version closest to a ``uname -r`` release string.

    >>> [nearest_kernel(r) for r in ("5.10.0", "5.16.2", "5.17.0", "5.19.3", "6.1.0", "6.18.44-fc")]
    ['5.15', '5.15', '5.17', '5.17', '6.12', '6.12']
    """
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    version = (int(m.group(1)), int(m.group(2)))
    if version < (5, 17):
        return "5.15"
    return "5.17" if version < (6, 0) else "6.12"


def tdp_enabled(params=TDP_PARAMS):
    """True when the loaded kvm_intel/kvm_amd module uses EPT/NPT (``tdp_enabled``)."""
    for path in params:
        try:
            with open(path) as f:
                return f.read().strip() in ("Y", "1")
        except OSError:
            continue
    return False           # no EPT/NPT module (e.g. a paravirtual KVM): shadow paging


def host_phys_bits(cpuinfo="/proc/cpuinfo", cpuid="/dev/cpu/0/cpuid"):
    """The host's MAXPHYADDR as KVM reads it: raw CPUID 0x80000008 EAX[7:0].

    ``kvm_get_host_maxphyaddr`` (``arch/x86/kvm/mmu/spte.c``) reads the raw
    leaf, which SME/MKTME do not reduce; ``/proc/cpuinfo``'s ``address
    sizes`` (``x86_phys_bits``) may be reduced, so it is only the fallback
    when the cpuid driver is not there. 52 if neither says.
    """
    try:
        fd = os.open(cpuid, os.O_RDONLY)
        try:
            return struct.unpack("<I", os.pread(fd, 16, 0x80000008)[:4])[0] & 0xFF
        finally:
            os.close(fd)
    except (OSError, struct.error):
        pass
    try:
        with open(cpuinfo) as f:
            m = re.search(r"address sizes\s*:\s*(\d+) bits physical", f.read())
    except OSError:
        m = None
    return int(m.group(1)) if m else 52


def host_max_gfn(tdp=None):
    """``kvm_mmu_max_gfn()``: MAXPHYADDR with TDP, else 52 physical bits."""
    tdp = tdp_enabled() if tdp is None else tdp
    bits = host_phys_bits() if tdp else 52
    return (1 << (bits - PAGE_SHIFT)) - 1


def host_capabilities(path="/dev/kvm"):
    """``HostVM().capabilities()`` of a throw-away VM."""
    with HostVM(memory=1 << 12, path=path) as h:
        return h.capabilities()


def model_for_host(caps=None, tdp=None, **vm_options):
    """A ``VM`` with the running kernel's version, address spaces and max gfn.

    ``caps`` defaults to what ``/dev/kvm`` says now; ``vm_options`` go to
    ``VM`` (e.g. ``history=False``).
    """
    caps = host_capabilities() if caps is None else caps
    kernel = KERNELS[nearest_kernel(caps.release)]
    if kernel.max_gfn_check:
        vm_options.setdefault("max_gfn", host_max_gfn(tdp))
    if has(kernel.name, "guest_memfd"):
        # a 6.12 VM with private memory has one address space; a host that offers both
        # SMM and guest_memfd to default VMs is newer than any modelled version
        vm_options.setdefault("private_mem", bool(caps.guest_memfd) and caps.address_spaces == 1)
    return VM(kernel=kernel.name, address_spaces=caps.address_spaces, **vm_options)


def describe(vm):
    """One line naming the model configuration, for reports."""
    max_gfn = f", max_gfn {vm.max_gfn:#x}" if vm.max_gfn is not None else ""
    private = ", private memory (guest_memfd slots)" if vm.private_mem else ""
    return (f"kernel {vm.kernel} ({vm.implementation}), {vm.address_spaces} address space(s)"
            f"{max_gfn}{private}, variant {vm.variant}")


__all__ = ["model_for_host", "nearest_kernel", "host_max_gfn", "describe", "Capabilities"]
