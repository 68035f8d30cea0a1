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
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from k8s_sql.errors import ConfigError

API_VERSION = "k8s-sql.io/v1alpha1"
KIND = "Cluster"


@dataclass
class NodeSpec:
    """The node ``init`` runs on."""

    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0].lower())
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
    #: Shared endpoint (``host:port``) for several control-plane nodes; empty for one.
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
    compaction_interval: str = "5m"
    watch_progress_notify_interval: str = "5s"


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

    def validate(self) -> None:
        """Check values that have a fixed set of choices or a format.

        Raises:
            ConfigError: naming the field (``postgres.mode``) and the allowed values.
        """
        _choice("postgres.mode", self.postgres.mode, ("local", "external"))
        _choice("shim.kind", self.shim.kind, ("k8s-sql", "kine"))
        _choice("kubernetes.containerRuntime", self.kubernetes.container_runtime, ("crio", "containerd"))
        if not re.fullmatch(r"v?1\.\d+(\.\d+)?", self.kubernetes.version):
            raise _invalid("kubernetes.version", f"kubernetes.version {self.kubernetes.version!r} is not a Kubernetes "
                           "version", "use a version like v1.34.2")
        if self.postgres.mode == "external" and not self.postgres.uri:
            raise _invalid("postgres.mode", "postgres.mode is external but postgres.uri is empty",
                           "set postgres.uri to a libpq URI, e.g. postgresql://db.example:5432/kubernetes")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.postgres.role):
            raise _invalid("postgres.role", f"postgres.role {self.postgres.role!r} is not a plain PostgreSQL "
                           "identifier", "use lower-case letters, digits and _")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.postgres.database):
            raise _invalid("postgres.database", f"postgres.database {self.postgres.database!r} is not a plain "
                           "PostgreSQL identifier", "use lower-case letters, digits and _")
        for addr in self.postgres.client_addresses:
            if client_network(addr) is None:
                raise _invalid("postgres.clientAddresses", f"postgres.clientAddresses: {addr!r} is not an IP address "
                               "or network", "use addresses like 192.0.2.11 or networks like 10.0.0.0/24")

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


def client_network(value: str) -> str | None:
    """``value`` (an IPv4/IPv6 address or network) as a pg_hba address in CIDR form
    (``192.0.2.11`` -> ``192.0.2.11/32``), or ``None`` when it is neither. Host bits set
    in a network (``10.0.0.5/24``) make it invalid, as PostgreSQL would warn."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError:
        return None


def _invalid(field_path: str, what: str, hint: str) -> ConfigError:
    """A ConfigError about ``field_path`` (camelCase dotted); :func:`load` adds its line."""
    err = ConfigError(what, hint=hint)
    err.field = field_path
    return err


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise _invalid(name, f"{name} is {value!r}", "allowed values: " + ", ".join(allowed))


def _line_of(source: str, data: Any, field_path: str) -> str:
    """``source:line`` of a dotted field in the parsed document, or ``source``."""
    node, parts = data, field_path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            return source
        if i == len(parts) - 1:
            return _where(source, node, part)
        node = node[part]
    return source


def camel(name: str) -> str:
    """``advertise_address`` -> ``advertiseAddress``."""
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _build(cls: type, data: Any, path: str, source: str) -> Any:
    """Make a ``cls`` dataclass from a ruamel mapping, with file:line in every error."""
    obj = cls()
    if data is None:
        return obj
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'the document'} must be a mapping", where=_where(source, data, None))
    hints = get_type_hints(cls)
    fields = {camel(f.name): f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        f = fields.get(key)
        if f is None:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            raise ConfigError(
                f"unknown field {dotted!r}",
                where=_where(source, data, key),
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + "valid fields here: " + ", ".join(fields),
            )
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            setattr(obj, f.name, _build(typ, value, dotted, source))
            continue
        setattr(obj, f.name, _coerce(typ, value, dotted, _where(source, data, key)))
    return obj


def _coerce(typ: Any, value: Any, dotted: str, where: str) -> Any:
    if get_origin(typ) is list:
        if isinstance(value, list):
            return [_coerce(get_args(typ)[0], v, f"{dotted}[{i}]", where) for i, v in enumerate(value)]
        raise ConfigError(f"{dotted} must be a list, got {value!r}", where=where,
                          hint=f"write it as a YAML list, e.g. {dotted.rsplit('.', 1)[-1]}: [a, b]")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{dotted} must be a {typ.__name__}, got {value!r}", where=where,
                      hint=f"see `k8s-sql config print-defaults` for the expected shape")


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


def load(text: str | None, source: str = "<config>") -> Cluster:
    """Parse a configuration document.

    Args:
        text: YAML text; ``None`` or empty gives the defaults.
        source: file name used in error messages.

    Raises:
        ConfigError: bad YAML, wrong ``apiVersion``/``kind``, an unknown field or a value of
            the wrong type, with ``source:line`` and a hint.
    """
    if not text or not text.strip():
        cfg = Cluster()
        cfg.validate()
        return cfg
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
    if not isinstance(data, CommentedMap):
        raise ConfigError("the file must be a mapping with apiVersion and kind", where=source)
    api = data.get("apiVersion")
    if api != API_VERSION:
        raise ConfigError(f"apiVersion is {api!r}", where=_where(source, data, "apiVersion" if api else None),
                          hint=f"set apiVersion: {API_VERSION}")
    if data.get("kind") != KIND:
        raise ConfigError(f"kind is {data.get('kind')!r}", where=_where(source, data, "kind" if "kind" in data else None),
                          hint=f"set kind: {KIND}")
    body = CommentedMap((k, v) for k, v in data.items() if k not in ("apiVersion", "kind"))
    body._yaml_line_col = data.lc
    cfg = _build(Cluster, body, "", source)
    try:
        cfg.validate()
    except ConfigError as e:
        e.where = e.where or _line_of(source, data, getattr(e, "field", ""))
        raise
    return cfg


def load_file(path: str | None) -> Cluster:
    """Load ``path`` (``None`` = defaults).

    Raises:
        ConfigError: the file is missing or unreadable, or as :func:`load`.
    """
    if path is None:
        return load(None)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file: {e.strerror}", where=path,
                          hint="pass an existing file with --config, or omit it for the defaults") from None
    return load(text, path)


def set_value(cfg: Cluster, dotted: str, value: Any) -> None:
    """Override one field by its snake_case path (``kubernetes.version``); used for flags."""
    *parents, last = dotted.split(".")
    obj = cfg
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def dump(cfg: Cluster) -> str:
    """The configuration as a YAML document with apiVersion and kind first."""

    def to_map(obj: Any) -> CommentedMap:
        m = CommentedMap()
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            m[camel(f.name)] = to_map(v) if dataclasses.is_dataclass(v) else v
        return m

    doc = CommentedMap(apiVersion=API_VERSION, kind=KIND)
    doc.update(to_map(cfg))
    out = io.StringIO()
    yaml = YAML()
    yaml.dump(doc, out)
    return out.getvalue()
