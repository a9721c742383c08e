"""Mutual TLS on loopback with generated certificates: who may send what."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyjraft.certs import CertFiles, CertificateAuthority, make_cluster_certs
from pyjraft.core.messages import Heartbeat, Message
from pyjraft.testing.ports import free_ports
from pyjraft.transport import (
    InsecureBindError,
    RemoteError,
    RpcClient,
    RpcTimeoutError,
    ServerLimits,
    TcpTransport,
    TlsConfig,
    TransportError,
)
from pyjraft.transport.codec import encode_messages
from pyjraft.transport.framing import Kind, encode_frame
from pyjraft.transport.tls import (
    Identity,
    IdentityError,
    Role,
    certificate_identity,
    may_administer,
)

from .conftest import eventually, run


class Inbox:
    """Collects delivered messages."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[Message] = asyncio.Queue()

    def __call__(self, m: Message) -> None:
        self.q.put_nowait(m)

    async def get(self, timeout: float = 5.0) -> Message:
        return await asyncio.wait_for(self.q.get(), timeout)


def hb(src: str, dst: str, commit: int) -> Heartbeat:
    return Heartbeat("g", 1, src, dst, commit, b"")


class Pki:
    """A CA in a directory, issuing node and client certificates on demand."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ca = CertificateAuthority.create()
        self.ca_file = self.ca.save(base).cert

    def node(self, node_id: str) -> TlsConfig:
        f = self.ca.write_node(self.base, node_id)
        return TlsConfig.load(f.cert, f.key, self.ca_file)

    def client(self, name: str) -> TlsConfig:
        f = self.ca.write_client(self.base, name)
        return TlsConfig.load(f.cert, f.key, self.ca_file)

    def admin(self, name: str) -> TlsConfig:
        f = self.ca.write_admin(self.base, name)
        return TlsConfig.load(f.cert, f.key, self.ca_file)

    def client_files(self, name: str) -> CertFiles:
        return self.ca.write_client(self.base, name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield Pki(tmp_path_factory.mktemp("pki"))


async def start(tls: TlsConfig | None, addr: str, seed: int, **kw: Any) -> TcpTransport:
    host, port = addr.rsplit(":", 1)
    return await TcpTransport.start(
        host,
        int(port),
        tls=tls,
        rng=random.Random(seed),
        backoff_min=0.01,
        backoff_max=0.05,
        **kw,
    )


async def echo(req: Any) -> Any:
    return req


def addrs(n: int) -> list[str]:
    return [f"127.0.0.1:{p}" for p in free_ports(n)]


def test_nodes_and_clients_talk_over_mutual_tls(pki: Pki, seed: int) -> None:
    a_id, b_id = addrs(2)
    a_tls, b_tls, admin = pki.node(a_id), pki.node(b_id), pki.client("admin")
    assert a_tls.identity.role is Role.NODE and a_tls.identity.name == a_id
    assert admin.identity.role is Role.CLIENT

    async def main() -> None:
        a, b = await start(a_tls, a_id, seed), await start(b_tls, b_id, seed)
        client = RpcClient(tls=admin)
        try:
            inbox = Inbox()
            b.register_group("g", inbox)
            b.register_service("echo", echo)
            a.send([hb(a_id, b_id, 5)])
            assert (await inbox.get()).commit == 5  # type: ignore[attr-defined]
            assert await a.call(b_id, "echo", b"node") == b"node"
            assert await client.call(b_id, "echo", b"client") == b"client"
            assert b.stats.spoofed_messages == 0
        finally:
            await client.close()
            await a.close()
            await b.close()

    run(main)


def test_a_member_cannot_speak_for_another(
    pki: Pki, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate of the same CA naming node C cannot inject messages as A."""
    a_id, b_id, c_id = addrs(3)
    c_tls, b_tls = pki.node(c_id), pki.node(b_id)

    async def main() -> None:
        b, c = await start(b_tls, b_id, seed), await start(c_tls, c_id, seed)
        try:
            inbox = Inbox()
            b.register_group("g", inbox)
            c.send([hb(a_id, b_id, 1), hb(a_id, b_id, 2)])  # forged: src is A
            c.send([hb(c_id, b_id, 3)])  # as itself: delivered (membership is the core's)
            got = await inbox.get()
            assert (got.src, got.commit) == (c_id, 3)  # type: ignore[attr-defined]
            assert b.stats.spoofed_messages == 2
            assert inbox.q.empty()
        finally:
            await b.close()
            await c.close()

    with caplog.at_level(logging.WARNING, "pyjraft.transport"):
        run(main)
    spoof_lines = [r for r in caplog.records if "claiming src" in r.getMessage()]
    assert len(spoof_lines) == 1, "logged once: rate-limited"
    assert f"authenticated as node '{c_id}'" in spoof_lines[0].getMessage()


