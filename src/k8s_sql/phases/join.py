"""Joining a node to the cluster of the first control-plane node (``k8s-sql join``).

Two contexts take part: the first control-plane node (``cp``: it has the admin
kubeconfig, the datastore pki and PostgreSQL) and the joining node (``node``). Phases:

1. on the joining node: ``prereqs`` (no PostgreSQL on a worker, only psql on a control-plane
   node), and for a control-plane node ``shim`` (the shim's image);
2. control plane, local PostgreSQL only — on the first node: :class:`AllowClient` adds the
   address the joining node connects from to ``paths.postgresClients``, then the
   ``postgres`` phase runs there, so PostgreSQL also listens on the first node's advertise
   address and its pg_hba block lets that address in (``hostssl … cert``);
3. on the joining node, :class:`Join`: for a control plane, the datastore certificates its
   shim and kube-apiserver need are copied from the first node (not the CA key, not
   PostgreSQL's server key), the sidecar patch is rendered with the datastore at the first
   node's address, and a verify-full login from the joining node is checked; then, at
   apply time (a dry run creates no token), ``kubeadm join`` with a fresh join command from
   the first node (``kubeadm token create --print-join-command``; for a control plane also
   ``kubeadm init phase upload-certs --upload-certs`` for the certificate key, ``--patches``).
   Tokens and keys are never printed. A node that has ``kubelet.conf`` is already joined.
"""

from __future__ import annotations

import copy
import posixpath
import re
import shlex

from k8s_sql.config import Cluster, load
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host
from k8s_sql.phases.kubeadm_init import init_config_path
from k8s_sql.kubeadm import node as kubeadm_node
from k8s_sql.kubeadm import sidecar
from k8s_sql.kubeadm.cluster import require_control_plane_endpoint
from k8s_sql.pg import clients as pgclients
from k8s_sql.pg import connect
from k8s_sql.phases.base import Action, Change, Context, Phase, file_change
from k8s_sql.phases.postgres import Postgres
from k8s_sql.phases.prereqs import Prereqs
from k8s_sql.phases.runner import load_phase, run_phases
from k8s_sql.pki import files

#: The datastore files a further control-plane node needs: the CA certificate, the shim's
#: serving and PostgreSQL client pairs, kube-apiserver's client pair for the shim.
CONTROL_PLANE_PKI = (files.CA_CERT, files.SHIM_SERVER_CERT, files.SHIM_SERVER_KEY,
                     files.SHIM_PG_CLIENT_CERT, files.SHIM_PG_CLIENT_KEY,
                     files.APISERVER_CLIENT_CERT, files.APISERVER_CLIENT_KEY)


def kubelet_conf(ctx: Context) -> str:
    """``kubelet.conf`` beside ``paths.kubeconfig`` (kubeadm writes both in /etc/kubernetes)."""
    return posixpath.join(posixpath.dirname(ctx.config.paths.kubeconfig), "kubelet.conf")


def join_command(cp: Host, control_plane: bool) -> list[str]:
    """A fresh ``kubeadm join`` argv from the first node (token TTL 15 minutes); for a
    control plane with ``--control-plane --certificate-key KEY``.

    Raises:
        K8sSqlError: kubeadm on the first node fails or prints something unexpected.
    """
    res = cp.run(["kubeadm", "token", "create", "--print-join-command", "--ttl", "15m"], check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("kubeadm join ")]
    if not res.ok or not lines:
        raise K8sSqlError(f"`kubeadm token create --print-join-command` failed: {(res.stderr or res.stdout).strip()}",
                          where=cp.name, hint="check that the first node's API server is up (`k8s-sql status`)")
    argv = shlex.split(lines[-1])
    if control_plane:
        res = cp.run(["kubeadm", "init", "phase", "upload-certs", "--upload-certs"], check=False)
        keys = re.findall(r"^([0-9a-f]{64})$", res.stdout, re.M)
        if not res.ok or not keys:
            raise K8sSqlError("`kubeadm init phase upload-certs --upload-certs` gave no certificate key",
                              where=cp.name, hint=(res.stderr or res.stdout).strip()[-300:] or None)
        argv += ["--control-plane", "--certificate-key", keys[-1]]
    return argv


def masked(argv: list[str]) -> str:
    """The command line with the token and certificate key replaced by ``***``."""
    out, hide = [], False
    for a in argv:
        out.append("***" if hide else a)
        hide = a in ("--token", "--certificate-key")
    return " ".join(out)


