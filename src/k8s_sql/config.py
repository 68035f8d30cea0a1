"""The k8s-sql configuration file: ``apiVersion: k8s-sql.io/v1alpha1``, ``kind: Cluster``.

Every field has a default, so an empty file (or none) is a valid single-node cluster.
Field names in YAML are camelCase, as in Kubernetes; in Python they are snake_case.
Values come from, in order of precedence: command-line flags, the file, the defaults.
An unknown or mistyped field is rejected with the file, the line and a hint.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import re
import socket
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, get_args, get_origin, get_type_hints

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from k8s_sql import validation
from k8s_sql.errors import ConfigError, FlagError
from k8s_sql.shim.settings import DEFAULT_COMPACTION_INTERVAL, DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL
from k8s_sql.validation import camel, client_network  # noqa: F401  (part of this module's API)

API_VERSION = "k8s-sql.io/v1alpha1"
KIND = "Cluster"


@dataclass
class NodeSpec:
    """The node ``init`` runs on."""

    #: Node name (a lower-case RFC 1123 subdomain); empty = this machine's host name (its first
    #: label, lower-cased), filled in by :func:`load`.
    name: str = ""
    #: IPv4/IPv6 address the API server advertises; empty = the address of the default route.
    advertise_address: str = ""
    #: CRI socket (``unix:///var/run/crio/crio.sock``); empty = found on the node.
    cri_socket: str = ""


@dataclass
class KubernetesSpec:
    """What kubeadm builds."""

    version: str = "v1.34.2"
    pod_subnet: str = "10.244.0.0/16"
    service_subnet: str = "10.96.0.0/12"
    #: Shared endpoint (``host:port``) of the control planes (ClusterConfiguration.controlPlaneEndpoint);
    #: empty = the first node's advertise address and port 6443.
    control_plane_endpoint: str = ""
    #: Remove the control-plane taint so workloads schedule on this node.
    single_node: bool = True
    #: ``crio`` or ``containerd``: which runtime the prereqs phase installs.
    container_runtime: str = "crio"


@dataclass
class PathsSpec:
    """Where files go on the node."""

    #: Certificates of the datastore CA, PostgreSQL, the shim and its clients.
    pki_dir: str = "/etc/kubernetes/pki/k8s-sql"
    kubeadm_config: str = "/etc/k8s-sql/kubeadm.yaml"
    patches_dir: str = "/etc/k8s-sql/patches"
    manifests_dir: str = "/etc/kubernetes/manifests"
    backup_dir: str = "/var/lib/k8s-sql/backup"
    kubeconfig: str = "/etc/kubernetes/admin.conf"
    #: Addresses of further control-plane nodes whose shims reach the local PostgreSQL,
    #: one per line; ``k8s-sql join --control-plane`` adds to it (see postgres.clientAddresses).
    postgres_clients: str = "/etc/k8s-sql/postgres-clients"
    #: The record of every file and directory k8s-sql created on the node (``reset``
    #: removes only those, see :mod:`k8s_sql.state`).
    state_file: str = "/var/lib/k8s-sql/state.json"


@dataclass
class PostgresHaSpec:
    """PostgreSQL on several nodes with automatic failover (pg_auto_failover, README "HA")."""

    #: Off: one PostgreSQL on the first node. On: a keeper on each node in ``nodes``.
    enabled: bool = False
    #: The PostgreSQL nodes' addresses (the control-plane nodes' advertise addresses, each
    #: optionally ``address:port`` / ``[v6]:port``), the first node's first; the shims' multi-host URI lists them in this order. At least 3
    #: (2 keepers and a monitor cannot tell a lost node from a cut network).
    nodes: list[str] = field(default_factory=list)
    #: Port of the pg_auto_failover monitor (on the first node).
    monitor_port: int = 5431
    #: Port of each node's PostgreSQL in the formation (a node listed as ``address:port``
    #: has its own). Not 5432: Debian's own cluster (``postgresql``) keeps that port.
    port: int = 5433
    #: Where the monitor's and the keeper's data directories and pg_autoctl's files live.
    data_dir: str = "/var/lib/postgresql/k8s-sql-ha"


@dataclass
class PostgresSpec:
    """The PostgreSQL server that stores the cluster's state."""

    #: ``local``: configure the PostgreSQL on this node; ``external``: only verify ``uri``.
    mode: str = "local"
    #: libpq connection URI of an external server (``postgresql://host:5432/db?sslmode=verify-full``).
    uri: str = ""
    #: Major version of the local cluster; empty = the one installed (13–18).
    version: str = ""
    #: Debian cluster name (``pg_lsclusters``).
    cluster: str = "main"
    #: Directory holding postgresql.conf, pg_hba.conf and conf.d; empty = from pg_lsclusters.
    config_dir: str = ""
    #: Data directory; empty = from pg_lsclusters.
    data_dir: str = ""
    #: Directory of the server's Unix socket, used for administration as the postgres OS user.
    socket_dir: str = "/var/run/postgresql"
    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "kubernetes"
    #: The shim's login role; also the CN of its client certificate.
    role: str = "k8s_sql"
    #: Addresses or networks (``192.0.2.11``, ``10.0.0.0/24``) besides loopback from which
    #: the role may log in (a ``hostssl … cert`` line each). When any is set, PostgreSQL
    #: also listens on the node's advertise address. ``paths.postgresClients`` adds more.
    client_addresses: list[str] = field(default_factory=list)
    #: High availability (``mode: local`` only); for ``external``, give a multi-host ``uri``.
    ha: PostgresHaSpec = field(default_factory=PostgresHaSpec)


