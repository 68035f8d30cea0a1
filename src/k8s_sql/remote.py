"""A :class:`~k8s_sql.host.Host` reached over SSH with fabric (``k8s-sql init --host user@addr``).

Phases do not know they run remotely: every command and file operation of the Host
interface becomes a command over one SSH connection.

- Privileges: a login user other than root runs everything through ``sudo -n`` (never a
  password prompt); :meth:`RemoteHost.connect` checks that up front and fails clearly.
- Files are read as base64 (binary-safe, through sudo), and written by an sftp upload to a
  private temporary file followed by ``install -m MODE -o OWNER -g GROUP`` into a temporary
  name beside the target and an atomic ``mv`` over it.
- Host keys: unknown keys are rejected (paramiko ``RejectPolicy``) against
  ``~/.ssh/known_hosts`` or ``--ssh-known-hosts``; the error says how to add the key.
"""

from __future__ import annotations

import base64
import getpass
import io
import os
import shlex
import socket
import sys

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut

from k8s_sql.errors import CommandError, K8sSqlError
from k8s_sql.host import FileInfo, Host, Result, _check

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class UnknownHostKey(paramiko.SSHException):
    """The server's host key is not in the known_hosts file (raised by :class:`_Reject`)."""

    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"unknown host key for {hostname}")
        self.hostname = hostname
        self.key = key


