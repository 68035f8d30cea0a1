"""A Debian 12 VM under qemu for the VM tests: the cached image (build-image.sh), the
accelerator, boot on a copy-on-write overlay, SSH through a forwarded port on 127.0.0.1,
and a clean shutdown.

Networking is qemu's user-mode stack (slirp): the guest is 10.0.2.15, the host's loopback is
10.0.2.2 from the guest, DNS is 10.0.2.3; ``hostfwd`` maps ``127.0.0.1:<port>`` of the host to
the guest's sshd, and ``guestfwd`` entries map a guest address:port to a command on the host
(one run per connection) — how the tests put a local apt repository behind a public name.
"""

from __future__ import annotations

import functools
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-image.sh"
QEMU = "qemu-system-x86_64"
#: Host programs the VM tests run -> the Debian package that has them.
HOST_PACKAGES = {QEMU: "qemu-system-x86", "qemu-img": "qemu-utils", "debootstrap": "debootstrap",
                 "mkfs.ext4": "e2fsprogs", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
                 "dpkg-deb": "dpkg", "gpg": "gpg"}


class VmError(Exception):
    """The image could not be built, the VM did not boot or SSH did not come up; the message
    carries the end of the relevant log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_host_packages() -> list[str]:
    """Debian packages (sorted, unique) whose programs the VM tests need and do not find."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return sorted({pkg for prog, pkg in HOST_PACKAGES.items() if shutil.which(prog, path=path) is None})