@dataclass
class ShimSpec:
    """The etcd-compatible endpoint that runs as a sidecar of kube-apiserver."""

    #: ``k8s-sql`` (this project's shim) or ``kine`` (the upstream Kine image).
    kind: str = "k8s-sql"
    #: Image reference; empty = ``localhost/k8s-sql-shim:<version>`` built by the shim phase.
    image: str = ""
    kine_image: str = "docker.io/rancher/kine:v0.14.1"
    listen_address: str = "127.0.0.1"
    port: int = 2379
    #: Port of the plain-HTTP health/metrics endpoint on loopback.
    metrics_port: int = 2381
    #: Numeric uid/gid the sidecar runs as (non-root); its key files are owned by it.
    run_as_user: int = 65532
    #: Go durations, passed to the sidecar's flags; the defaults are the shim's own.
    compaction_interval: str = DEFAULT_COMPACTION_INTERVAL
    watch_progress_notify_interval: str = DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL


@dataclass
class CertificatesSpec:
    """Validity of the certificates the pki phase makes (days)."""

    ca_validity_days: int = 3650
    validity_days: int = 365


@dataclass
class Cluster:
    """Root object of the configuration file (``kind: Cluster``)."""

    node: NodeSpec = field(default_factory=NodeSpec)
    kubernetes: KubernetesSpec = field(default_factory=KubernetesSpec)
    paths: PathsSpec = field(default_factory=PathsSpec)
    postgres: PostgresSpec = field(default_factory=PostgresSpec)
    shim: ShimSpec = field(default_factory=ShimSpec)
    certificates: CertificatesSpec = field(default_factory=CertificatesSpec)
    #: True when :func:`load` filled ``node.name`` from this machine's host name (not a field
    #: of the file): over SSH the target's host name replaces it (cli.common.make_context).
    node_name_defaulted: ClassVar[bool] = False

    def validate(self, labels: dict[str, str] | None = None) -> None:
        """Check every field and the rules between fields (see :mod:`k8s_sql.validation`).

        Args:
            labels: camelCase dotted field -> name used in messages (a flag that set it).

        Raises:
            ConfigError: naming the field (``field`` attribute: ``kubernetes.podSubnet``), the
                value and what to do.
        """
        validation.validate(self, labels)

    @property
    def kubernetes_minor(self) -> int:
        """The minor version number (``34`` for ``v1.34.2``)."""
        return int(self.kubernetes.version.lstrip("v").split(".")[1])

    @property
    def shim_image(self) -> str:
        from k8s_sql import __version__

        if self.shim.kind == "kine":
            return self.shim.kine_image
        return self.shim.image or f"localhost/k8s-sql-shim:{__version__}"


def _line_of(source: str, data: Any, field_path: str) -> str | None:
    """``source:line`` of a dotted field (``postgres.clientAddresses[1]``) in the parsed
    document, or ``None`` when the file does not set it."""
    node, where = data, None
    for part in field_path.split(".") if field_path else []:
        m = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        key, index = (m.group(1), int(m.group(2))) if m else (part, None)
        if not isinstance(node, dict) or key not in node:
            return None
        where, node = _where(source, node, key), node[key]
        if index is not None:
            return _item_where(source, node, index) or where
    return where


def _section_of(source: str, data: Any, field_path: str) -> str:
    """``source:line`` of the section holding ``field_path`` (``kubernetes:``), or ``source``."""
    section = field_path.split(".")[0]
    return _where(source, data, section) if isinstance(data, dict) and section in data else source