def first_node_config(cp: Host, joining: Cluster) -> tuple[Cluster, str]:
    """The first node's own configuration, as ``init`` recorded it there
    (:func:`~k8s_sql.phases.kubeadm_init.init_config_path`: beside the default state file, or
    beside the joining configuration's ``paths.stateFile``), and where it came from. A first
    node initialised before that record existed falls back to a copy of ``joining``, said so.

    Raises:
        ConfigError: the recorded file does not parse (names the file on the first node).
    """
    candidates = dict.fromkeys([init_config_path(Cluster()), init_config_path(joining)])
    for path in candidates:
        text = cp.read_text(path)
        if text is not None:
            return load(text, f"{cp.name}:{path}"), f"{cp.name}:{path}"
    return copy.deepcopy(joining), f"the joining node's configuration (no {' or '.join(candidates)} on {cp.name})"


def _require_initialised(cp: Context) -> None:
    if not cp.host.exists(cp.config.paths.kubeconfig):
        raise K8sSqlError("the first control-plane node has no admin kubeconfig: it is not initialised",
                          where=f"{cp.host.name}:{cp.config.paths.kubeconfig}",
                          hint="run `k8s-sql init` there first, or point --control-plane-host at it")


class AllowClient(Phase):
    """On the first node: list ``address`` (the joining node's source address) in
    ``paths.postgresClients``, which the ``postgres`` phase turns into a pg_hba line."""

    name = "postgres-clients"

    def __init__(self, address: str, node_name: str):
        self.address, self.node_name = address, node_name
        self.title = f"let {node_name} ({address}) log in to PostgreSQL as the shim's role"

    def plan(self, ctx: Context) -> list[Change]:
        path = ctx.config.paths.postgres_clients
        old = ctx.host.read_text(path)
        if old is not None:
            pgclients.parse(old, f"{ctx.host.name}:{path}")  # a broken file stops here, not half-way
        new = pgclients.add(old, self.address, f"control-plane node {self.node_name}")
        change = file_change(ctx.host, path, new.encode(), 0o644) if new is not None else None
        return [change] if change else []


