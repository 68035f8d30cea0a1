"""Phase ``pki``: the datastore CA and the certificates of PostgreSQL, the shim and their
clients, in ``paths.pkiDir`` (names in :mod:`k8s_sql.pki.files`).

An existing CA is reused, never replaced (a broken or expiring one stops the phase with a
hint). A leaf is re-issued only when it is missing, does not parse, is not signed by the CA,
expires within 30 days, or its CN/SANs no longer match the configuration; otherwise only
its mode/owner are corrected. So a second run plans nothing. Keys are 0600 (PostgreSQL's
owned by ``postgres``, the shim's by ``shim.runAsUser``), certificates 0644.
"""

from __future__ import annotations

from cryptography import x509

from k8s_sql.errors import K8sSqlError
from k8s_sql.kubeadm.node import advertise_address
from k8s_sql.phases.base import Change, Context, Phase, WriteFile, file_change
from k8s_sql.pki import certs, files


def postgres_owner(ctx: Context) -> str | None:
    """``"postgres"`` when that OS user exists on the host, else ``None`` (root), with a
    note: PostgreSQL cannot read its key until it is chowned."""
    if ctx.host.run(["getent", "passwd", "postgres"], check=False).ok:
        return "postgres"
    ctx.console.print(f"  note: no `postgres` OS user on {ctx.host.name}: {files.POSTGRES_SERVER_KEY} stays owned "
                      "by root; install PostgreSQL first (prereqs) or `chown postgres:postgres` it", markup=False)
    return None


class Pki(Phase):
    """Writes the CA (if none) and every leaf certificate that is missing or stale."""

    name = "pki"
    title = "certificates of the datastore CA, PostgreSQL, the shim and kube-apiserver"

    def plan(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        pki = cfg.paths.pki_dir
        p = lambda name: files.path(pki, name)  # noqa: E731
        changes: list[Change] = []
        ca_pem, ca_key_pem = host.read_bytes(p(files.CA_CERT)), host.read_bytes(p(files.CA_KEY))
        if ca_pem is None and ca_key_pem is None:
            ca_pem, ca_key_pem = certs.new_ca(cfg.certificates.ca_validity_days)
            changes += [WriteFile(p(files.CA_CERT), ca_pem, 0o644),
                        WriteFile(p(files.CA_KEY), ca_key_pem, 0o600, secret=True)]
            fresh_ca = True
        elif ca_pem is None or ca_key_pem is None:
            missing = files.CA_CERT if ca_pem is None else files.CA_KEY
            raise K8sSqlError(f"{missing} is missing but its partner is there", where=pki,
                              hint=f"restore {missing} from a backup, or move ca.crt and ca.key away to make a new CA")
        else:
            fresh_ca = False
        ca_cert, ca_key = certs.load_ca(ca_pem, ca_key_pem, where=p(files.CA_CERT))
        if not fresh_ca:
            changes += [c for c in (file_change(host, p(files.CA_CERT), ca_pem, 0o644, owner="root"),
                                    file_change(host, p(files.CA_KEY), ca_key_pem, 0o600, owner="root", secret=True))
                        if c]
        address, _ = advertise_address(host, cfg)
        for spec in certs.leaf_specs(cfg, address, postgres_owner(ctx)):
            cert_pem, key_pem = host.read_bytes(p(spec.cert)), host.read_bytes(p(spec.key))
            problem = "missing" if fresh_ca else certs.leaf_problem(
                spec, cert_pem, key_pem, ca_cert, cfg.certificates.validity_days)
            if problem:
                if problem != "missing":
                    ctx.console.print(f"  {spec.cert}: {problem}; re-issuing it", markup=False)
                cert_pem, key_pem = certs.issue(spec, ca_cert, ca_key, cfg.certificates.validity_days)
            owner = spec.key_owner or "root"
            for change in (file_change(host, p(spec.cert), cert_pem, 0o644, owner="root"),
                           file_change(host, p(spec.key), key_pem, 0o600, owner=owner,
                                       group=spec.key_group or owner, secret=True)):
                if change:
                    changes.append(change)
        return changes

    def verify(self, ctx: Context) -> None:
        """Every certificate parses and chains to the CA.

        Raises:
            K8sSqlError: one does not (names the file).
        """
        pki = ctx.config.paths.pki_dir
        ca = x509.load_pem_x509_certificate(ctx.host.read_bytes(files.path(pki, files.CA_CERT)) or b"")
        for name in files.ALL_CERTS[1:]:
            data = ctx.host.read_bytes(files.path(pki, name))
            try:
                x509.load_pem_x509_certificate(data or b"").verify_directly_issued_by(ca)
            except Exception:
                raise K8sSqlError(f"{name} does not chain to {files.CA_CERT}", where=pki,
                                  hint="run `k8s-sql init phase pki` again") from None