_KINDS = {bool: "true or false", int: "an integer", str: "a string"}


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _build(cls: type, data: dict, path: str, source: str) -> Any:
    """Make a ``cls`` dataclass from a ruamel mapping, with file:line in every error."""
    obj = cls()
    hints = get_type_hints(cls)
    fields = {camel(f.name): f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        where = _where(source, data, key)
        f = fields.get(key)
        if f is None:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            raise ConfigError(
                f"unknown field {dotted!r}",
                where=where,
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + "valid fields here: " + ", ".join(fields),
            )
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            if value is None:
                raise ConfigError(f"{dotted} is empty (null)", where=where,
                                  hint=f"give {dotted} its fields (see `k8s-sql config print-defaults`), "
                                  "or remove the line to keep the defaults")
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} must be a mapping of fields, got {_show(value)}", where=where,
                                  hint=f"write it as {key}: {{field: value, ...}} "
                                  "(see `k8s-sql config print-defaults`)")
            setattr(obj, f.name, _build(typ, value, dotted, source))
            continue
        setattr(obj, f.name, _coerce(typ, value, dotted, where, source))
    return obj


def _coerce(typ: Any, value: Any, dotted: str, where: str, source: str) -> Any:
    if get_origin(typ) is list:
        if isinstance(value, list):
            return [_coerce(get_args(typ)[0], v, f"{dotted}[{i}]", _item_where(source, value, i) or where, source)
                    for i, v in enumerate(value)]
        if value is None:
            raise ConfigError(f"{dotted} is empty (null)", where=where,
                              hint=f"write an empty list as {dotted.rsplit('.', 1)[-1]}: [], or remove the line")
        raise ConfigError(f"{dotted} must be a list, got {_show(value)}", where=where,
                          hint=f"write it as a YAML list, e.g. {dotted.rsplit('.', 1)[-1]}: [a, b]")
    kind = _KINDS[typ]
    if value is None:
        raise ConfigError(f"{dotted} is empty (null)", where=where,
                          hint=f"give it a value ({kind})" + (', e.g. "" for an empty string' if typ is str else "")
                          + ", or remove the line for the default")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif typ is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, float):  # 1.30 would silently become "1.3"
            raise ConfigError(f"{dotted} must be a string, got the number {value!r}", where=where,
                              hint="quote it, e.g. \"1.30\"")
    raise ConfigError(f"{dotted} must be {kind}, got {_show(value)}", where=where,
                      hint="see `k8s-sql config print-defaults` for the expected shape")


def _where(source: str, data: Any, key: Any) -> str:
    line = None
    try:
        if key is not None:
            line = data.lc.key(key)[0] + 1
        else:
            line = data.lc.line + 1
    except (AttributeError, KeyError, TypeError):
        pass
    return f"{source}:{line}" if line else source


def _item_where(source: str, seq: Any, index: int) -> str | None:
    try:
        return f"{source}:{seq.lc.item(index)[0] + 1}"
    except (AttributeError, KeyError, TypeError, IndexError):
        return None


def host_node_name(raw: str | None = None, whose: str = "this machine's") -> str:
    """The default node name: a host name (``raw``, default this machine's), its first
    label, lower-cased. ``whose`` names the host in the error.

    Raises:
        ConfigError: (field ``node.name``) that is not a valid node name.
    """
    raw = socket.gethostname() if raw is None else raw
    name = raw.split(".")[0].lower()
    if not validation.is_dns1123_subdomain(name):
        better = validation.suggest_node_name(name)
        raise validation.invalid("node.name", f"node.name is empty and {whose} host name {raw!r} is not a "
                                 "valid node name (kubeadm requires a lower-case RFC 1123 subdomain)",
                                 "set node.name in the configuration or pass --node-name"
                                 + (f", e.g. {better}" if better else ""))
    return name


#: Flags of the command line: snake_case dotted field -> (flag, value).
Flags = Mapping[str, "tuple[str, Any]"]


def load(text: str | None, source: str = "<config>", flags: Flags | None = None) -> Cluster:
    """Parse a configuration document, apply ``flags`` over it, validate the result and
    fill in the node name when it is empty (see :func:`host_node_name`).

    Args:
        text: YAML text; ``None`` or empty gives the defaults.
        source: file name used in error messages.
        flags: values from the command line by snake_case dotted field
            (``{"kubernetes.pod_subnet": ("--pod-network-cidr", "10.244.0.0/16")}``);
            they win over the file and go through the same validation.

    Raises:
        ConfigError: bad YAML, wrong ``apiVersion``/``kind``, an unknown field, a value of
            the wrong type or an invalid one, with ``source:line`` and a hint.
        FlagError: a flag's value is invalid (message names the flag; exit code 2).
    """
    data: Any = None
    if text and text.strip():
        data = _parse(text, source)
        body = CommentedMap((k, v) for k, v in data.items() if k not in ("apiVersion", "kind"))
        body._yaml_line_col = data.lc
        cfg = _build(Cluster, body, "", source)
    else:
        cfg = Cluster()
    labels = {}
    for dotted, (flag, value) in (flags or {}).items():
        set_value(cfg, dotted, value)
        labels[".".join(camel(p) for p in dotted.split("."))] = flag
    try:
        cfg.validate(labels)
        if not cfg.node.name:
            cfg.node.name = host_node_name()
            cfg.node_name_defaulted = True
    except ConfigError as e:
        # the error is shown at the first field of the rule that the user set: a flag, a line
        # of the file; else at the section of the field, or the file
        fields = [f for f in (getattr(e, "field", ""), *getattr(e, "also", ())) if f]
        for f in fields:
            if re.sub(r"\[\d+\]$", "", f) in labels:
                err = FlagError(e.what, hint=e.hint)
                err.field = f
                raise err from None
        if data is not None and not e.where:
            lines = [w for w in (_line_of(source, data, f) for f in fields) if w]
            e.where = lines[0] if lines else _section_of(source, data, fields[0] if fields else "")
        raise
    return cfg