def test_a_client_certificate_cannot_send_raft_frames(pki: Pki, seed: int, tmp_path: Path) -> None:
    (b_id,) = addrs(1)
    b_tls = pki.node(b_id)
    files = pki.client_files("mallory")

    async def main() -> None:
        b = await start(b_tls, b_id, seed)
        try:
            inbox = Inbox()
            b.register_group("g", inbox)
            b.register_service("echo", echo)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.load_verify_locations(pki.ca_file)
            ctx.load_cert_chain(files.cert, files.key)
            host, port = b_id.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
            writer.write(encode_frame(Kind.RAFT, encode_messages([hb(b_id, b_id, 1)])))
            assert await reader.read() == b""  # refused: the server hung up
            writer.close()
            assert b.stats.raft_from_clients == 1
            assert b.stats.messages_in == 0 and inbox.q.empty()
            # The same certificate may call services.
            client = RpcClient(tls=TlsConfig.load(files.cert, files.key, pki.ca_file))
            try:
                assert await client.call(b_id, "echo", 7) == 7
            finally:
                await client.close()
        finally:
            await b.close()

    run(main)


def test_plaintext_and_foreign_certificates_are_refused(
    pki: Pki, seed: int, tmp_path: Path
) -> None:
    a_id, b_id = addrs(2)
    a_tls, b_tls = pki.node(a_id), pki.node(b_id)
    stranger = make_cluster_certs(tmp_path / "other", [a_id])  # another CA, same id

    async def main() -> None:
        b = await start(b_tls, b_id, seed)
        plain = RpcClient()
        foreign = RpcClient(
            tls=TlsConfig.load(stranger[a_id].cert, stranger[a_id].key, stranger["ca"].cert)
        )
        try:
            inbox = Inbox()
            b.register_group("g", inbox)
            b.register_service("echo", echo)
            with pytest.raises((TransportError, RpcTimeoutError)):
                await plain.call(b_id, "echo", 1, timeout=2.0)
            # A raw plaintext raft frame to the TLS port is not delivered.
            host, port = b_id.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(encode_frame(Kind.RAFT, encode_messages([hb(a_id, b_id, 1)])))
            assert await reader.read() == b""
            writer.close()
            with pytest.raises(TransportError, match="cannot connect"):
                await foreign.call(b_id, "echo", 1, timeout=5.0)
            await eventually(lambda: b.stats.auth_failures >= 3)
            assert b.stats.messages_in == 0 and b.stats.requests_in == 0
            # A genuine member is still served.
            a = await start(a_tls, a_id, seed)
            try:
                a.send([hb(a_id, b_id, 9)])
                assert (await inbox.get()).commit == 9  # type: ignore[attr-defined]
            finally:
                await a.close()
        finally:
            await foreign.close()
            await plain.close()
            await b.close()

    logging.getLogger("pyjraft.transport").disabled = True
    try:
        run(main)
    finally:
        logging.getLogger("pyjraft.transport").disabled = False


def test_the_server_must_be_the_node_we_dialled(pki: Pki, seed: int) -> None:
    """A server whose certificate names another node id gets neither raft
    messages nor RPC calls meant for the address it listens on."""
    a_id, b_id, other_id = addrs(3)
    a_tls, impostor_tls = pki.node(a_id), pki.node(other_id)

    async def main() -> None:
        a = await start(a_tls, a_id, seed)
        impostor = await start(impostor_tls, b_id, seed)  # listens on B, names another id
        try:
            inbox = Inbox()
            impostor.register_group("g", inbox)
            impostor.register_service("echo", echo)
            a.send([hb(a_id, b_id, 1)])
            await eventually(lambda: a.stats.server_identity_mismatches >= 1)
            with pytest.raises(TransportError, match=f"names pyjraft://node/{other_id}"):
                await a.call(b_id, "echo", 1)
            assert impostor.stats.messages_in == 0 and impostor.stats.requests_in == 0
        finally:
            await a.close()
            await impostor.close()

    run(main)


def test_certificate_identities(pki: Pki, tmp_path: Path) -> None:
    files = make_cluster_certs(tmp_path, ["[::1]:7001", "127.0.0.1:7002"], ["admin"])
    assert certificate_identity(files["[::1]:7001"].cert).name == "[::1]:7001"
    assert certificate_identity(files["client:admin"].cert).role is Role.CLIENT
    assert (files["[::1]:7001"].key.stat().st_mode & 0o777) == 0o600
    # Run again on the same directory: the CA is kept, a node is added.
    ca_before = files["ca"].cert.read_bytes()
    again = make_cluster_certs(tmp_path, ["127.0.0.1:7003"])
    assert again["ca"].cert.read_bytes() == ca_before
    with pytest.raises(IdentityError):
        certificate_identity(files["ca"].cert)
    with pytest.raises(ValueError, match="go together"):
        TlsConfig.from_args(str(files["ca"].cert), None, None)
    assert TlsConfig.from_args(None, None, None) is None
    client = TlsConfig.load(files["client:admin"].cert, files["client:admin"].key, files["ca"].cert)
    with pytest.raises(ValueError, match="needs a node certificate"):
        TcpTransport(tls=client)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::"])