class _Reject(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, keeping the offered key for the error message."""

    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(hostname, key)


def parse_target(target: str) -> tuple[str, str]:
    """``user@addr`` (or ``addr``, ``user@[::1]``) -> ``(user, addr)``; the user defaults to
    the local login name, as with ssh.

    Raises:
        K8sSqlError: empty user or address.
    """
    user, sep, addr = target.rpartition("@")
    if not sep:
        user = getpass.getuser()
    addr = addr.strip()
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    if not addr or (sep and not user):
        raise K8sSqlError(f"--host {target!r} is not user@address", hint="e.g. --host root@192.0.2.10")
    return user, addr


class _Prefixed(io.TextIOBase):
    """A stream that writes whole lines to stdout as ``[name] line``."""

    def __init__(self, name: str):
        self.name_ = name
        self.buf = ""

    def write(self, s: str) -> int:
        self.buf += s
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            sys.stdout.write(f"[{self.name_}] {line}\n")
        sys.stdout.flush()
        return len(s)

    def flush(self) -> None:
        if self.buf:
            sys.stdout.write(f"[{self.name_}] {self.buf}\n")
            self.buf = ""
        sys.stdout.flush()


class RemoteHost(Host):
    """A machine reached over SSH (fabric ``Connection``), acting as root.

    Args:
        target: ``user@address``.
        port: SSH port (default 22, or from ``~/.ssh/config``).
        key_file: private key to authenticate with; then only this key is tried (like
            ``ssh -i KEY -o IdentitiesOnly=yes``). Without it: the agent and ~/.ssh/id_*.
        known_hosts: known_hosts file to check the host key against (default
            ``~/.ssh/known_hosts``); unknown keys are rejected.
        connect_timeout: seconds to wait for the TCP connection and SSH handshake.

    Commands run with ``sudo -n`` when the login user is not root. ``name`` is the
    address, used as the prefix of streamed output and in error messages.
    """

    def __init__(self, target: str, *, port: int | None = None, key_file: str | None = None,
                 known_hosts: str | None = None, connect_timeout: float = 10.0):
        self.user, self.address = parse_target(target)
        self.port = port or 22
        self.key_file = key_file
        self.known_hosts = os.path.expanduser(known_hosts or DEFAULT_KNOWN_HOSTS)
        self.explicit_known_hosts = known_hosts is not None
        self.name = self.address
        self.sudo = False
        connect_kwargs: dict = {}
        if key_file:
            connect_kwargs = {"key_filename": [key_file], "look_for_keys": False, "allow_agent": False}
        self.conn = Connection(self.address, user=self.user, port=self.port, connect_timeout=int(connect_timeout),
                               connect_kwargs=connect_kwargs)
        self._connected = False

    @property
    def destination(self) -> str:
        """``user@address:port``, as shown in error messages."""
        return f"{self.user}@{self.address}:{self.port}"

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> "RemoteHost":
        """Open the SSH connection, check the host key and find out whether sudo is needed.

        Raises:
            K8sSqlError: unknown or changed host key, authentication failure, host unreachable,
                or a non-root login user that cannot ``sudo -n``; each names the host and the
                next step.
        """
        if self._connected:
            return self
        where = self.destination
        if self.key_file and not os.path.isfile(self.key_file):
            raise K8sSqlError(f"SSH key {self.key_file} does not exist", where=where,
                              hint="pass the private key file with --ssh-key")
        client = self.conn.client
        client.set_missing_host_key_policy(_Reject())
        if os.path.exists(self.known_hosts):
            client.load_host_keys(self.known_hosts)
        elif self.explicit_known_hosts:
            raise K8sSqlError(f"known_hosts file {self.known_hosts} does not exist", where=where,
                              hint="pass an existing file with --ssh-known-hosts")
        keyscan = f"ssh-keyscan -p {self.port} {self.address} >> {self.known_hosts}"
        try:
            self.conn.open()
        except UnknownHostKey as e:
            fp = e.key.fingerprint if hasattr(e.key, "fingerprint") else e.key.get_base64()
            raise K8sSqlError(
                f"the host key of {e.hostname} ({e.key.get_name()} {fp}) is not in {self.known_hosts}; "
                "refusing to connect to an unknown host", where=where,
                hint=f"check the fingerprint on the host (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), "
                f"then add it: `{keyscan}`") from None
        except paramiko.BadHostKeyException as e:
            raise K8sSqlError(
                f"the host key of {e.hostname} changed (got {e.key.get_name()}, {self.known_hosts} has another "
                "one): the host was reinstalled, or someone is intercepting the connection", where=where,
                hint=f"if the change is expected: `ssh-keygen -R '[{self.address}]:{self.port}' -f "
                f"{self.known_hosts}` and `{keyscan}`") from None
        except paramiko.AuthenticationException as e:
            key = f"key {self.key_file}" if self.key_file else "the agent's and ~/.ssh/id_* keys"
            raise K8sSqlError(
                f"SSH authentication as {self.user} with {key} failed ({e})", where=where,
                hint=f"add the public key to ~{self.user}/.ssh/authorized_keys on {self.address} "
                f"(`ssh-copy-id -i KEY -p {self.port} {self.user}@{self.address}`), or pass another --ssh-key"
            ) from None
        except (OSError, socket.timeout, paramiko.SSHException) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise K8sSqlError(
                f"cannot reach {self.address} port {self.port} over SSH: {reason}", where=where,
                hint="check the address and --ssh-port, that sshd runs on the host and that no firewall "
                "blocks the port") from None
        self._connected = True
        uid = self._exec("id -u").stdout.strip()
        if uid != "0":
            res = self._exec("sudo -n true")
            if not res.ok:
                detail = (res.stderr or res.stdout).strip().splitlines()
                raise K8sSqlError(
                    f"user {self.user} cannot run sudo without a password on {self.address}"
                    + (f" ({detail[-1]})" if detail else ""), where=where,
                    hint=f"allow it with a line `{self.user} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/k8s-sql "
                    f"(edit with visudo) on the host, or connect as root (--host root@{self.address})")
            self.sudo = True
        return self

    def close(self) -> None:
        """Close the SSH connection (reopened by the next use)."""
        self.conn.close()
        self._connected = False

    def _exec(self, command: str, *, input: str | None = None, stream: bool = False,
              timeout: float | None = None) -> Result:
        """Run a shell command line as the login user; raises CommandError on SSH failures."""
        kwargs: dict = {"warn": True, "pty": False, "timeout": timeout,
                        "in_stream": io.StringIO(input) if input is not None else False}
        if stream:
            out = _Prefixed(self.name)
            kwargs.update(hide=False, out_stream=out, err_stream=out)
        else:
            kwargs["hide"] = True
        try:
            r = self.conn.run(command, **kwargs)
        except CommandTimedOut:
            raise CommandError(f"`{command}` did not finish within {timeout} s", where=self.destination) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise CommandError(f"the SSH connection failed while running `{command}`: {e}",
                               where=self.destination, hint="check the network and the host, then run again") from None
        finally:
            if stream:
                out.flush()
        return Result(r.exited, r.stdout, r.stderr)

    def _root_cmd(self, argv: list[str], user: str | None = None, env: dict[str, str] | None = None) -> str:
        """The command line for ``argv`` as root (or as ``user``), through sudo if needed."""
        # a missing binary exits 127 with a marker, also through sudo (which says exit 1)
        argv = ["sh", "-c", 'command -v "$1" >/dev/null 2>&1 || { echo "$1: k8s-sql: not found" >&2; exit 127; }; '
                'exec "$@"', "sh", *[str(a) for a in argv]]
        if env:
            argv = ["env", *[f"{k}={v}" for k, v in env.items()], *argv]
        if user not in (None, "root"):
            prefix = ["sudo", "-n", "-u", user, "--"] if self.sudo else ["runuser", "-u", user, "--"]
        else:
            prefix = ["sudo", "-n", "--"] if self.sudo else []
        return shlex.join(prefix + argv)

    # -- Host interface -------------------------------------------------------------------
    def run(self, argv, *, check=True, input=None, user=None, env=None, stream=False, timeout=None):
        self.connect()
        res = self._exec(self._root_cmd(argv, user, env), input=input, stream=stream, timeout=timeout)
        if res.returncode == 127 and "k8s-sql: not found" in res.stderr:
            raise CommandError(f"`{argv[0]}` is not installed", where=self.name,
                               hint=f"install the package that provides {argv[0]} on {self.address}")
        return _check([str(a) for a in argv], res, self.name) if check else res

    def _sh(self, script: str, *args: str, check: bool = True) -> Result:
        return self.run(["sh", "-c", script, "sh", *args], check=check)

    def read_bytes(self, path):
        res = self._sh('[ -e "$1" ] || exit 3; base64 -- "$1"', path, check=False)
        if res.returncode == 3:
            return None
        if not res.ok:
            raise CommandError(f"cannot read {path}: {res.stderr.strip()}", where=self.name)
        return base64.b64decode(res.stdout)

    def write_bytes(self, path, data, *, mode=0o644, owner=None, group=None, tmp_dir=None):
        self.connect()
        upload = self._exec("umask 077; mktemp").stdout.strip()
        if not upload:
            raise CommandError("cannot create a temporary file for the upload", where=self.destination)
        try:
            self.conn.sftp().putfo(io.BytesIO(data), upload)
        except (OSError, paramiko.SSHException) as e:
            self._exec(shlex.join(["rm", "-f", upload]))
            raise CommandError(f"sftp upload of {path} failed: {e}", where=self.destination) from None
        install = ["install", "-m", f"{mode:04o}"]
        if owner:
            install += ["-o", str(owner)]
        if group:
            install += ["-g", str(group)]
        parent = os.path.dirname(path) or "/"
        tdir = tmp_dir or parent
        script = (
            'set -e; up=$1; target=$2; tdir=$3; parent=$4; shift 4; umask 022\n'
            'trap \'rm -f "$up"; [ -z "${tmp:-}" ] || rm -f "$tmp"\' EXIT\n'
            '[ -d "$parent" ] || mkdir -p -m 0755 "$parent"\n'
            '[ -d "$tdir" ] || mkdir -p -m 0700 "$tdir"\n'
            'tmp=$(mktemp -p "$tdir" .k8s-sql-XXXXXX)\n'
            '"$@" "$up" "$tmp"\n'
            'sync "$tmp" 2>/dev/null || true\n'
            'mv -f "$tmp" "$target"; tmp=\n'
        )
        res = self._sh(script, upload, path, tdir, parent, *install, check=False)
        if not res.ok:
            raise CommandError(f"cannot write {path}: {(res.stderr or res.stdout).strip()}", where=self.name,
                               hint="check that the owner/group exist and the filesystem is writable")

    def stat(self, path):
        res = self._sh('[ -e "$1" ] || exit 3; stat -L -c "%a %U %G %s %u %g" -- "$1"', path, check=False)
        if res.returncode == 3:
            return None
        if not res.ok:
            raise CommandError(f"cannot stat {path}: {res.stderr.strip()}", where=self.name)
        mode, owner, group, size, uid, gid = res.stdout.split()
        return FileInfo(int(mode, 8), uid if owner == "UNKNOWN" else owner,
                        gid if group == "UNKNOWN" else group, int(size))

    def remove(self, path):
        # exit 3: a directory, which is never removed with its content
        res = self._sh('if [ -d "$1" ] && [ ! -L "$1" ]; then exit 3; fi; rm -f -- "$1"', path, check=False)
        if res.returncode == 3:
            raise CommandError(f"will not remove {path}: it is a directory", where=self.name,
                               hint="k8s-sql removes only files it wrote, and directories only when empty")
        if not res.ok:
            raise CommandError(f"cannot remove {path}: {(res.stderr or res.stdout).strip()}", where=self.name)

    def rmdir(self, path):
        res = self._sh('[ -e "$1" ] || [ -L "$1" ] || exit 0; rmdir -- "$1"', path, check=False)
        if not res.ok:
            raise CommandError(f"cannot remove the directory {path}: {(res.stderr or res.stdout).strip()}",
                               where=self.name)

    def is_dir(self, path):
        return self._sh('[ -d "$1" ] && [ ! -L "$1" ]', path, check=False).ok

    def makedirs(self, path, mode=0o755):
        self._sh('umask 022; [ -d "$2" ] || mkdir -p -m "$1" -- "$2"', f"{mode:04o}", path)

    def listdir(self, path):
        res = self._sh('[ -d "$1" ] || exit 0; find "$1" -mindepth 1 -maxdepth 1 -printf "%f\\n"', path)
        return sorted(n for n in res.stdout.split("\n") if n)


def open_host(target: str, *, port: int | None = None, key_file: str | None = None,
              known_hosts: str | None = None) -> RemoteHost:
    """A connected :class:`RemoteHost` (see its arguments); raises K8sSqlError as ``connect``."""
    return RemoteHost(target, port=port, key_file=key_file, known_hosts=known_hosts).connect()
