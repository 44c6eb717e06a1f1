"""Capture a live memslot trace: QEMU on this machine's ``/dev/kvm``, driven over QMP.

Not part of the pure engine: this module starts a process, reads a clock and
talks to a socket (the engine never imports it). ``capture(scenario)`` runs
``qemu-system-x86_64`` from PATH with ``-accel kvm``, the
``kvm_set_user_memory`` trace event (QEMU logs it after each
``KVM_SET_USER_MEMORY_REGION``, with the ioctl's return value as ``ret=``)
written by ``-D`` to a temporary file, no network (``-nic none``) and a QMP
socket in a temporary directory; it runs the scenario's steps and returns the
log behind a header of ``#`` lines (command line, QEMU version, kernel
release, date, scenario, the QMP steps). ``parse_qemu`` skips the header.

Scenarios (``SCENARIOS``; the guest has 256 MiB of RAM and room for DIMMs):

``boot``
    SeaBIOS boots with no disk until it prints "No bootable device" on the
    debug console (port 0x402): the PAM and VGA churn of a PC's firmware.
``hotplug``
    Two 128 MiB ``pc-dimm`` are hot-added, the second is unplugged.
``migrate``
    A migration to ``exec:cat > /dev/null`` turns dirty logging on for every
    RAM slot; ``cont`` after it completes turns it off (QEMU postpones that
    while the VM is stopped, and a finished migration leaves it stopped).
``readonly``
    The firmware is a ``-drive if=pflash,readonly=on`` image, and a ROM DIMM
    (a ``readonly`` file backend) is hot-added and unplugged: READONLY slots.
``all``
    ``boot``, then the steps of ``hotplug``, ``readonly`` and ``migrate`` in
    one run (firmware: SeaBIOS as ``-bios``, not pflash).

Except for ``boot`` and ``all``, the firmware is a 64 KiB image that halts
(``cli; hlt``) at the reset vector: the guest runs but never changes the
memory map, so only the scenario's steps do, and a capture takes well under
a second.

A disk-less guest has no OS to answer the unplug request of ``device_del``
(an ACPI event for the guest's OSPM), so alone it never removes the DIMM.
The capture then does what the guest's ACPI eject method would: it writes the
DIMM's slot number to the selector and the eject bit to the control byte of
QEMU's memory-hotplug registers at I/O port 0xa00 (QEMU's
``docs/specs/acpi_mem_hotplug.rst``), with HMP's ``o`` command, and waits for
``DEVICE_DELETED``. QEMU then unmaps the DIMM, which is the memslot DELETE.

Every wait has a timeout; QEMU is killed by its own PID on the way out
(also on KeyboardInterrupt) and the temporary directory is removed. A
failure is a ``CaptureError`` with a one-line message.

>>> SCENARIOS["hotplug"].firmware, sorted(SCENARIOS)
('halt', ['all', 'boot', 'hotplug', 'migrate', 'readonly'])
>>> read_header("# scenario: boot\\n# kernel: 6.18\\nkvm_set_user_memory ...")
{'scenario': 'boot', 'kernel': '6.18'}
"""

import datetime
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from typing import NamedTuple

from .. import __version__

QEMU = "qemu-system-x86_64"
INSTALL = "apt-get install qemu-system-x86"
MEMORY = "256,slots=4,maxmem=1G"
DIMM_SIZE = 128 << 20
ROM_SIZE = 2 << 20
MHP_BASE = 0xA00            # QEMU's ACPI memory-hotplug registers (PIIX4 PM, -machine pc)
MHP_EJECT = 0x8             # bit 3 of the control byte at MHP_BASE + 0x14
BOOT_DONE = "No bootable device"
_POLL = 0.05


class CaptureError(RuntimeError):
    """A capture that could not run or finish: QEMU missing, no /dev/kvm, QMP error, timeout.

    >>> str(CaptureError("QMP timeout"))
    'QMP timeout'
    """


