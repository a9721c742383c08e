"""The ops endpoint behind mutual TLS: a client without a certificate of the
cluster's CA is refused at the handshake; ``authorize`` sees the certificate."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pyjraft.ops import OpsServer


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(tmp: Path, name: str, subject: str, ext: str) -> None:
    (tmp / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", subject, cwd=tmp)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "1",
             "-extfile", f"{name}.ext", cwd=tmp)  # fmt: skip


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    assert shutil.which("openssl"), "the openssl command is needed to make test certificates"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
             "ca.key", "-out", "ca.crt", "-subj", "/CN=test-ca", cwd=tmp_path)  # fmt: skip
    _issue(tmp_path, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\n")
    _issue(tmp_path, "client", "/CN=ops-client", "extendedKeyUsage=clientAuth\n")
    return tmp_path


def test_mutual_tls_refuses_clients_without_a_certificate(pki: Path) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    server_ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    anonymous = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    client_ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    seen: list[str] = []

    def authorize(request: web.Request) -> bool:
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in cert["subject"]) if cert else {}
        seen.append(subject.get("commonName", ""))
        return subject.get("commonName") == "ops-client"

    async def scenario() -> None:
        ops = OpsServer(authorize=authorize)
        addr = await ops.start("127.0.0.1", 0, ssl=server_ctx)
        url = f"https://{addr}/health"
        try:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientError):
                    async with session.get(url, ssl=anonymous) as r:
                        await r.read()
                async with session.get(url, ssl=client_ctx) as r:
                    assert r.status == 503  # served (no raft group here), not refused
        finally:
            await ops.close()

    asyncio.run(scenario())
    assert seen == ["ops-client"]
