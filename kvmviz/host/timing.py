"""Time memslot ioctls on the real kernel, from a small process of its own.

A KVM VM registers an MMU notifier on the process that created it: from
then on every change to that process's mappings (and a busy Python process
maps and unmaps memory all the time) runs KVM's notifier, which takes
``mmu_lock`` and delays the VM's memslot ioctls. So the benchmarks keep the
real VM in a child process that waits on a pipe while the model runs in the
parent: ``KernelTimer`` starts it (``python -m kvmviz.host.timing``), asks
it for a fresh VM (``new_vm``) and to run lists of
``KVM_SET_USER_MEMORY_REGION`` calls (``run``), and gets back the seconds
each pass took (``time.perf_counter``; the argument structs are packed
before the clock starts, so a pass times the ioctls and the ``ctypes``
calls). Without ``/dev/kvm`` the timer says why (``available``, ``why``).
``ModelTimer`` runs the same calls on a ``kvmviz.VM`` in this process, so a
benchmark can alternate the two.

>>> with KernelTimer() as k:
...     if k.available:
...         k.new_vm()
...         times = k.run([(1, 0, 0x100000, 0x1000, 0x7f0000000000),
...                        (1, 0, 0x100000, 0, 0x7f0000000000)], repeat=3)
...     else:
...         times = [0.0] * 3
>>> len(times), all(t < 1 for t in times)
(3, True)
"""

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..engine.vm import VM
from .ioctl import KVM_SET_USER_MEMORY_REGION, ioctl
from .kvm import HostVM, available, region_buffer


class KernelTimer:
    """Parent side: the child process that runs and times ioctls on a real VM.

    ``available`` is False (and ``why`` says why) when the child cannot
    create a VM on ``path``; ``release`` is the kernel's release string.

    >>> with KernelTimer("/nonexistent/kvm") as k:
    ...     k.available, k.why.split(":")[0]
    (False, '/nonexistent/kvm does not exist')
    """

    def __init__(self, path="/dev/kvm"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
        self._child = subprocess.Popen([sys.executable, "-m", "kvmviz.host.timing", path], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, env=env)
        hello = self._answer()
        self.available, self.why, self.release = hello["available"], hello["why"], hello["release"]

    def _answer(self):
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"the kernel timing process ended (exit code {self._child.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"kernel timing process: {answer['error']}")
        return answer

    def _ask(self, **request):
        if not self.available:
            raise RuntimeError(f"no real kernel to time: {self.why}")
        self._child.stdin.write(json.dumps(request) + "\n")
        self._child.stdin.flush()
        return self._answer()

    def new_vm(self):
        """Close the child's VM (if any) and create an empty one."""
        self._ask(op="new_vm")

    def run(self, calls, repeat=1):
        """Run ``calls`` (``(slot, flags, gpa, size, hva)`` each) ``repeat`` times; seconds per pass.

        Every call must succeed (return 0): a refusal raises ``RuntimeError``
        naming the call, since a failed ioctl would time the wrong work.
        """
        return self._ask(op="run", calls=[list(c) for c in calls], repeat=repeat)["seconds"]

    def close(self):
        """End the child process (idempotent)."""
        if self._child.poll() is None:
            self._child.stdin.close()
            self._child.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ModelTimer:
    """The model behind ``KernelTimer``'s interface: a fresh ``VM(**config)``, then timed passes.

    ``cost`` is the engine's work in the first pass of the last ``run``.

    >>> m = ModelTimer(history=False); m.new_vm()
    >>> len(m.run([(1, 0, 0x100000, 0x1000, 0x7f0000000000), (1, 0, 0x100000, 0, 0x7f0000000000)], 2))
    2
    >>> m.cost["hash_ops"] > 0
    True
    """

    available = True

    def __init__(self, **config):
        self.config, self.vm, self.cost = config, None, {}

    def new_vm(self):
        """Drop the VM (collecting its garbage, untimed) and start an empty one."""
        self.vm = None
        gc.collect()
        self.vm = VM(**self.config)

    def run(self, calls, repeat=1):
        """Run ``calls`` ``repeat`` times; seconds per pass (a refused call raises ``KvmError``)."""
        vm, seconds = self.vm, []
        call = vm.set_user_memory_region
        for k in range(repeat):
            before = dict(vm.cost)
            start = time.perf_counter()
            for c in calls:
                call(*c)
            seconds.append(time.perf_counter() - start)
            if k == 0:
                self.cost = {name: n - before.get(name, 0) for name, n in vm.cost.items() if n != before.get(name, 0)}
        return seconds


def _run(vm, calls, repeat):
    """Child side: the timed passes (all ioctls must return 0)."""
    buffers = [region_buffer(*c) for c in calls]
    seconds, fd = [], vm.fd
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            codes = [ioctl(fd, KVM_SET_USER_MEMORY_REGION, b) for b in buffers]
            seconds.append(time.perf_counter() - start)
            if any(codes):
                k = next(i for i, rc in enumerate(codes) if rc)
                raise ValueError(f"call {k} {tuple(calls[k])} returned {codes[k]}")
    finally:
        gc.enable()
    return seconds


def serve(path, stdin=sys.stdin, stdout=sys.stdout):
    """Child side: answer ``new_vm`` and ``run`` requests on ``path``, one JSON object per line, until EOF."""
    ok, why = available(path)
    print(json.dumps(dict(available=ok, why=why, release=os.uname().release)), file=stdout, flush=True)
    vm = None
    try:
        for line in stdin:
            request = json.loads(line)
            try:
                if request["op"] == "new_vm":
                    if vm is not None:
                        vm.close()
                    vm, answer = HostVM(memory=4096, path=path), {}
                else:
                    answer = dict(seconds=_run(vm, request["calls"], request["repeat"]))
            except (OSError, ValueError, AttributeError) as e:
                answer = dict(error=str(e))
            print(json.dumps(answer), file=stdout, flush=True)
    finally:
        if vm is not None:
            vm.close()


if __name__ == "__main__":
    serve(sys.argv[1])