class Scenario(NamedTuple):
    """A named capture: what it shows, its firmware and its steps (functions of a ``_Run``)."""

    summary: str
    firmware: str           # "seabios", "halt" (-bios) or "pflash" (halt image, readonly pflash)
    steps: tuple


def _halt_image():
    """64 KiB of firmware: ``cli; hlt; jmp hlt`` at the reset vector (offset size - 16)."""
    image = bytearray(b"\xf4" * 0x10000)
    image[-16:-12] = b"\xfa\xf4\xeb\xfd"
    return bytes(image)


class _Qmp:
    """QMP over a Unix socket: JSON lines, ``qmp_capabilities`` first, events kept."""

    def __init__(self, run):
        self.run, self.events, self.file = run, [], None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def connect(self, path):
        """Connect (QEMU makes the socket soon after it starts), read the greeting, negotiate."""
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.run.check_alive("before its QMP socket was ready")
                self.run.sleep()
        self.file = self.sock.makefile("rb")
        self._message()                       # the greeting
        self.command("qmp_capabilities")

    def _message(self):
        self.sock.settimeout(self.run.remaining())
        try:
            line = self.file.readline()
        except (socket.timeout, TimeoutError):
            raise CaptureError(f"QMP timeout: no answer from QEMU within {self.run.timeout:g} s") from None
        if not line:
            self.run.check_alive("on the QMP socket")
            raise CaptureError("QMP: QEMU closed the socket")
        return json.loads(line)

    def command(self, name, **arguments):
        """Run one QMP command; returns its ``return`` value or raises ``CaptureError``."""
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        while True:
            message = self._message()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise CaptureError(f"QMP {name} failed: {message['error'].get('desc', message['error'])}")
            else:
                return message.get("return")

    def hmp(self, line):
        """An HMP command through QMP; HMP reports errors as output, so any output is one."""
        said = self.command("human-monitor-command", **{"command-line": line}).strip()
        if said:
            raise CaptureError(f"HMP {line!r} failed: {said.splitlines()[0]}")

    def wait_event(self, name, device):
        """Wait for event ``name`` about ``device``."""
        while not any(e["event"] == name and e.get("data", {}).get("device") == device for e in self.events):
            self.events.append(self._message())

    def close(self):
        if self.file is not None:
            self.file.close()
        self.sock.close()