def test_plaintext_refuses_non_loopback_binds(host: str) -> None:
    async def main() -> None:
        with pytest.raises(InsecureBindError, match="without TLS"):
            await TcpTransport.start(host, 0)

    run(main)


@pytest.mark.parametrize(
    ("host", "kwargs", "mode"),
    [
        ("127.0.0.1", {}, "plaintext on loopback only"),
        ("localhost", {}, "plaintext on loopback only"),
        ("0.0.0.0", {"insecure_plaintext": True}, "INSECURE PLAINTEXT"),
    ],
)
def test_first_log_line_says_the_mode(
    host: str, kwargs: dict[str, Any], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        t = await TcpTransport.start(host, 0, **kwargs)
        await t.close()

    with caplog.at_level(logging.INFO, "pyjraft.transport"):
        run(main)
    assert mode in caplog.records[0].getMessage()


def test_first_log_line_with_tls(pki: Pki, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    (a_id,) = addrs(1)
    tls = pki.node(a_id)

    async def main() -> None:
        t = await start(tls, a_id, seed)
        await t.close()

    with caplog.at_level(logging.INFO, "pyjraft.transport"):
        run(main)
    assert f"with mutual TLS as pyjraft://node/{a_id}" in caplog.records[0].getMessage()


def test_a_connection_that_never_finishes_its_handshake_is_closed(pki: Pki, seed: int) -> None:
    (b_id,) = addrs(1)
    b_tls = pki.node(b_id)

    async def main() -> None:
        b = await start(b_tls, b_id, seed, limits=ServerLimits(read_timeout=0.2))
        try:
            host, port = b_id.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            assert await reader.read() == b""  # silent: no ClientHello
            writer.close()
            await eventually(lambda: b.stats.auth_failures == 1)
        finally:
            await b.close()

    logging.getLogger("pyjraft.transport").disabled = True
    try:
        run(main)
    finally:
        logging.getLogger("pyjraft.transport").disabled = False


def test_a_caller_service_is_told_who_calls(pki: Pki, seed: int) -> None:
    a_id, b_id = addrs(2)
    a_tls, b_tls = pki.node(a_id), pki.node(b_id)
    client, admin = pki.client("app"), pki.admin("ops")
    assert admin.identity == Identity(Role.ADMIN, "ops")
    assert str(admin.identity) == "pyjraft://admin/ops"

    async def who(req: Any, caller: Identity | None) -> Any:
        return [str(caller), may_administer(caller)]

    async def main() -> None:
        a, b = await start(a_tls, a_id, seed), await start(b_tls, b_id, seed)
        clients = [RpcClient(tls=client), RpcClient(tls=admin)]
        try:
            b.register_caller_service("who", who, max_request_bytes=64)
            assert await clients[0].call(b_id, "who", None) == ["pyjraft://client/app", False]
            assert await clients[1].call(b_id, "who", None) == ["pyjraft://admin/ops", True]
            assert await a.call(b_id, "who", None) == [f"pyjraft://node/{a_id}", True]
            # Its request limit holds as for any service.
            with pytest.raises(RemoteError, match="limit"):
                await clients[1].call(b_id, "who", b"x" * 100)
            b.unregister_service("who")
            with pytest.raises(RemoteError, match="unknown service"):
                await clients[1].call(b_id, "who", None)
        finally:
            for c in clients:
                await c.close()
            await a.close()
            await b.close()

    run(main)


def test_an_admin_certificate_cannot_send_raft_frames(pki: Pki, seed: int) -> None:
    (b_id,) = addrs(1)
    admin = pki.admin("ops")

    async def main() -> None:
        b = await start(pki.node(b_id), b_id, seed)
        try:
            host, port = b_id.rsplit(":", 1)
            _, writer = await asyncio.open_connection(
                host, int(port), ssl=admin.client_context, server_hostname=None
            )
            writer.write(encode_frame(Kind.RAFT, encode_messages([hb(b_id, b_id, 1)])))
            await writer.drain()
            await eventually(lambda: b.stats.raft_from_clients == 1)
            writer.close()
        finally:
            await b.close()

    run(main)


def test_who_may_administer() -> None:
    assert may_administer(None)  # plaintext: whoever reaches the port
    assert may_administer(Identity(Role.NODE, "127.0.0.1:1"))
    assert may_administer(Identity(Role.ADMIN, "ops"))
    assert not may_administer(Identity(Role.CLIENT, "app"))
