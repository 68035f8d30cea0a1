"""A real OpenSSH server on 127.0.0.1 for the remote-mode tests.

Debian's ``/usr/sbin/sshd -D -e -f <config>`` on a free port, with its own ed25519 host key,
per-user authorized keys in the temp dir (``AuthorizedKeysFile <dir>/authorized_keys/%u``)
and a known_hosts file holding the host key. Runs as root; ``StrictModes no`` because the
temp dir lives under the world-writable /tmp. Test users (``add_user``) are made with
useradd (optionally with a sudoers.d entry) and removed again by ``stop``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from procs import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: str, comment: str = "k8s-sql-test") -> str:
    """Make an ed25519 key pair at ``path`` (+ ``.pub``); returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True)
    with open(path + ".pub") as f:
        return f.read().strip()


class Sshd:
    """One sshd on loopback. ``port``, ``client_key`` (private key authorized for every
    user added), ``known_hosts`` (holds this server's host key), ``dir``."""

    def __init__(self, path: str | None = None):
        #: PATH of the SSH sessions (sshd's SetEnv), e.g. with stand-in binaries first
        self.path = path
        self.dir = tempfile.mkdtemp(prefix="k8s-sql-sshd-")
        os.chmod(self.dir, 0o755)  # sshd reads authorized_keys/<user> as that user
        self.port = free_port()
        self.host_key = os.path.join(self.dir, "ssh_host_ed25519_key")
        self.client_key = os.path.join(self.dir, "id_ed25519")
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.keys_dir = os.path.join(self.dir, "authorized_keys")
        self.log_file = os.path.join(self.dir, "sshd.log")
        self.proc: subprocess.Popen | None = None
        self.users: list[str] = []
        self.sudoers: list[str] = []

    def start(self) -> "Sshd":
        host_pub = keygen(self.host_key, "host")
        self.client_pub = keygen(self.client_key)
        os.makedirs(self.keys_dir, mode=0o755)
        with open(self.known_hosts, "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {' '.join(host_pub.split()[:2])}\n")
        self.authorize("root")
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
                f"PidFile {self.dir}/sshd.pid\nAuthorizedKeysFile {self.keys_dir}/%u\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
                "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
                + (f"SetEnv PATH={self.path}\n" if self.path else ""))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        log = open(self.log_file, "w")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("sshd did not start:\n" + open(self.log_file).read())
                time.sleep(0.05)

    def authorize(self, user: str, pub: str | None = None) -> None:
        with open(os.path.join(self.keys_dir, user), "w") as f:
            f.write((pub or self.client_pub) + "\n")

    def add_user(self, name: str, *, sudo: bool) -> str:
        """A login user (shell /bin/sh, no password: ``*``) authorized with ``client_key``;
        ``sudo`` adds ``NOPASSWD: ALL`` in /etc/sudoers.d. Removed by :meth:`stop`."""
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-p", "*", name], check=True)
        self.users.append(name)
        self.authorize(name)
        if sudo:
            path = f"/etc/sudoers.d/k8s-sql-test-{name}"
            with open(path, "w") as f:
                f.write(f"{name} ALL=(ALL) NOPASSWD: ALL\n")
            os.chmod(path, 0o440)
            self.sudoers.append(path)
        return name

    def stop(self) -> None:
        stop_process(self.proc)
        for path in self.sudoers:
            if os.path.exists(path):
                os.unlink(path)
        for name in self.users:
            subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
        self.users, self.sudoers = [], []
        shutil.rmtree(self.dir, ignore_errors=True)
