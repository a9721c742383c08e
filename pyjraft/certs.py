"""``pyjraft certs``: a CA and node/client certificates for a test cluster.

    pyjraft certs --out DIR --nodes 127.0.0.1:7001,127.0.0.1:7002 --clients app --admins ops

writes into DIR:

* ``ca.pem`` (the cluster CA certificate, given to every process as
  ``--tls-ca``) and ``ca-key.pem`` (its key: keep it away from the nodes;
  it is reused when the command runs again on the same DIR, to add nodes);
* ``node-<id>.pem`` / ``node-<id>-key.pem`` per node (``:`` in the id
  becomes ``_``), naming ``pyjraft://node/<id>`` (see
  `pyjraft.transport.tls`) plus the host as an IP or DNS name;
* ``client-<name>.pem`` / ``client-<name>-key.pem`` per client, naming
  ``pyjraft://client/<name>``;
* ``admin-<name>.pem`` / ``admin-<name>-key.pem`` per administrator, naming
  ``pyjraft://admin/<name>``: a client certificate that the admin service
  also lets change membership, move the leader and trigger snapshots.

Keys are ECDSA P-256, written with mode 0600. This is a convenience for
tests and first deployments; an organisation's own CA works as well, as
long as its certificates name identities the same way.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyjraft.transport.base import parse_address
from pyjraft.transport.tls import ADMIN_URI_PREFIX, CLIENT_URI_PREFIX, NODE_URI_PREFIX

CA_CERT = "ca.pem"
"""File name of the CA certificate in the output directory."""
CA_KEY = "ca-key.pem"
"""File name of the CA key in the output directory."""


def file_stem(kind: str, name: str) -> str:
    """``node-127.0.0.1_7001`` for node ``127.0.0.1:7001``: a name safe as a file name."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
    return f"{kind}-{safe}"


@dataclass(frozen=True)
class CertFiles:
    """Where one certificate and its key were written."""

    cert: Path
    key: Path


def _write(path: Path, data: bytes, private: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[no-any-return]


class CertificateAuthority:
    """A CA key and certificate that sign node and client certificates."""

    def __init__(self, key: Any, cert: Any) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, name: str = "pyjraft test cluster CA", days: int = 365) -> CertificateAuthority:
        """A new self-signed CA."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA saved in ``directory`` by `save`."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        return cls(key, cert)

    def save(self, directory: Path) -> CertFiles:
        """Write ``ca.pem`` and ``ca-key.pem`` into ``directory``."""
        files = CertFiles(directory / CA_CERT, directory / CA_KEY)
        _write(files.cert, _cert_pem(self.cert), private=False)
        _write(files.key, _key_pem(self.key), private=True)
        return files

    def issue(self, uri: str, host: str | None, server: bool, days: int = 365) -> tuple[Any, Any]:
        """A new key and a certificate naming ``uri`` (and ``host``, when given)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = _new_key()
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        if host:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return key, cert

    def write_node(self, directory: Path, node_id: str, days: int = 365) -> CertFiles:
        """Issue and write the certificate of node ``node_id`` (``host:port``)."""
        host, _ = parse_address(node_id)
        key, cert = self.issue(NODE_URI_PREFIX + node_id, host, server=True, days=days)
        return self._write_pair(directory, file_stem("node", node_id), key, cert)

    def write_client(self, directory: Path, name: str, days: int = 365) -> CertFiles:
        """Issue and write the certificate of client ``name``."""
        if not name or "/" in name:
            raise ValueError(f"bad client name {name!r}")
        key, cert = self.issue(CLIENT_URI_PREFIX + name, None, server=False, days=days)
        return self._write_pair(directory, file_stem("client", name), key, cert)

    def write_admin(self, directory: Path, name: str, days: int = 365) -> CertFiles:
        """Issue and write the certificate of administrator ``name``."""
        if not name or "/" in name:
            raise ValueError(f"bad admin name {name!r}")
        key, cert = self.issue(ADMIN_URI_PREFIX + name, None, server=False, days=days)
        return self._write_pair(directory, file_stem("admin", name), key, cert)

    @staticmethod
    def _write_pair(directory: Path, stem: str, key: Any, cert: Any) -> CertFiles:
        files = CertFiles(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
        _write(files.key, _key_pem(key), private=True)
        _write(files.cert, _cert_pem(cert), private=False)
        return files


def make_cluster_certs(
    out: Path,
    nodes: Sequence[str],
    clients: Sequence[str] = (),
    days: int = 365,
    admins: Sequence[str] = (),
) -> dict[str, CertFiles]:
    """Write a CA (reusing one already in ``out``) and the certificates of
    ``nodes``, ``clients`` and ``admins``; return the files by ``"ca"``, node
    id, ``"client:<name>"`` and ``"admin:<name>"``."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / CA_CERT).exists() and (out / CA_KEY).exists():
        ca = CertificateAuthority.load(out)
        files = {"ca": CertFiles(out / CA_CERT, out / CA_KEY)}
    else:
        ca = CertificateAuthority.create(days=days)
        files = {"ca": ca.save(out)}
    for node in nodes:
        files[node] = ca.write_node(out, node, days)
    for name in clients:
        files[f"client:{name}"] = ca.write_client(out, name, days)
    for name in admins:
        files[f"admin:{name}"] = ca.write_admin(out, name, days)
    return files


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None, prog: str = "pyjraft certs") -> int:
    """Entry point of ``pyjraft certs``; returns the exit status."""
    p = argparse.ArgumentParser(
        prog=prog, description="Make a CA and node/client certificates for a pyjraft cluster."
    )
    p.add_argument("--out", required=True, help="directory to write into (created if missing)")
    p.add_argument("--nodes", default="", help="node ids (HOST:PORT), comma-separated")
    p.add_argument("--clients", default="", help="client names, comma-separated")
    p.add_argument(
        "--admins",
        default="",
        help="administrator names, comma-separated: client certificates that may also "
        "change membership through the admin service (pyjraft admin)",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days")
    args = p.parse_args(argv)
    nodes, clients, admins = _split(args.nodes), _split(args.clients), _split(args.admins)
    if not nodes and not clients and not admins:
        p.error("give --nodes, --clients and/or --admins")
    try:
        for n in nodes:
            parse_address(n)
        files = make_cluster_certs(Path(args.out), nodes, clients, args.days, admins)
    except (ValueError, OSError) as e:
        print(f"error: {e}")
        return 1
    for name, f in files.items():
        print(f"{name}: {f.cert} {f.key}")
    print(f"give every process --tls-ca {files['ca'].cert}; keep {files['ca'].key} off the nodes")
    return 0


__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CertFiles",
    "CertificateAuthority",
    "file_stem",
    "main",
    "make_cluster_certs",
]