def _parse(text: str, source: str) -> CommentedMap:
    """The YAML mapping of a configuration document, its apiVersion and kind checked."""
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
    except (ValueError, TypeError, RecursionError) as e:  # a tagged or date-like scalar that does not parse
        raise ConfigError(f"not valid YAML: a value cannot be read ({e or 'nested too deeply'})", where=source,
                          hint="quote the value if it is meant as a string") from None
    if not isinstance(data, CommentedMap):
        raise ConfigError("the file must be a mapping with apiVersion and kind", where=source,
                          hint="start from `k8s-sql config print-defaults`")
    api = data.get("apiVersion")
    if api != API_VERSION:
        raise ConfigError(f"apiVersion is {api!r}", where=_where(source, data, "apiVersion" if api else None),
                          hint=f"set apiVersion: {API_VERSION}")
    if data.get("kind") != KIND:
        raise ConfigError(f"kind is {data.get('kind')!r}", where=_where(source, data, "kind" if "kind" in data else None),
                          hint=f"set kind: {KIND}")
    return data


def load_file(path: str | None, flags: Flags | None = None) -> Cluster:
    """Load ``path`` (``None`` = defaults) with ``flags`` over it (see :func:`load`).

    Raises:
        ConfigError: the file is missing or unreadable, or as :func:`load`.
    """
    if path is None:
        return load(None, flags=flags)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file: {e.strerror}", where=path,
                          hint="pass an existing file with --config, or omit it for the defaults") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"the configuration file is not UTF-8 text (byte {e.start})", where=path,
                          hint="pass a YAML file (`k8s-sql config print-defaults` writes one)") from None
    return load(text, path, flags)


def set_value(cfg: Cluster, dotted: str, value: Any) -> None:
    """Override one field by its snake_case path (``kubernetes.version``); used for flags."""
    *parents, last = dotted.split(".")
    obj = cfg
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, value)


#: Where the value of a field left empty comes from (``config print-defaults`` shows these).
DEFAULT_NOTES = {
    "node.name": "empty: the host name of the node at init time (first label, lower-cased)",
    "node.advertiseAddress": "empty: the node's address on its default route",
    "node.criSocket": "empty: the CRI socket found on the node",
    "kubernetes.controlPlaneEndpoint": "empty: the first node's advertise address:6443 (a DNS name or load balancer "
                                       "is better for HA; it cannot be changed after init)",
    "postgres.uri": "only for mode: external",
    "postgres.version": "empty: the major version installed on the node",
    "postgres.configDir": "empty: from pg_lsclusters",
    "postgres.dataDir": "empty: from pg_lsclusters",
    "shim.image": "empty: localhost/k8s-sql-shim:<version>, built by the shim phase",
    "shim.compactionInterval": "Go duration, as the shim's --compaction-interval; 0 = off (kube-apiserver compacts)",
}


def dump(cfg: Cluster, notes: bool = False) -> str:
    """The configuration as a YAML document with apiVersion and kind first; with ``notes``,
    a comment at each field in :data:`DEFAULT_NOTES` (for ``config print-defaults``)."""

    def to_map(obj: Any, path: str) -> CommentedMap:
        m = CommentedMap()
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            key = camel(f.name)
            m[key] = to_map(v, f"{path}{key}.") if dataclasses.is_dataclass(v) else v
            if notes and f"{path}{key}" in DEFAULT_NOTES:
                m.yaml_add_eol_comment(DEFAULT_NOTES[f"{path}{key}"], key, column=0)
        return m

    doc = CommentedMap(apiVersion=API_VERSION, kind=KIND)
    doc.update(to_map(cfg, ""))
    if notes:
        doc.yaml_set_start_comment("k8s-sql configuration: every field at its default. Fields left empty are\n"
                                   "filled in on the node at init time, as the comments say.")
    out = io.StringIO()
    yaml = YAML()
    yaml.dump(doc, out)
    return out.getvalue()