@dataclass(frozen=True)
class Image:
    """A built image directory (see build-image.sh)."""

    dir: Path

    @property
    def base(self) -> Path:
        return self.dir / "base.qcow2"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def host_key(self) -> str:
        """The guest's ed25519 host key, ``ssh-ed25519 AAAA…``."""
        return " ".join((self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def info(self) -> str:
        return (self.dir / ".complete").read_text()


def build_image(log: Path) -> tuple[Image, float]:
    """Run build-image.sh (a no-op when the image is cached); returns the image and the
    seconds it took. Raises VmError with the end of the log."""
    start = time.monotonic()
    with open(log, "w") as f:
        res = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=f, text=True,
                             timeout=1800)
    if res.returncode != 0:
        raise VmError(f"{BUILD_SCRIPT.name} failed (exit {res.returncode}); end of {log}:\n" + tail(log, 40))
    return Image(Path(res.stdout.strip().splitlines()[-1])), time.monotonic() - start


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _kernel_runs(accel: list[str], kernel: Path, seconds: float = 10.0) -> bool:
    """Whether ``kernel`` gets as far as printing its banner on the serial console with
    ``accel``: some hosts open /dev/kvm and create vCPUs but cannot run a stock kernel (a
    CPU model with an MSR the host refuses; PVM-style nested KVM, which runs only kernels
    built as its guests), so starting qemu is no proof."""
    argv = [QEMU, *accel, "-M", "pc", "-m", "256", "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1", "-serial", "stdio"]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return False
    out = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and b"Linux version" not in out:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    return b"Linux version" in out


@functools.lru_cache(maxsize=4)
def accelerator(kernel: Path) -> tuple[str, list[str]]:
    """(name, qemu arguments) for booting ``kernel``: KVM with the host's CPU model when
    /dev/kvm is there and the kernel runs on it (see :func:`_kernel_runs`; under nested KVM
    some hosts refuse the IA32_ARCH_CAPABILITIES MSR, so ``-arch-capabilities`` is the
    second try); else TCG, qemu's emulation, several times slower."""
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        for cpu in ("host", "host,-arch-capabilities"):
            args = ["-accel", "kvm", "-cpu", cpu]
            if _kernel_runs(args, kernel):
                return f"kvm (-cpu {cpu})", args
    return "tcg", ["-accel", "tcg,thread=multi", "-cpu", "max"]


@dataclass
class BootedVm:
    """What a test needs to reach the VM: the forwarded SSH port, root's private key, a
    known_hosts file with the VM's host key for ``[127.0.0.1]:port``, and the Vm itself."""

    port: int
    key: Path
    known_hosts: Path
    vm: "Vm"


@dataclass
class Vm:
    """One booted VM: an overlay of ``image`` in ``workdir``, sshd on ``127.0.0.1:ssh_port``.

    ``guestfwd``: ``(guest_ip, guest_port, host_port)`` triples: a guest connection to
    guest_ip:guest_port reaches 127.0.0.1:host_port of the host.
    ``drives``: files attached read-only as further virtio disks (``/dev/vdb``, ``/dev/vdc``…
    in order), raw: how large files (container images, binaries) get into the guest without
    SSH's encryption, which is slow under TCG.
    """

    image: Image
    workdir: Path
    memory_mb: int = 3072
    cpus: int = 2
    guestfwd: list[tuple[str, int, int]] = field(default_factory=list)
    drives: list[Path] = field(default_factory=list)
    #: more qemu arguments (e.g. a second NIC between two VMs: ``-netdev socket,…`` and its ``-device``)
    extra_args: list[str] = field(default_factory=list)
    ssh_port: int = 0
    proc: subprocess.Popen | None = None
    boot_seconds: float = 0.0

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def key(self) -> Path:
        return self.image.key

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    def start(self, ssh_timeout: float | None = None) -> "Vm":
        """Create the overlay, start qemu and wait until ``ssh root@…`` works.

        Raises:
            VmError: qemu exits, or SSH does not answer within ``ssh_timeout`` seconds
                (default 180 with KVM, 900 with TCG); with the end of the serial console.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        overlay = self.workdir / "disk.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.image.base),
                        str(overlay)], check=True)
        self.ssh_port = free_port()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.ssh_port} {self.image.host_key}\n")
        accel_name, accel = accelerator(self.image.kernel)
        netdev = f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        for ip, port, host_port in self.guestfwd:
            # one connector per guest connection (a chardev would carry only one connection)
            connector = f"{QEMU_FORWARDER} 127.0.0.1 {host_port}"
            netdev += f",guestfwd=tcp:{ip}:{port}-cmd:{connector}"
        argv = [QEMU, *accel, "-M", "pc", "-smp", str(self.cpus), "-m", str(self.memory_mb),
                "-nodefaults", "-display", "none", "-no-reboot",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
                "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
                *[a for d in self.drives for a in ("-drive", f"file={d},if=virtio,format=raw,readonly=on")],
                "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=",
                "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
                "-serial", f"file:{self.console_log}", "-pidfile", str(self.workdir / "qemu.pid"),
                *self.extra_args]
        (self.workdir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        log = open(self.workdir / "qemu.log", "w")
        start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        timeout = ssh_timeout or (180.0 if accel_name.startswith("kvm") else 900.0)
        deadline = start + timeout
        last = ""
        while True:
            if self.proc.poll() is not None:
                raise VmError(f"qemu exited with {self.proc.returncode} ({accel_name}); qemu.log:\n"
                              + tail(self.workdir / "qemu.log") + "\nconsole:\n" + tail(self.console_log))
            try:
                res = self.ssh("true", timeout=15, check=False, connect_timeout=5)
            except VmError as e:  # sshd still starting on a slow (TCG, loaded) host: a hung handshake
                res, last = None, str(e)
                # back off: handshakes piling up in a starved guest make sshd drop new ones
                # (MaxStartups), which kept a low-priority VM unreachable
                time.sleep(15)
            if res is not None and res.returncode == 0:
                break
            if res is not None:
                last = res.stderr.strip()
            if time.monotonic() > deadline:
                self.kill()
                raise VmError(f"no SSH to the VM within {timeout:.0f} s ({accel_name}); last ssh error: {last}\n"
                              "console:\n" + tail(self.console_log, 40))
            time.sleep(1)
        self.boot_seconds = time.monotonic() - start
        return self

    def ssh_argv(self, connect_timeout: float = 10) -> list[str]:
        return ["ssh", "-p", str(self.ssh_port), "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={int(connect_timeout)}",
                "-o", "LogLevel=ERROR", "root@127.0.0.1"]

    def ssh(self, command: str, *, timeout: float = 600, check: bool = True, input: str | bytes | None = None,
            connect_timeout: float = 10) -> subprocess.CompletedProcess:
        """Run a shell command line as root in the VM; ``check`` raises VmError on a
        non-zero exit, with its output."""
        text = not isinstance(input, bytes)
        try:
            res = subprocess.run([*self.ssh_argv(connect_timeout), command], input=input, capture_output=True,
                                 text=text, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise VmError(f"`{command}` in the VM took longer than {timeout} s") from e
        if check and res.returncode != 0:
            raise VmError(f"`{command}` in the VM exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` in the VM (parent directories created)."""
        q = shlex.quote(path)
        self.ssh(f"mkdir -p \"$(dirname {q})\" && cat > {q}.tmp && chmod {mode:o} {q}.tmp && mv {q}.tmp {q}",
                 input=data)

    def stop(self, timeout: float = 60) -> None:
        """``systemctl poweroff`` over SSH and wait for qemu to exit; kill it after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.ssh("systemctl poweroff", timeout=15, check=False)
        except VmError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


#: A connector for guestfwd: copies between its stdin/stdout (the guest's connection) and a
#: TCP connection to the host's loopback, so no netcat/socat is needed on the host.
FORWARDER_SCRIPT = HERE / "forward.py"
QEMU_FORWARDER = f"{sys.executable} {FORWARDER_SCRIPT}"
