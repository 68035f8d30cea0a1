"""Joining a node to the cluster of the first control-plane node (``k8s-sql join``).

Two contexts take part: the first control-plane node (``cp``: it has the admin
kubeconfig, the datastore pki and PostgreSQL) and the joining node (``node``). Phases:

1. on the joining node: ``prereqs`` (no PostgreSQL on a worker, only psql on a control-plane
   node), and for a control-plane node ``shim`` (the shim's image);
2. control plane with ``postgres.ha`` — on the joining node: the pg_auto_failover node
   certificate copied and a PostgreSQL server certificate for its address issued by the
   first node's CA (:class:`~k8s_sql.phases.postgres_ha.JoinPki`), then a keeper registered
   with the first node's monitor (:class:`~k8s_sql.phases.postgres_ha.PostgresHa`); its
   sidecar gets the formation's multi-host URI. Otherwise, local PostgreSQL only — on the
   first node: :class:`AllowClient` adds the
   address the joining node connects from to ``paths.postgresClients``, then the
   ``postgres`` phase runs there, so PostgreSQL also listens on the first node's advertise
   address and its pg_hba block lets that address in (``hostssl … cert``);
3. on the joining node, :class:`Join`: for a control plane, the datastore certificates its
   shim and kube-apiserver need are copied from the first node (not the CA key, not
   PostgreSQL's server key), the sidecar patch is rendered with the datastore at the first
   node's address, and a verify-full login from the joining node is checked; then, at
   apply time (a dry run creates no token), ``kubeadm join --config`` with a JoinConfiguration
   (:func:`~k8s_sql.kubeadm.config.render_join`) made from a fresh join command of the first
   node (``kubeadm token create --print-join-command``; for a control plane also ``kubeadm
   init phase upload-certs --upload-certs`` for the certificate key, and the patches
   directory). kubeadm refuses ``--config`` beside the discovery, control-plane and patches
   flags, so everything is in the file. It holds the token and the key: written 0600, removed
   after a successful join (kept, 0600, after a failed one for inspection: the token expires
   after 15 minutes, the key after 2 hours); neither is ever printed. A node that has
   ``kubelet.conf`` is already joined.
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
from k8s_sql.kubeadm import config as kconfig
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


def parse_join_command(line: str) -> kconfig.Discovery:
    """The discovery of a ``kubeadm join HOST:PORT --token T --discovery-token-ca-cert-hash H``
    line (kubeadm token create --print-join-command; the hash flag may repeat).

    Raises:
        K8sSqlError: no endpoint, token or CA hash (the error never contains the line: it
            holds the token).
    """
    argv = shlex.split(line)
    endpoint, token, hashes = None, None, []
    i = 2  # after "kubeadm join"
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if name in ("--token", "--discovery-token-ca-cert-hash"):
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if name == "--token":
                token = value
            else:
                hashes.append(value)
        elif not a.startswith("-") and endpoint is None:
            endpoint = a
        i += 1
    if not (endpoint and token and hashes):
        missing = [n for n, v in (("the API server endpoint", endpoint), ("--token", token),
                                  ("--discovery-token-ca-cert-hash", hashes)) if not v]
        raise K8sSqlError(f"the join command the first node printed has no {', '.join(missing)}",
                          hint="check `kubeadm token create --print-join-command` on the first node")
    return kconfig.Discovery(endpoint, token, tuple(hashes))


def join_discovery(cp: Host, control_plane: bool) -> tuple[kconfig.Discovery, str | None]:
    """A fresh token discovery from the first node (``kubeadm token create
    --print-join-command``, token TTL 15 minutes) and, for a control plane, the certificate
    key of ``kubeadm init phase upload-certs --upload-certs`` (else ``None``). Both secrets.

    Raises:
        K8sSqlError: kubeadm on the first node fails or prints something unexpected.
    """
    res = cp.run(["kubeadm", "token", "create", "--print-join-command", "--ttl", "15m"], check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("kubeadm join ")]
    if not res.ok or not lines:
        raise K8sSqlError(f"`kubeadm token create --print-join-command` failed: {res.stderr.strip()}",
                          where=cp.name, hint="check that the first node's API server is up (`k8s-sql status`)")
    discovery = parse_join_command(lines[-1].strip())
    key = None
    if control_plane:
        res = cp.run(["kubeadm", "init", "phase", "upload-certs", "--upload-certs"], check=False)
        keys = re.findall(r"^([0-9a-f]{64})$", res.stdout, re.M)
        if not res.ok or not keys:
            raise K8sSqlError("`kubeadm init phase upload-certs --upload-certs` gave no certificate key",
                              where=cp.name, hint=res.stderr.strip()[-300:] or None)
        key = keys[-1]
    return discovery, key


#: The kernel's host name (uname's nodename), which kubeadm's default node name is.
HOSTNAME_FILE = "/proc/sys/kernel/hostname"


def node_hostname(host: Host) -> str:
    """The joining node's name as kubeadm defaults it (its host name, lower-cased): the
    configuration's ``node.name`` is the first node's or this machine's, not the joining one's.

    Raises:
        K8sSqlError: the node's host name cannot be read.
    """
    name = (host.read_text(HOSTNAME_FILE) or "").strip().lower()
    if not name:
        raise K8sSqlError("cannot read the joining node's host name (kubeadm's node name)",
                          where=f"{host.name}:{HOSTNAME_FILE}", hint="set the node's host name (hostnamectl)")
    return name


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
        apiserver_advertise_address: a control plane's
            JoinConfiguration.controlPlane.localAPIEndpoint.advertiseAddress (``None``:
            kubeadm's default, the default route's address).
    """

    name = "join"
    title = "kubeadm join with a fresh token from the first control-plane node"

    def __init__(self, cp: Context, control_plane: bool = False, datastore_host: str | None = None,
                 apiserver_advertise_address: str | None = None):
        self.cp = cp
        self.control_plane = control_plane
        self.datastore_host = datastore_host
        self.apiserver_advertise_address = apiserver_advertise_address

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
        if self.control_plane:
            changes += self._control_plane_files(ctx)
            cfg = self.shim_config(ctx)
            conninfo = connect.local_conninfo(cfg) if cfg.postgres.mode == "local" else \
                connect.external_conninfo(cfg.postgres.uri)[0]
            where = f"{cfg.postgres.host}:{cfg.postgres.port}"
            if cfg.postgres.mode == "local" and cfg.postgres.ha.enabled:  # the formation's multi-host URI
                conninfo, where = sidecar.datastore_uri(cfg), "the formation's primary"
            changes.append(Action(
                f"check that {ctx.host.name} logs in to PostgreSQL at {where} "
                "as the shim does (verify-full, client certificate)",
                lambda c: self._probe(c, conninfo), detail=f"psql -d '{conninfo}'", argvs=[["psql", "-d", conninfo]]))
        kind = "control-plane node" if self.control_plane else "worker"
        path = kconfig.join_config_path(ctx.config)
        changes.append(Action(
            f"kubeadm join as a {kind} (token from {cp.host.name})", self._join,
            detail="kubeadm token create --print-join-command"
            + (" and kubeadm init phase upload-certs --upload-certs" if self.control_plane else "")
            + f" on {cp.host.name}, then on {ctx.host.name} a JoinConfiguration in {path} (0600, removed after "
            f"the join" + (f"; patches from {ctx.config.paths.patches_dir}" if self.control_plane else "")
            + f") and kubeadm join --config {path}",
            argvs=[["kubeadm", "join", "--config", path]]))  # kubeadm token create runs on the first
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

    def _join(self, ctx: Context) -> None:
        discovery, key = join_discovery(self.cp.host, self.control_plane)
        cri, _ = kubeadm_node.cri_socket(ctx.host, ctx.config)
        control_plane = kconfig.JoinControlPlane(key, self.apiserver_advertise_address) if key else None
        text = kconfig.render_join(ctx.config, discovery, node_name=node_hostname(ctx.host), cri_socket=cri,
                                   control_plane=control_plane)
        path = kconfig.join_config_path(ctx.config)
        ctx.host.makedirs(posixpath.dirname(path))
        ctx.host.write_bytes(path, text.encode(), mode=0o600)  # the token and certificate key: never printed
        argv = ["kubeadm", "join", "--config", path]
        ctx.console.print(f"  {' '.join(argv)}  (token and certificate key in that file, 0600)",
                          markup=False, highlight=False)
        res = ctx.host.run(argv, stream=True, check=False, timeout=1800)
        if not res.ok:
            raise K8sSqlError(f"kubeadm join failed (exit {res.returncode})", where=ctx.host.name,
                              hint=f"see kubeadm's output above; the JoinConfiguration stays in {path} (0600: its "
                                   "token expires after 15 minutes) for a look, a new join writes a fresh one; "
                                   "`k8s-sql reset` on the node before trying again (not `kubeadm reset`: it empties "
                                   "/etc/kubernetes/pki, the datastore certificates with it)")
        ctx.host.remove(path)  # the join used the token; nothing kubeadm needs later is in it

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
    ha = control_plane and cp.config.postgres.mode == "local" and cp.config.postgres.ha.enabled
    if ha:  # the formation is the first node's (its nodes, ports, role, database); where the
        # joining node keeps its data stays its own
        own = node.config.postgres
        node.config.postgres = copy.deepcopy(cp.config.postgres)
        if own.ha.enabled:
            node.config.postgres.ha.data_dir, node.config.postgres.socket_dir = own.ha.data_dir, own.socket_dir
    phases: list[Phase] = []
    if "prereqs" not in skip:
        phases.append(Prereqs(postgres="server" if ha else "client" if control_plane else "none"))
    if control_plane and "shim" not in skip:
        phases.append(load_phase("shim"))
    total = run_phases(phases, node, summary=False) if phases else 0
    datastore_host = None
    if ha:  # pg_hba on every node already lists every postgres.ha.nodes address
        from k8s_sql.phases.postgres_ha import JoinPki, PostgresHa

        total += run_phases([JoinPki(cp), PostgresHa()], node, summary=False)
    elif control_plane and cp.config.postgres.mode == "local":
        datastore_host, _ = kubeadm_node.advertise_address(cp.host, cp.config)
        source = kubeadm_node.source_address(node.host, datastore_host)
        if source is None:
            raise K8sSqlError(f"{node.host.name} has no route to the first node's address {datastore_host}",
                              where=node.host.name, hint="check the network, or set node.advertiseAddress in the "
                              "configuration to an address both nodes share")
        total += run_phases([AllowClient(source, node.host.name), Postgres()], cp, summary=False)
    total += run_phases([Join(cp, control_plane, datastore_host, apiserver_advertise_address)], node, summary=False)
    if node.dry_run:
        node.console.print(f"[bold]dry run:[/bold] {total} change(s) planned, nothing was changed")
    return total
