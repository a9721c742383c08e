"""Mutual TLS for the TCP transport: who is on the other end of a connection.

Theory of operation
-------------------
Every certificate of a cluster is signed by the cluster's CA and names
exactly one *identity* in a URI subject alternative name:

* ``pyjraft://node/<node id>`` -- a raft member; ``<node id>`` is its
  ``host:port`` exactly as it appears in the group's peer list
  (``pyjraft://node/127.0.0.1:7001``). A node certificate carries both the
  serverAuth and clientAuth extended key usages.
* ``pyjraft://client/<name>`` -- a client: it may call RPC services but never
  send raft messages. Client certificates carry clientAuth only.
* ``pyjraft://admin/<name>`` -- an administrator: a client (no raft
  messages) that may also change a group's membership, move its leader,
  trigger snapshots through the admin service (`may_administer`), which
  plain client certificates may only read.

Being signed by the CA is not enough to act as a member: a server takes the
identity from the verified certificate of each accepted connection and drops
every raft message whose ``src`` is not that identity, and refuses raft
frames from a client identity altogether. A connecting side checks that the
server's certificate names the node id it meant to reach (not merely "some
certificate of the cluster"), so host name checking is replaced by this
identity check. `pyjraft.certs` makes such certificates for a test cluster.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_URI_PREFIX = "pyjraft://node/"
"""URI SAN prefix of a node certificate; the node id follows."""
CLIENT_URI_PREFIX = "pyjraft://client/"
"""URI SAN prefix of a client certificate; the client's name follows."""
ADMIN_URI_PREFIX = "pyjraft://admin/"
"""URI SAN prefix of an administrator's client certificate; its name follows."""


class Role(enum.Enum):
    """What a certificate allows its holder to do."""

    NODE = "node"
    """A raft member: raft messages (as itself) and RPC calls."""
    CLIENT = "client"
    """RPC calls only."""
    ADMIN = "admin"
    """RPC calls only, admin mutations included."""


_PREFIXES = {
    Role.NODE: NODE_URI_PREFIX,
    Role.CLIENT: CLIENT_URI_PREFIX,
    Role.ADMIN: ADMIN_URI_PREFIX,
}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate names: a role and a name (a node id or a client name)."""

    role: Role
    name: str

    def __str__(self) -> str:
        return _PREFIXES[self.role] + self.name


class IdentityError(ValueError):
    """A certificate names no pyjraft identity, or more than one."""


def identity_from_uris(uris: list[str]) -> Identity:
    """The one identity among a certificate's URI SANs; `IdentityError` if none or several."""
    found: list[Identity] = []
    for uri in uris:
        for role, prefix in _PREFIXES.items():
            if uri.startswith(prefix):
                found.append(Identity(role, uri[len(prefix) :]))
    if len(found) != 1 or not found[0].name:
        raise IdentityError(
            f"certificate names {len(found)} pyjraft identities (URI SANs {uris!r:.200}); "
            f"expected exactly one {NODE_URI_PREFIX}<id>, {CLIENT_URI_PREFIX}<name> or "
            f"{ADMIN_URI_PREFIX}<name>"
        )
    return found[0]


def may_administer(caller: Identity | None) -> bool:
    """Whether ``caller`` may change membership, move leadership, trigger
    snapshots or reset peers through the admin service: a node certificate
    or an admin one, or an unauthenticated caller (None: a plaintext server,
    which trusts whoever reaches its port anyway). Plain client
    certificates may only read."""
    return caller is None or caller.role is not Role.CLIENT


def peer_identity(peercert: Any) -> Identity:
    """The identity of a verified peer certificate, as `ssl` decodes it
    (``transport.get_extra_info("peercert")``)."""
    if not isinstance(peercert, dict):
        raise IdentityError("the peer presented no certificate")
    sans = peercert.get("subjectAltName", ())
    return identity_from_uris([v for k, v in sans if k == "URI" and isinstance(v, str)])


def certificate_identity(cert_file: str | Path) -> Identity:
    """The identity named by the PEM certificate in ``cert_file`` (its first one)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(f"{cert_file}: no subjectAltName extension") from None
    try:
        return identity_from_uris(san.get_values_for_type(x509.UniformResourceIdentifier))
    except IdentityError as e:
        raise IdentityError(f"{cert_file}: {e}") from None


@dataclass(frozen=True)
class TlsConfig:
    """The TLS settings of one process: its certificate and key, the cluster CA.

    Build it with `load`. ``server_context`` (accepting; requires a client
    certificate signed by the CA) and ``client_context`` (connecting;
    presents our certificate, requires the server's, checks no host name:
    the transport checks the server's identity instead) are made from the
    files; ``identity`` is what our own certificate names.
    """

    identity: Identity
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext

    @classmethod
    def load(cls, cert: str | Path, key: str | Path, ca: str | Path) -> TlsConfig:
        """Read the PEM files; raise `ValueError` (or `OSError`) with the file's
        name if one is missing or does not fit."""
        cert, key, ca = str(cert), str(key), str(ca)
        identity = certificate_identity(cert)
        try:
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server.minimum_version = ssl.TLSVersion.TLSv1_2
            server.verify_mode = ssl.CERT_REQUIRED
            server.load_cert_chain(cert, key)
            server.load_verify_locations(cafile=ca)
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.minimum_version = ssl.TLSVersion.TLSv1_2
            client.check_hostname = False  # the identity check replaces it
            client.verify_mode = ssl.CERT_REQUIRED
            client.load_cert_chain(cert, key)
            client.load_verify_locations(cafile=ca)
        except ssl.SSLError as e:
            raise ValueError(f"TLS files {cert}, {key}, {ca}: {e}") from e
        return cls(identity, server, client)

    @classmethod
    def from_args(cls, cert: str | None, key: str | None, ca: str | None) -> TlsConfig | None:
        """`load` from command-line values (``--tls-cert --tls-key --tls-ca``):
        None when none is given, `ValueError` when only some are."""
        given = [v for v in (cert, key, ca) if v]
        if not given:
            return None
        if len(given) != 3:
            raise ValueError("--tls-cert, --tls-key and --tls-ca go together: give all three")
        assert cert and key and ca
        return cls.load(cert, key, ca)


def check_server_identity(peercert: Any, addr: str) -> str | None:
    """Why the server at ``addr`` is not the node we meant to reach, or None if it is."""
    try:
        ident = peer_identity(peercert)
    except IdentityError as e:
        return str(e)
    if ident.role is not Role.NODE or ident.name != addr:
        return f"its certificate names {ident}, not {NODE_URI_PREFIX}{addr}"
    return None


__all__ = [
    "ADMIN_URI_PREFIX",
    "CLIENT_URI_PREFIX",
    "NODE_URI_PREFIX",
    "Identity",
    "IdentityError",
    "Role",
    "TlsConfig",
    "certificate_identity",
    "check_server_identity",
    "identity_from_uris",
    "may_administer",
    "peer_identity",
]