class _Run:
    """One QEMU process and its temporary directory, bounded by a deadline."""

    def __init__(self, qemu, tmp, timeout):
        self.qemu, self.tmp, self.timeout = qemu, tmp, timeout
        self.deadline = time.monotonic() + timeout
        self.proc = self.qmp = None
        self.steps = []

    def path(self, name):
        return os.path.join(self.tmp, name)

    def remaining(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CaptureError(f"timeout: the capture took more than {self.timeout:g} s")
        return left

    def sleep(self):
        time.sleep(min(_POLL, self.remaining()))

    def stderr(self):
        try:
            with open(self.path("stderr"), encoding="utf-8", errors="replace") as f:
                return [line.rstrip() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def check_alive(self, when):
        if self.proc.poll() is not None:
            said = self.stderr()
            raise CaptureError(f"QEMU exited with status {self.proc.returncode} {when}"
                               + (f": {said[-1]}" if said else ""))

    def step(self, name, **arguments):
        """A QMP command that is part of the scenario (recorded in the header)."""
        self.steps.append(f"{name} {json.dumps(arguments)}" if arguments else name)
        return self.qmp.command(name, **arguments)

    def hmp(self, line):
        self.steps.append(f"human-monitor-command {line!r}")
        self.qmp.hmp(line)


def _command(run, firmware):
    cmd = [run.qemu, "-nodefaults", "-machine", "pc", "-accel", "kvm", "-m", MEMORY, "-nic", "none",
           "-display", "none", "-vga", "std", "-no-reboot",
           "-trace", "kvm_set_user_memory", "-D", run.path("qemu.log"), "-msg", "timestamp=on",
           "-qmp", f"unix:{run.path('qmp.sock')},server=on,wait=off"]
    if firmware == "seabios":
        return cmd + ["-chardev", f"file,id=dbg,path={run.path('debugcon.txt')}",
                      "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
    with open(run.path("halt.bin"), "wb") as f:
        f.write(_halt_image())
    if firmware == "halt":
        return cmd + ["-bios", run.path("halt.bin")]
    return cmd + ["-drive", f"if=pflash,format=raw,readonly=on,file={run.path('halt.bin')}"]


# -- the steps -------------------------------------------------------------------------------------
def _boot(run):
    """Wait until SeaBIOS gives up booting: after that it changes no memslot."""
    run.steps.append(f"wait for {BOOT_DONE!r} on the debug console (port 0x402)")
    while True:
        try:
            with open(run.path("debugcon.txt"), encoding="latin-1") as f:
                if BOOT_DONE in f.read():
                    return
        except FileNotFoundError:
            pass
        run.check_alive("while SeaBIOS booted")
        run.sleep()


def _plug(run, dimm, backend):
    run.step("object-add", **backend)
    run.step("device_add", driver="pc-dimm", id=dimm, memdev=backend["id"])


def _unplug(run, dimm, backend):
    """``device_del``, then the ACPI eject the guest's OSPM would do, then ``object-del``."""
    slot = next(d["data"]["slot"] for d in run.qmp.command("query-memory-devices")
                if d["data"].get("id") == dimm)
    run.step("device_del", id=dimm)
    run.hmp(f"o /w {MHP_BASE:#x} {slot}")
    run.hmp(f"o /b {MHP_BASE + 0x14:#x} {MHP_EJECT:#x}")
    run.steps.append(f"wait for DEVICE_DELETED of {dimm}")
    run.qmp.wait_event("DEVICE_DELETED", dimm)
    run.step("object-del", id=backend)


def _hotplug(run):
    for n in (1, 2):
        _plug(run, f"dimm{n}", {"qom-type": "memory-backend-ram", "id": f"ram{n}", "size": DIMM_SIZE})
    _unplug(run, "dimm2", "ram2")


def _readonly(run):
    rom = run.path("rom.bin")
    with open(rom, "wb") as f:
        f.truncate(ROM_SIZE)
    _plug(run, "rom1", {"qom-type": "memory-backend-file", "id": "romfile1", "size": ROM_SIZE,
                        "mem-path": rom, "readonly": True, "share": False})
    _unplug(run, "rom1", "romfile1")


def _migrate(run):
    run.step("migrate", uri="exec:cat > /dev/null")
    run.steps.append("poll query-migrate until completed")
    while (status := run.qmp.command("query-migrate").get("status")) != "completed":
        if status in ("failed", "cancelled"):
            raise CaptureError(f"migration {status}")
        run.sleep()
    run.step("cont")


SCENARIOS = {
    "boot": Scenario("SeaBIOS boots with no disk until 'No bootable device'", "seabios", (_boot,)),
    "hotplug": Scenario("two 128 MiB DIMMs hot-added, the second unplugged (device_del + ACPI eject)",
                        "halt", (_hotplug,)),
    "migrate": Scenario("migration to exec:cat: dirty logging on for every RAM slot, off at cont",
                        "halt", (_migrate,)),
    "readonly": Scenario("firmware in a readonly=on pflash; a 2 MiB ROM DIMM hot-added and unplugged",
                         "pflash", (_readonly,)),
    "all": Scenario("boot, then the hotplug, readonly (ROM DIMM) and migrate steps in one run",
                    "seabios", (_boot, _hotplug, _readonly, _migrate)),
}


# -- running QEMU ---------------------------------------------------------------------------------
def _find_qemu(qemu):
    path = shutil.which(qemu)
    if path is None:
        raise CaptureError(f"QEMU not found: no {qemu} on PATH (install it: {INSTALL})")
    return path


def check_kvm(device="/dev/kvm"):
    """Raise ``CaptureError`` unless ``device`` opens read-write (what QEMU's ``-accel kvm`` needs).

    >>> check_kvm("/no/such/kvm")
    Traceback (most recent call last):
    ...
    kvmviz.trace.capture.CaptureError: /no/such/kvm is unusable: No such file or directory (QEMU needs KVM)
    """
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        raise CaptureError(f"{device} is unusable: {e.strerror} (QEMU needs KVM)") from None


def qemu_version(qemu=QEMU):
    """First line of ``qemu --version``."""
    done = subprocess.run([_find_qemu(qemu), "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.splitlines()[0] if done.stdout else f"unknown ({done.stderr.strip()})"


def _stop(run):
    """``quit`` over QMP when possible, else SIGTERM, else SIGKILL: always by the process's own PID."""
    proc = run.proc
    if proc is None or proc.poll() is not None:
        return
    asks = ([lambda: run.qmp.command("quit")] if run.qmp and run.qmp.file else []) + [proc.terminate, proc.kill]
    for ask in asks:
        try:
            ask()
            proc.wait(timeout=5)
            return
        except (CaptureError, OSError, ValueError, subprocess.TimeoutExpired):
            continue


def _header(run, scenario, cmd, version):
    shown = " ".join(shlex.quote(a) for a in cmd)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [f"captured with kvmviz capture (kvmviz {__version__}): QEMU on the real /dev/kvm",
             f"scenario: {scenario} - {SCENARIOS[scenario].summary}",
             f"command: {shown}   ($TMP: a temporary directory, removed afterwards)",
             f"qemu: {version}", f"kernel: {os.uname().release}", f"date: {now}"]
    lines += [f"step: {s}" for s in run.steps]
    lines += [f"qemu stderr: {s}" for s in run.stderr()]
    return "".join(f"# {line}\n" for line in lines).replace(run.tmp, "$TMP")


def _session(run, scenario):
    """Start QEMU, run the scenario's steps, quit; returns (command line, trace log text)."""
    cmd = _command(run, SCENARIOS[scenario].firmware)
    with open(run.path("stderr"), "wb") as err:
        run.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
    run.qmp = _Qmp(run)
    run.qmp.connect(run.path("qmp.sock"))
    for step in SCENARIOS[scenario].steps:
        step(run)
    run.qmp.command("quit")
    try:
        run.proc.wait(timeout=run.remaining())
    except subprocess.TimeoutExpired:
        raise CaptureError(f"timeout: QEMU did not quit within {run.timeout:g} s") from None
    with open(run.path("qemu.log"), encoding="utf-8", errors="replace") as f:
        return cmd, f.read()


def capture(scenario, timeout=60.0, qemu=QEMU, kvm="/dev/kvm"):
    """Run ``scenario`` (see ``SCENARIOS``) on a real QEMU and return the trace with its header.

    Raises ``CaptureError`` (one line) when QEMU is missing, ``kvm`` is
    unusable, QMP fails, or the whole capture takes longer than ``timeout``
    seconds. Models no kernel function: it records what the kernel did.

    >>> capture("reboot")
    Traceback (most recent call last):
    ...
    kvmviz.trace.capture.CaptureError: unknown scenario 'reboot'; choose from all, boot, hotplug, migrate, readonly
    """
    if scenario not in SCENARIOS:
        raise CaptureError(f"unknown scenario {scenario!r}; choose from {', '.join(sorted(SCENARIOS))}")
    version = qemu_version(qemu)
    check_kvm(kvm)
    with tempfile.TemporaryDirectory(prefix="kvmviz-capture-") as tmp:
        run = _Run(_find_qemu(qemu), tmp, timeout)
        try:
            cmd, log = _session(run, scenario)
        finally:
            _stop(run)
            if run.qmp is not None:
                run.qmp.close()
        return _header(run, scenario, cmd, version) + log


def read_header(text):
    """The ``# key: value`` lines before the first record, as a dict (repeated keys: the first).

    >>> read_header("# date: 2026-12-01T10:00:00Z\\n# step: cont\\n# step: quit\\n")["step"]
    'cont'
    """
    fields = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if sep:
            fields.setdefault(key, value)
    return fields
