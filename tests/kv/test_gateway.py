"""The JSON gateway (`pyjraft.kv.gateway`) on the ops endpoint, in process: every
route and encoding against a real replica, every error reply, redirects to the
leader, and the endpoint's mutual TLS and ``authorize`` check on its routes.

``pyjraft kv serve`` has no ``--http`` in this branch yet: its wiring calls
`add_kv_routes`, tested here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pyjraft.certs import make_cluster_certs
from pyjraft.client import error_reply, ok_reply
from pyjraft.kv.gateway import KvGateway, add_kv_routes
from pyjraft.kv.protocol import KvLimits
from pyjraft.ops import OpsServer
from pyjraft.transport import TlsConfig
from tests.kv.conftest import ServerThread


class Gateway:
    """An `OpsServer` with the gateway, on a `ServerThread`'s loop; requests
    from the test's own loop."""

    def __init__(self, server: ServerThread, **kw: Any) -> None:
        assert server.server is not None
        self.server = server
        self.ops = OpsServer(nodes=[server.server.node] if server.server.node else [])
        self.gateway = add_kv_routes(self.ops, server.server.service, **kw)
        self.addr = server.call(self.ops.start("127.0.0.1", 0))

    def close(self) -> None:
        self.server.call(self.ops.close())

    def request(
        self, method: str, path: str, *, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        async def go() -> tuple[int, Any, dict[str, str]]:
            async with aiohttp.ClientSession() as s:
                kw: dict[str, Any] = {"allow_redirects": False}
                if raw is not None:
                    kw["data"] = raw
                    kw["headers"] = {"Content-Type": "application/octet-stream"}
                elif isinstance(body, (bytes, str)):
                    kw["data"] = body
                    kw["headers"] = {"Content-Type": "application/json"}
                elif body is not None:
                    kw["json"] = body
                async with s.request(method, f"http://{self.addr}{path}", **kw) as r:
                    text = await r.text()
                    try:
                        doc = json.loads(text)
                    except ValueError:
                        doc = text
                    return r.status, doc, dict(r.headers)

        return asyncio.run(go())


@pytest.fixture
def gw(server: ServerThread) -> Iterator[Gateway]:
    g = Gateway(server)
    yield g
    g.close()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode()


def test_put_get_delete(gw: Gateway) -> None:
    st, doc, _ = gw.request("PUT", "/v1/kv/greeting", body={"value": "hello"})
    assert st == 200 and doc["prev"] is None
    rev = doc["revision"]
    st, doc, _ = gw.request("GET", "/v1/kv/greeting")
    assert st == 200
    assert doc == {
        "key": "greeting",
        "value": "hello",
        "create_revision": rev,
        "mod_revision": rev,
        "version": 1,
        "revision": rev,
    }
    st, doc, _ = gw.request("PUT", "/v1/kv/greeting", body={"value": "hi"})
    assert st == 200 and doc["prev"]["value"] == "hello" and doc["revision"] == rev + 1
    for read in ("serializable", "lease", "linearizable"):
        st, doc, _ = gw.request("GET", f"/v1/kv/greeting?read={read}")
        assert (st, doc["value"], doc["version"]) == (200, "hi", 2)
    st, doc, _ = gw.request("DELETE", "/v1/kv/greeting")
    assert st == 200 and doc["deleted"] is True and doc["prev"]["value"] == "hi"
    st, doc, _ = gw.request("GET", "/v1/kv/greeting")
    assert st == 404 and doc["error"] == "not_found" and doc["key"] == "greeting"
    st, doc, _ = gw.request("DELETE", "/v1/kv/greeting")
    assert st == 200 and doc["deleted"] is False and doc["prev"] is None


def test_keys_with_slashes_spaces_and_unicode(gw: Gateway) -> None:
    for key, path in (("user/1", "user/1"), ("sp ace", "sp%20ace"), ("clé", "cl%C3%A9")):
        st, _, _ = gw.request("PUT", f"/v1/kv/{path}", body={"value": f"v-{key}"})
        assert st == 200
        st, doc, _ = gw.request("GET", f"/v1/kv/{path}")
        assert (st, doc["key"], doc["value"]) == (200, key, f"v-{key}")


def test_base64_keys_and_values_and_raw_bodies(gw: Gateway) -> None:
    key, value = b"\xff\x00k/+", b"\x80\x81\x00"
    st, _, _ = gw.request("PUT", f"/v1/kv/{_b64(key)}?encoding=base64", body={"value": _b64(value)})
    assert st == 200
    st, doc, _ = gw.request("GET", f"/v1/kv/{_b64(key)}?encoding=base64")
    assert st == 200
    assert base64.urlsafe_b64decode(doc["key"]) == key
    assert base64.urlsafe_b64decode(doc["value"]) == value
    # Unpadded base64url and standard base64 are accepted too.
    unpadded = _b64(key).rstrip("=")
    assert gw.request("GET", f"/v1/kv/{unpadded}?encoding=base64")[0] == 200
    # Read as UTF-8, what is not UTF-8 comes back as {"base64": ...}.
    st, doc, _ = gw.request("GET", "/v1/kv?prefix=")
    (kv,) = [k for k in doc["kvs"] if isinstance(k["key"], dict)]
    assert base64.urlsafe_b64decode(kv["key"]["base64"]) == key
    assert base64.urlsafe_b64decode(kv["value"]["base64"]) == value
    # An octet-stream body is the value, byte for byte.
    st, _, _ = gw.request("PUT", "/v1/kv/raw", raw=b"\x00\xffbytes")
    assert st == 200
    st, doc, _ = gw.request("GET", f"/v1/kv/{_b64(b'raw')}?encoding=base64")
    assert base64.urlsafe_b64decode(doc["value"]) == b"\x00\xffbytes"


def test_list_by_prefix_in_pages(gw: Gateway) -> None:
    for i in range(5):
        gw.request("PUT", f"/v1/kv/a/{i}", body={"value": str(i)})
    gw.request("PUT", "/v1/kv/b", body={"value": "b"})
    seen: list[str] = []
    path = "/v1/kv?prefix=a/&limit=2"
    while True:
        st, doc, _ = gw.request("GET", path)
        assert st == 200 and len(doc["kvs"]) <= 2
        seen += [kv["key"] for kv in doc["kvs"]]
        if not doc["more"]:
            assert "next" not in doc
            break
        path = "/v1/kv?prefix=a/&limit=2&start=" + doc["next"].replace("\0", "%00")
    assert seen == [f"a/{i}" for i in range(5)]
    st, doc, _ = gw.request("GET", "/v1/kv?prefix=&keys_only=true&read=serializable")
    assert st == 200 and [kv["key"] for kv in doc["kvs"]] == [*seen, "b"]
    assert all(kv["value"] == "" for kv in doc["kvs"])


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/kv/k?encoding=latin-1", None, 400, "invalid_request"),
        ("GET", "/v1/kv/%%%?encoding=base64", None, 400, "invalid_request"),
        ("GET", "/v1/kv/k?read=eventual", None, 400, "invalid_request"),
        ("GET", "/v1/kv/" + "k" * 512, None, 400, "invalid_request"),
        ("PUT", "/v1/kv/k", "{not json", 400, "invalid_request"),
        ("PUT", "/v1/kv/k", {"value": "v", "ttl": 3}, 400, "invalid_request"),
        ("PUT", "/v1/kv/k", {"value": 3}, 400, "invalid_request"),
        ("PUT", "/v1/kv/k?encoding=base64", {"value": "!!"}, 400, "invalid_request"),
        ("PUT", "/v1/kv/k", {"value": "x" * 200}, 400, "invalid_request"),
        ("PUT", "/v1/kv/k", {"value": "x" * 2000}, 413, "too_large"),
        ("GET", "/v1/kv", None, 400, "invalid_request"),
        ("GET", "/v1/kv?prefix=a&limit=0", None, 400, "invalid_request"),
        ("GET", "/v1/kv?prefix=a&limit=ten", None, 400, "invalid_request"),
        ("GET", "/v1/kv?prefix=a&keys_only=maybe", None, 400, "invalid_request"),
        ("GET", "/v1/kv?prefix=a&reverse=true", None, 400, "invalid_request"),
    ],
)
def test_bad_requests_get_clear_errors_and_change_nothing(
    start_server: Callable[..., ServerThread],
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
) -> None:
    server = start_server(limits=KvLimits(max_value_bytes=100))
    gw = Gateway(server)
    try:
        st, doc, _ = gw.request(method, path, body=body)
        assert (st, doc["error"]) == (status, code), doc
        assert doc["message"]
        assert gw.request("GET", "/v1/kv?prefix=")[1]["revision"] == 0  # nothing written
    finally:
        gw.close()