class Join(Phase):
    """The ``join`` step on the joining node (see the module doc).

    Args:
        cp: the first control-plane node's context (its host and configuration).
        control_plane: join as a further control-plane node with its own shim sidecar.
        datastore_host: the address of the first node's PostgreSQL as the joining node's
            shim reaches it (control plane, local PostgreSQL); ``None`` keeps
            ``postgres.host``/``postgres.uri`` as configured.
        extra_args: more ``kubeadm join`` arguments (``--apiserver-advertise-address …``).
    """

    name = "join"
    title = "kubeadm join with a fresh token from the first control-plane node"

    def __init__(self, cp: Context, control_plane: bool = False, datastore_host: str | None = None,
                 extra_args: list[str] | None = None):
        self.cp = cp
        self.control_plane = control_plane
        self.datastore_host = datastore_host
        self.extra_args = list(extra_args or [])

    def shim_config(self, ctx: Context):
        """The joining node's configuration with the first node's PostgreSQL as datastore."""
        cfg = copy.deepcopy(ctx.config)
        if self.datastore_host and cfg.postgres.mode == "local":
            cfg.postgres.host, cfg.postgres.port = self.datastore_host, self.cp.config.postgres.port
        return cfg

    def plan(self, ctx: Context) -> list[Change]:
        cp = self.cp
        _require_initialised(cp)
        if ctx.host.exists(kubelet_conf(ctx)):
            ctx.console.print(f"  {ctx.host.name} is already part of a cluster ({kubelet_conf(ctx)} exists)",
                              markup=False, highlight=False)
            return []
        changes: list[Change] = []
        extra = list(self.extra_args)
        if self.control_plane:
            changes += self._control_plane_files(ctx)
            cfg = self.shim_config(ctx)
            conninfo = connect.local_conninfo(cfg) if cfg.postgres.mode == "local" else \
                connect.external_conninfo(cfg.postgres.uri)[0]
            changes.append(Action(
                f"check that {ctx.host.name} logs in to PostgreSQL at {cfg.postgres.host}:{cfg.postgres.port} "
                "as the shim does (verify-full, client certificate)",
                lambda c: self._probe(c, conninfo), detail=f"psql -d '{conninfo}'", argvs=[["psql", "-d", conninfo]]))
            extra += ["--patches", ctx.config.paths.patches_dir]
        kind = "control-plane node" if self.control_plane else "worker"
        changes.append(Action(
            f"kubeadm join as a {kind} (token from {cp.host.name})", lambda c: self._join(c, extra),
            detail="kubeadm token create --print-join-command"
            + (" and kubeadm init phase upload-certs --upload-certs" if self.control_plane else "")
            + f" on {cp.host.name}, then kubeadm join … {' '.join(extra)} on {ctx.host.name}",
            argvs=[["kubeadm", "join", *extra]]))  # on this node; kubeadm token create runs on the first
        return changes

    def _control_plane_files(self, ctx: Context) -> list[Change]:
        """The datastore certificates copied from the first node (mode and owner kept) and
        the sidecar patch rendered for this node."""
        cp, changes = self.cp, []
        for name in CONTROL_PLANE_PKI:
            src = files.path(cp.config.paths.pki_dir, name)
            info, data = cp.host.stat(src), cp.host.read_bytes(src)
            if info is None or data is None:
                raise K8sSqlError("a datastore certificate is missing on the first node", where=f"{cp.host.name}:{src}",
                                  hint="run `k8s-sql init phase pki` there")
            changes.append(file_change(ctx.host, files.path(ctx.config.paths.pki_dir, name), data, info.mode,
                                       owner=info.owner, group=info.group, secret=name.endswith(".key")))
        patch = sidecar.patch_text(self.shim_config(ctx)).encode()
        changes.append(file_change(ctx.host, posixpath.join(ctx.config.paths.patches_dir, sidecar.PATCH_FILE), patch,
                                   0o600, owner="root", group="root"))
        return [c for c in changes if c]

    def _probe(self, ctx: Context, conninfo: str) -> None:
        info = connect.tls_probe(ctx.host, conninfo)
        ctx.console.print(f"  reached: {info.get('version')} as role {info.get('user')}", markup=False)

    def _join(self, ctx: Context, extra: list[str]) -> None:
        argv = join_command(self.cp.host, self.control_plane) + extra
        ctx.console.print(f"  {masked(argv)}", markup=False, highlight=False)
        res = ctx.host.run(argv, stream=True, check=False, timeout=1800)
        if not res.ok:
            raise K8sSqlError(f"kubeadm join failed (exit {res.returncode})", where=ctx.host.name,
                              hint="see kubeadm's output above; `k8s-sql reset` on the node before trying again "
                                   "(not `kubeadm reset`: it empties /etc/kubernetes/pki, the datastore certificates "
                                   "with it)")

    def verify(self, ctx: Context) -> None:
        if not ctx.host.exists(kubelet_conf(ctx)):
            raise K8sSqlError("kubeadm join finished but kubelet.conf is missing", where=ctx.host.name,
                              hint="see `journalctl -u kubelet` on the node")


def run_join(cp: Context, node: Context, *, control_plane: bool = False, skip: frozenset[str] = frozenset(),
             apiserver_advertise_address: str | None = None) -> int:
    """Join ``node`` to the cluster of ``cp`` (see the module doc); returns the number of
    changes made or, in a dry run, planned. ``skip``: phases not to run on the joining node
    (``prereqs``, ``shim``).

    Raises:
        K8sSqlError: from the first phase that fails; the first node has no route from the
            joining node.
    """
    _require_initialised(cp)  # before anything is installed on the joining node
    if control_plane:  # kubeadm would refuse only after the node was prepared
        require_control_plane_endpoint(cp.host, cp.config)
    phases: list[Phase] = []
    if "prereqs" not in skip:
        phases.append(Prereqs(postgres="client" if control_plane else "none"))
    if control_plane and "shim" not in skip:
        phases.append(load_phase("shim"))
    total = run_phases(phases, node, summary=False) if phases else 0
    datastore_host = None
    if control_plane and cp.config.postgres.mode == "local":
        datastore_host, _ = kubeadm_node.advertise_address(cp.host, cp.config)
        source = kubeadm_node.source_address(node.host, datastore_host)
        if source is None:
            raise K8sSqlError(f"{node.host.name} has no route to the first node's address {datastore_host}",
                              where=node.host.name, hint="check the network, or set node.advertiseAddress in the "
                              "configuration to an address both nodes share")
        total += run_phases([AllowClient(source, node.host.name), Postgres()], cp, summary=False)
    extra = ["--apiserver-advertise-address", apiserver_advertise_address] if apiserver_advertise_address else []
    total += run_phases([Join(cp, control_plane, datastore_host, extra)], node, summary=False)
    if node.dry_run:
        node.console.print(f"[bold]dry run:[/bold] {total} change(s) planned, nothing was changed")
    return total
