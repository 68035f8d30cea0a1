"""Validation of a :class:`~k8s_sql.config.Cluster`: every field's format and the rules
between fields, checked once, after the file and the flags are merged and before any phase
plans anything.

Formats follow what consumes the value: kubeadm's validation for node names (an RFC 1123
subdomain), addresses, pod/service subnets and the CRI socket; Go's ``time.ParseDuration``
(via :func:`k8s_sql.shim.settings.go_duration`, the shim's own parser) for durations, which
reach the shim and Kine as flags; PostgreSQL's rules for identifiers.

Errors are :class:`~k8s_sql.errors.ConfigError` with ``field`` set to the camelCase dotted
path (``kubernetes.podSubnet``, ``postgres.clientAddresses[1]``) so the loader can add the
file and line; the message names the field by its ``label`` (the flag, when a flag set it).
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Mapping

from k8s_sql.errors import ConfigError
from k8s_sql.shim.settings import go_duration

if TYPE_CHECKING:
    from k8s_sql.config import Cluster

#: Oldest Kubernetes minor k8s-sql writes a kubeadm configuration for (kubeadm.k8s.io/v1beta3).
MIN_KUBERNETES_MINOR = 22
#: kubeadm: the largest service subnet has 20 host bits (/12 IPv4, /108 IPv6), at least 10 addresses.
SERVICE_SUBNET_MAX_HOST_BITS = 20
SERVICE_SUBNET_MIN_ADDRESSES = 10
#: kubeadm: a pod subnet holds at least 14 addresses, and whole per-node ranges of
#: kube-controller-manager's default node-cidr-mask-size (24 IPv4, 64 IPv6), at most 2**16 of them.
POD_SUBNET_MIN_ADDRESSES = 14
NODE_CIDR_MASK = {4: 24, 6: 64}
POD_SUBNET_NODE_MASK_MAX_DIFF = 16
#: Ports kubeadm's control plane listens on (kube-apiserver, kubelet, controller-manager, scheduler).
KUBEADM_PORTS = {6443: "kube-apiserver", 10250: "the kubelet", 10257: "kube-controller-manager",
                 10259: "kube-scheduler"}
#: Kubernetes' limit for runAsUser (a non-negative int32); 0 would be root.
MAX_UID = 2**31 - 1
#: The CA may not outlive what the x509 encoding and Python's datetime can express comfortably.
MAX_VALIDITY_DAYS = 100 * 365

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@+-]*", re.I)
#: paths.* fields that name kubeadm's own locations, which k8s-sql reads and patches but does not own.
KUBEADM_PATHS = ("manifests_dir", "kubeconfig")


def camel(name: str) -> str:
    """``advertise_address`` -> ``advertiseAddress``."""
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def invalid(field_path: str, what: str, hint: str, also: tuple[str, ...] = ()) -> ConfigError:
    """A ConfigError about ``field_path`` (camelCase dotted); the loader adds its file:line.
    ``also``: other fields the rule involves (a pod subnet overlapping the service subnet),
    where the error is shown when ``field_path`` was left at its default."""
    err = ConfigError(what, hint=hint)
    err.field = field_path
    err.also = also
    return err


def is_dns1123_subdomain(name: str) -> bool:
    """RFC 1123 subdomain as Kubernetes checks it (IsDNS1123Subdomain): lower-case
    alphanumerics, '-' and '.', each label starting and ending alphanumeric, at most 253."""
    return len(name) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(name) is not None


def suggest_node_name(name: str) -> str | None:
    """A valid node name close to ``name`` (lower-cased, other characters as '-'), or ``None``."""
    guess = re.sub(r"-*\.-*", ".", re.sub(r"[^a-z0-9.]+", "-", name.lower())).strip("-.")
    return guess if guess and is_dns1123_subdomain(guess) else None


def client_network(value: str) -> str | None:
    """``value`` (an IPv4/IPv6 address or network) as a pg_hba address in CIDR form
    (``192.0.2.11`` -> ``192.0.2.11/32``), or ``None`` when it is neither. Host bits set
    in a network (``10.0.0.5/24``) make it invalid, as PostgreSQL would warn."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError:
        return None