def test_a_method_the_gateway_does_not_serve_is_refused(gw: Gateway) -> None:
    assert gw.request("POST", "/v1/kv/k", body={"value": "v"})[0] == 405


def test_a_follower_answers_not_leader(start_server: Callable[..., ServerThread]) -> None:
    # One replica of a group whose other members never answer: a follower forever.
    follower = start_server(others=("127.0.0.1:1", "127.0.0.1:2"))
    gw = Gateway(follower)
    try:
        st, doc, headers = gw.request("PUT", "/v1/kv/k", body={"value": "v"})
        assert (st, doc["error"], doc["leader"]) == (503, "not_leader", "")
        assert headers["Retry-After"] == "1"
        st, doc, _ = gw.request("GET", "/v1/kv/k")
        assert (st, doc["error"]) == (503, "not_leader")
        # Its own state, at once.
        assert gw.request("GET", "/v1/kv/k?read=serializable")[0] == 404
    finally:
        gw.close()


class FakeService:
    """A `KvService` stand-in answering every request with ``reply``."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.limits = KvLimits()
        self.requests: list[dict[str, Any]] = []

    def handle(self, request: dict[str, Any]) -> Any:
        self.requests.append(request)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(self.reply)
        return fut


def _fake_request(
    reply: dict[str, Any], method: str, path: str, **kw: Any
) -> tuple[int, Any, dict[str, str]]:
    async def go() -> tuple[int, Any, dict[str, str]]:
        app = web.Application()
        app.add_routes(KvGateway(FakeService(reply), **kw).routes())  # type: ignore[arg-type]
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.request(
                    method,
                    f"http://{host}:{port}{path}",
                    json={"value": "v"} if method == "PUT" else None,
                    allow_redirects=False,
                ) as r,
            ):
                return r.status, json.loads(await r.text()), dict(r.headers)
        finally:
            await runner.cleanup()

    return asyncio.run(go())


def test_not_leader_redirects_to_the_leaders_gateway_when_known() -> None:
    reply = error_reply("not_leader", "not the leader", leader="10.0.0.2:9102")
    st, doc, headers = _fake_request(
        reply, "PUT", "/v1/kv/a/b?encoding=utf-8", http_peers={"10.0.0.2:9102": "10.0.0.2:9182"}
    )
    assert st == 307
    assert headers["Location"] == "http://10.0.0.2:9182/v1/kv/a/b?encoding=utf-8"
    assert doc["leader"] == "10.0.0.2:9102"
    # Without the leader's HTTP address: the leader's raft address, no redirect.
    st, doc, _ = _fake_request(reply, "PUT", "/v1/kv/k")
    assert (st, doc["error"], doc["leader"]) == (503, "not_leader", "10.0.0.2:9102")


@pytest.mark.parametrize(
    ("code", "status"),
    [("unknown_outcome", 504), ("overloaded", 503), ("unavailable", 503), ("invalid_request", 400)],
)
def test_service_errors_map_to_http_statuses(code: str, status: int) -> None:
    st, doc, _ = _fake_request(error_reply(code, "why"), "PUT", "/v1/kv/k")
    assert (st, doc["error"]) == (status, code)
    if code == "unknown_outcome":
        assert "may or may not be applied" in doc["message"]


def test_an_error_result_of_the_state_machine_is_an_error() -> None:
    st, doc, _ = _fake_request(ok_reply(error_reply("invalid_request", "bad")), "PUT", "/v1/kv/k")
    assert (st, doc["error"], doc["message"]) == (400, "invalid_request", "bad")


# -- the endpoint's authentication applies to the gateway ----------------------------------


def test_mutual_tls_refuses_a_client_without_a_certificate(
    server: ServerThread, tmp_path: Path
) -> None:
    files = make_cluster_certs(tmp_path / "tls", [server.addr], ["app"])
    node = TlsConfig.load(files[server.addr].cert, files[server.addr].key, files["ca"].cert)
    assert server.server is not None
    ops = OpsServer()
    add_kv_routes(ops, server.server.service)
    addr = server.call(ops.start("127.0.0.1", 0, ssl=node.server_context))

    def client_ctx(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(files["ca"].cert))
        ctx.check_hostname = False  # node certificates name node ids, not hosts
        if with_cert:
            ctx.load_cert_chain(str(files["client:app"].cert), str(files["client:app"].key))
        return ctx

    async def go() -> None:
        url = f"https://{addr}/v1/kv/k"
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.put(url, json={"value": "v"}, ssl=client_ctx(False)) as r:
                    await r.read()
            async with s.put(url, json={"value": "v"}, ssl=client_ctx(True)) as r:
                assert r.status == 200
            async with s.get(url, ssl=client_ctx(True)) as r:
                assert (r.status, (await r.json())["value"]) == (200, "v")

    try:
        asyncio.run(go())
    finally:
        server.call(ops.close())


def test_authorize_guards_the_gateway(server: ServerThread) -> None:
    assert server.server is not None
    ops = OpsServer(authorize=lambda request: request.method == "GET")
    add_kv_routes(ops, server.server.service)
    addr = server.call(ops.start("127.0.0.1", 0))

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.put(f"http://{addr}/v1/kv/k", json={"value": "v"}) as r:
                assert r.status == 403
            async with s.get(f"http://{addr}/v1/kv/k") as r:
                assert r.status == 404  # served, and nothing was written

    try:
        asyncio.run(go())
    finally:
        server.call(ops.close())