def validate(cfg: Cluster, labels: Mapping[str, str] | None = None) -> None:
    """Check every field of ``cfg`` and the rules between fields; the first problem raises.

    Args:
        labels: camelCase dotted field -> how to name it in messages (``--pod-network-cidr``
            for a value that came from that flag); other fields are named by their path.

    Raises:
        ConfigError: with ``field`` (camelCase dotted, list items as ``name[i]``), a message
            naming the field and the value, and a hint.
    """
    _Checks(cfg, labels or {}).run()


class _Checks:
    """One check per section, then the rules across sections (ports); each raises the first
    problem it finds as a ConfigError with ``field`` set."""

    def __init__(self, cfg: Cluster, labels: Mapping[str, str]):
        self.cfg, self.labels = cfg, labels

    def label(self, path: str) -> str:
        return self.labels.get(path, path)

    def fail(self, path: str, what: str, hint: str, also: tuple[str, ...] = ()) -> ConfigError:
        return invalid(path, what, hint, also)

    def run(self) -> None:
        self.node()
        self.kubernetes()
        self.paths()
        self.postgres()
        self.postgres_ha()
        self.shim()
        self.ports()
        self.certificates()

    # -- helpers ------------------------------------------------------------------------

    def choice(self, path: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise self.fail(path, f"{self.label(path)} {value!r} is not one of {', '.join(allowed)}",
                            "allowed values: " + ", ".join(allowed))

    def port(self, path: str, value: int) -> None:
        if not 1 <= value <= 65535:
            raise self.fail(path, f"{self.label(path)} {value} is not a TCP port", "use a port from 1 to 65535")

    def ip(self, path: str, value: str, example: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            raise self.fail(path, f"{self.label(path)} {value!r} is not an IP address",
                            f"use an IPv4 or IPv6 address, e.g. {example}") from None

    def absolute(self, path: str, value: str, *, empty_ok: bool = False) -> None:
        if empty_ok and value == "":
            return
        if not value.startswith("/"):
            raise self.fail(path, f"{self.label(path)} {value!r} is not an absolute path",
                            "start it with /" + (", or leave it empty for the default" if empty_ok else ""))
        if any(ord(c) < 32 or c == "\x7f" for c in value):
            raise self.fail(path, f"{self.label(path)} {value!r} contains a control character",
                            "use a plain path")

    def duration(self, path: str, value: str) -> float:
        try:
            seconds = go_duration(value)
        except ValueError as e:
            raise self.fail(path, f"{self.label(path)} {value!r} is not a duration: {e}",
                            'use Go duration syntax as the shim\'s flags do, e.g. "5s", "500ms", "1h30m", or 0') \
                from None
        if seconds < 0:
            raise self.fail(path, f"{self.label(path)} {value!r} is negative", 'use 0 (off) or a positive duration')
        return seconds

    def networks(self, path: str, value: str, example: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """One CIDR, or two of different families separated by a comma (dual-stack, as kubeadm)."""
        nets = []
        parts = [p.strip() for p in value.split(",")]
        for part in parts:
            if "/" not in part:
                raise self.fail(path, f"{self.label(path)} {value!r} is not a network in CIDR notation",
                                f"write an address and a prefix length, e.g. {example}")
            try:
                nets.append(ipaddress.ip_network(part, strict=True))
            except ValueError as e:
                try:
                    loose = ipaddress.ip_network(part, strict=False)
                except ValueError:
                    raise self.fail(path, f"{self.label(path)} {part!r} is not a network: {e}",
                                    f"use a CIDR like {example} (prefix length up to 32 for IPv4, 128 for IPv6)") \
                        from None
                raise self.fail(path, f"{self.label(path)} {part!r} has host bits set",
                                f"use the network address: {loose}") from None
        if len(nets) > 2 or (len(nets) == 2 and nets[0].version == nets[1].version):
            raise self.fail(path, f"{self.label(path)} {value!r} is not one network or an IPv4 and an IPv6 one",
                            "give one CIDR, or two of different families for dual-stack (as kubeadm)")
        return nets

    # -- sections -----------------------------------------------------------------------

    def node(self) -> None:
        n = self.cfg.node
        if n.name and not is_dns1123_subdomain(n.name):
            better = suggest_node_name(n.name)
            raise self.fail("node.name", f"{self.label('node.name')} {n.name!r} is not a valid node name "
                            "(kubeadm requires a lower-case RFC 1123 subdomain)",
                            (f"use {better!r}; " if better else "")
                            + "lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, "
                            "at most 253 characters; or leave it empty for the host name")
        if n.advertise_address:
            addr = self.ip("node.advertiseAddress", n.advertise_address, "192.0.2.10")
            if addr.is_unspecified or addr.is_multicast:
                raise self.fail("node.advertiseAddress", f"{self.label('node.advertiseAddress')} "
                                f"{n.advertise_address!r} cannot be advertised",
                                "use the node's own address, or leave it empty for the address of the default route")
        if n.cri_socket:
            sock = n.cri_socket
            rest = sock[len("unix://"):] if sock.startswith("unix://") else sock
            if not rest.startswith("/") or any(c.isspace() for c in sock):
                raise self.fail("node.criSocket", f"{self.label('node.criSocket')} {sock!r} is not a CRI socket "
                                "(kubeadm accepts only unix:// endpoints)",
                                "use unix:///var/run/crio/crio.sock or unix:///run/containerd/containerd.sock, "
                                "or leave it empty to find it on the node")

    def kubernetes(self) -> None:
        k = self.cfg.kubernetes
        m = re.fullmatch(r"v?1\.(\d+)(\.\d+)?", k.version)
        if not m:
            raise self.fail("kubernetes.version", f"{self.label('kubernetes.version')} {k.version!r} is not a "
                            "Kubernetes version", "use a version like v1.34.2")
        if int(m.group(1)) < MIN_KUBERNETES_MINOR:
            raise self.fail("kubernetes.version", f"{self.label('kubernetes.version')} {k.version!r} is too old: "
                            f"k8s-sql supports Kubernetes 1.{MIN_KUBERNETES_MINOR} and later",
                            f"use v1.{MIN_KUBERNETES_MINOR} or newer, e.g. v1.34.2")
        self.choice("kubernetes.containerRuntime", k.container_runtime, ("crio", "containerd"))
        services = []
        if k.service_subnet:
            services = self.networks("kubernetes.serviceSubnet", k.service_subnet, "10.96.0.0/12")
            for net in services:
                host_bits = net.max_prefixlen - net.prefixlen
                if host_bits > SERVICE_SUBNET_MAX_HOST_BITS:
                    raise self.fail("kubernetes.serviceSubnet", f"{self.label('kubernetes.serviceSubnet')} {net} is "
                                    f"too large: kubeadm allows at most {SERVICE_SUBNET_MAX_HOST_BITS} host bits",
                                    f"use a prefix of /{net.max_prefixlen - SERVICE_SUBNET_MAX_HOST_BITS} or longer")
                if net.num_addresses < SERVICE_SUBNET_MIN_ADDRESSES:
                    raise self.fail("kubernetes.serviceSubnet", f"{self.label('kubernetes.serviceSubnet')} {net} is "
                                    f"too small: kubeadm needs {SERVICE_SUBNET_MIN_ADDRESSES} addresses (the DNS "
                                    "service takes the tenth)", "use a shorter prefix, e.g. 10.96.0.0/12")
        if k.pod_subnet:
            pods = self.networks("kubernetes.podSubnet", k.pod_subnet, "10.244.0.0/16")
            for net in pods:
                node_mask = NODE_CIDR_MASK[net.version]
                if net.num_addresses < POD_SUBNET_MIN_ADDRESSES or net.prefixlen > node_mask:
                    raise self.fail("kubernetes.podSubnet", f"{self.label('kubernetes.podSubnet')} {net} is smaller "
                                    f"than one node's pod range (/{node_mask})",
                                    f"use a prefix of /{node_mask} or shorter, e.g. 10.244.0.0/16")
                if node_mask - net.prefixlen > POD_SUBNET_NODE_MASK_MAX_DIFF:
                    raise self.fail("kubernetes.podSubnet", f"{self.label('kubernetes.podSubnet')} {net} is too "
                                    f"large: kubeadm allows at most 2^{POD_SUBNET_NODE_MASK_MAX_DIFF} node ranges "
                                    f"of /{node_mask}",
                                    f"use a prefix of /{node_mask - POD_SUBNET_NODE_MASK_MAX_DIFF} or longer")
                for svc in services:
                    if svc.version == net.version and net.overlaps(svc):
                        raise self.fail("kubernetes.podSubnet", f"{self.label('kubernetes.podSubnet')} {net} "
                                        f"overlaps {self.label('kubernetes.serviceSubnet')} {svc}",
                                        "pick ranges that do not overlap, e.g. the defaults 10.244.0.0/16 (pods) "
                                        "and 10.96.0.0/12 (services)", also=("kubernetes.serviceSubnet",))
        if k.control_plane_endpoint:
            self.endpoint("kubernetes.controlPlaneEndpoint", k.control_plane_endpoint)

    def endpoint(self, path: str, value: str) -> None:
        """``host`` or ``host:port``, host a DNS name or an IP (an IPv6 one in brackets with a port)."""
        host, port = value, None
        if value.startswith("["):
            m = re.fullmatch(r"\[([^\]]*)\](?::(\d{1,5}))?", value)
            host, port = m.groups() if m else ("", None)
            ok = m is not None and ":" in host and _is_address(host)
        elif value.count(":") == 1:
            host, port = value.split(":")
            ok = port.isdigit() and len(port) <= 5
        else:
            ok = True
        ok = ok and (_is_address(host) or _is_hostname(host)) and (port is None or 1 <= int(port) <= 65535)
        if not ok:
            raise self.fail(path, f"{self.label(path)} {value!r} is not host or host:port",
                            "use a DNS name or IP address with an optional port, e.g. k8s.example.com:6443 "
                            "or [2001:db8::10]:6443")

    def paths(self) -> None:
        """Every paths.* field is absolute, names no system directory (k8s-sql writes there
        and ``reset`` removes what it wrote) and differs from the others. kubeadm's own
        locations (manifests, admin kubeconfig) may keep their system default."""
        import dataclasses

        from k8s_sql.paths import is_system_path, normalize

        defaults = type(self.cfg.paths)()
        seen: dict[str, str] = {}
        for f in dataclasses.fields(self.cfg.paths):
            path = f"paths.{camel(f.name)}"
            value = getattr(self.cfg.paths, f.name)
            self.absolute(path, value)
            norm = normalize(value)
            kubeadms = f.name in KUBEADM_PATHS and norm == getattr(defaults, f.name)
            if is_system_path(value) and not kubeadms:
                raise self.fail(path, f"{self.label(path)} {value!r} is a system directory",
                                "k8s-sql writes there (and reset removes what it wrote): use a path of its own, "
                                f"e.g. the default {getattr(defaults, f.name)}")
            if norm in seen:
                raise self.fail(path, f"{self.label(path)} {value!r} is the same path as {self.label(seen[norm])}",
                                "give each of paths.* its own file or directory", also=(seen[norm],))
            seen[norm] = path

    def postgres(self) -> None:
        pg = self.cfg.postgres
        self.choice("postgres.mode", pg.mode, ("local", "external"))
        if pg.mode == "external" and not pg.uri:
            raise self.fail("postgres.mode", f"{self.label('postgres.mode')} is external but postgres.uri is empty",
                            "set postgres.uri to a libpq URI, e.g. postgresql://db.example:5432/kubernetes",
                            also=("postgres.uri",))
        if pg.uri and not re.match(r"postgres(ql)?://", pg.uri):
            raise self.fail("postgres.uri", f"{self.label('postgres.uri')} does not start with postgresql://",
                            "use a libpq connection URI, e.g. postgresql://db.example:5432/kubernetes")
        if pg.version:
            from k8s_sql.pg.cluster import SUPPORTED_MAJORS

            if not pg.version.isdigit() or int(pg.version) not in SUPPORTED_MAJORS:
                raise self.fail("postgres.version", f"{self.label('postgres.version')} {pg.version!r} is not a "
                                f"supported PostgreSQL major version ({SUPPORTED_MAJORS[0]}–{SUPPORTED_MAJORS[-1]})",
                                "use a major version like 15, or leave it empty for the one installed")
        if not pg.cluster or "/" in pg.cluster or pg.cluster.startswith(".") or any(c.isspace() for c in pg.cluster):
            raise self.fail("postgres.cluster", f"{self.label('postgres.cluster')} {pg.cluster!r} is not a cluster "
                            "name", "use the name pg_lsclusters shows, e.g. main")
        self.absolute("postgres.configDir", pg.config_dir, empty_ok=True)
        self.absolute("postgres.dataDir", pg.data_dir, empty_ok=True)
        self.absolute("postgres.socketDir", pg.socket_dir)
        if not (_is_address(pg.host) or _is_hostname(pg.host)):
            raise self.fail("postgres.host", f"{self.label('postgres.host')} {pg.host!r} is not a host name or IP "
                            "address", "use e.g. 127.0.0.1 (the local server) or db.example.com")
        self.port("postgres.port", pg.port)
        for path, value in (("postgres.database", pg.database), ("postgres.role", pg.role)):
            if not _IDENTIFIER.fullmatch(value) or len(value) > 63:
                raise self.fail(path, f"{self.label(path)} {value!r} is not a plain PostgreSQL identifier",
                                "use lower-case letters, digits and _ (not first), at most 63 characters")
        for i, addr in enumerate(pg.client_addresses):
            path = f"postgres.clientAddresses[{i}]"
            if client_network(addr) is not None:
                continue
            try:
                loose = ipaddress.ip_network(addr.strip(), strict=False)
            except ValueError:
                raise self.fail(path, f"postgres.clientAddresses: {addr!r} is not an IP address or network",
                                "use addresses like 192.0.2.11 or networks like 10.0.0.0/24") from None
            raise self.fail(path, f"postgres.clientAddresses: {addr!r} has host bits set",
                            f"use the network address {loose}, or the address alone without a prefix length")

    def postgres_ha(self) -> None:
        """``postgres.ha``: local mode only, three or more distinct node addresses, a free
        monitor port (see :mod:`k8s_sql.pg.ha`)."""
        pg = self.cfg.postgres
        ha = pg.ha
        if not ha.enabled:
            return
        if pg.mode != "local":
            raise self.fail("postgres.ha.enabled", "postgres.ha is for mode: local; an external server's HA is its own",
                            "give postgres.uri as a multi-host URI (postgresql://h1:5432,h2:5432/kubernetes?"
                            "target_session_attrs=read-write), or set postgres.mode: local", also=("postgres.mode",))
        from k8s_sql.pg.ha import parse_node

        addrs = []
        for i, entry in enumerate(ha.nodes):
            try:
                addr, port = parse_node(entry, ha.port)
            except ValueError:
                raise self.fail(f"postgres.ha.nodes[{i}]", f"postgres.ha.nodes[{i}] {entry!r} is not an IP address "
                                "or address:port", "use e.g. 192.0.2.11, 192.0.2.11:5433 or [2001:db8::11]:5433") from None
            self.port(f"postgres.ha.nodes[{i}]", port)
            addrs.append(addr)
        if len(set(addrs)) != len(addrs):
            raise self.fail("postgres.ha.nodes", "postgres.ha.nodes lists an address twice",
                            "list each PostgreSQL node's address once")
        if len(ha.nodes) < 3:
            raise self.fail("postgres.ha.nodes", f"postgres.ha.nodes has {len(ha.nodes)} address(es); HA needs 3",
                            "list the advertise addresses of three control-plane nodes (the first node's first)")
        self.port("postgres.ha.monitorPort", ha.monitor_port)
        self.port("postgres.ha.port", ha.port)
        self.absolute("postgres.ha.dataDir", ha.data_dir)
        if ha.monitor_port == pg.port:
            raise self.fail("postgres.ha.monitorPort", f"postgres.ha.monitorPort {ha.monitor_port} is also "
                            "postgres.port", "give the monitor its own port, e.g. 5431", also=("postgres.port",))
        if ha.port in (pg.port, ha.monitor_port):
            raise self.fail("postgres.ha.port", f"postgres.ha.port {ha.port} is also postgres.port or the monitor's",
                            "give the formation's PostgreSQL its own port, e.g. 5433 (Debian's cluster keeps "
                            "postgres.port)", also=("postgres.port",))

    def shim(self) -> None:
        s = self.cfg.shim
        self.choice("shim.kind", s.kind, ("k8s-sql", "kine"))
        for path, value, empty_ok in (("shim.image", s.image, True), ("shim.kineImage", s.kine_image, False)):
            if (value or not empty_ok) and not _IMAGE.fullmatch(value):
                raise self.fail(path, f"{self.label(path)} {value!r} is not an image reference",
                                "use e.g. docker.io/rancher/kine:v0.14.1"
                                + (", or leave it empty for the image the shim phase builds" if empty_ok else ""))
        if s.listen_address not in ("127.0.0.1", "0.0.0.0"):
            self.ip("shim.listenAddress", s.listen_address, "127.0.0.1")
            raise self.fail("shim.listenAddress", f"{self.label('shim.listenAddress')} {s.listen_address!r} is not "
                            "reachable at 127.0.0.1, where kube-apiserver connects to its shim",
                            "use 127.0.0.1 (or 0.0.0.0 to listen on every IPv4 address as well)")
        self.port("shim.port", s.port)
        self.port("shim.metricsPort", s.metrics_port)
        if not 1 <= s.run_as_user <= MAX_UID:
            raise self.fail("shim.runAsUser", f"{self.label('shim.runAsUser')} {s.run_as_user} is not a non-root uid",
                            f"use a uid from 1 to {MAX_UID}, e.g. 65532")
        self.duration("shim.compactionInterval", s.compaction_interval)
        self.duration("shim.watchProgressNotifyInterval", s.watch_progress_notify_interval)

    def ports(self) -> None:
        """The ports on this node must differ from each other and from kubeadm's."""
        cfg = self.cfg
        used = [("shim.port", cfg.shim.port), ("shim.metricsPort", cfg.shim.metrics_port)]
        if cfg.postgres.mode == "local":
            used.append(("postgres.port", cfg.postgres.port))
        for i, (path, port) in enumerate(used):
            for other, other_port in used[:i]:
                if port == other_port:
                    raise self.fail(path, f"{self.label(path)} {port} is also {self.label(other)}",
                                    "give each listener on the node its own port", also=(other,))
            if port in KUBEADM_PORTS:
                raise self.fail(path, f"{self.label(path)} {port} is the port of {KUBEADM_PORTS[port]}",
                                "pick a port kubeadm's control plane does not use (not "
                                + ", ".join(map(str, KUBEADM_PORTS)) + ")")

    def certificates(self) -> None:
        c = self.cfg.certificates
        if not 1 <= c.ca_validity_days <= MAX_VALIDITY_DAYS:
            raise self.fail("certificates.caValidityDays", f"{self.label('certificates.caValidityDays')} "
                            f"{c.ca_validity_days} is out of range", f"use 1 to {MAX_VALIDITY_DAYS} days, e.g. 3650")
        if c.validity_days < 1:
            raise self.fail("certificates.validityDays", f"{self.label('certificates.validityDays')} "
                            f"{c.validity_days} is not a number of days", "use a positive number, e.g. 365")
        if c.validity_days > c.ca_validity_days:
            raise self.fail("certificates.validityDays", f"{self.label('certificates.validityDays')} "
                            f"{c.validity_days} is longer than certificates.caValidityDays {c.ca_validity_days}",
                            "a certificate cannot outlive the CA that signs it: lower validityDays or raise "
                            "caValidityDays", also=("certificates.caValidityDays",))


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _is_hostname(value: str) -> bool:
    return len(value) <= 253 and _HOSTNAME.fullmatch(value) is not None
