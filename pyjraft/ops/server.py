"""`OpsServer`: the one opt-in HTTP endpoint of a process (aiohttp).

Routes (all ``GET``, all read-only):

- ``/metrics``: Prometheus text (or OpenMetrics, on request) from a
  `RaftCollector` over the registered nodes and transports, the event-loop
  lag, and ``prometheus_client``'s process and GC collectors;
- ``/status``: the HTML status page (`pyjraft.ops.status_page`), reloading
  itself every ``refresh`` seconds (``?refresh=0`` stops it);
- ``/status.json``: the same facts as JSON;
- ``/describe.json``: `Node.describe` of every node;
- ``/health``: 200 when every node (or the one of ``?group=``) is running
  and has heard from a leader within its election timeout (or is the
  leader), 503 otherwise; a load balancer's probe. The body says why.

Trust: the endpoint follows the transport's rule. Without an ``ssl``
context it binds only to loopback addresses unless ``insecure_plaintext`` is
given. With a context that requires client certificates (mutual TLS, the
same CA as the raft traffic), no request is served to a client without one;
``authorize`` may further check each request (say, the certificate's name).

Routes added later (the key-value store's JSON gateway under ``/v1/kv/``)
go through `add_routes` before `start`, and get the same TLS, the same
``authorize`` check and the same ``/v1/`` prefix convention.
"""

from __future__ import annotations

import ipaddress
import os
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from pyjraft.ops.collector import RaftCollector
from pyjraft.ops.loop_lag import LoopLagMonitor
from pyjraft.ops.status_page import render_status_page
from pyjraft.transport.base import format_address

if TYPE_CHECKING:
    from pyjraft.node import Node
    from pyjraft.transport.base import Transport

Authorize = Callable[[web.Request], Awaitable[bool] | bool]
"""Decides whether to serve a request (after TLS); False answers 403."""

_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def node_health(st: dict[str, Any], election_timeout_ms: float) -> tuple[bool, str]:
    """Whether a node with status ``st`` is healthy, and why (see the module doc)."""
    if st.get("state") != "running":
        return False, f"node is {st.get('state')}"
    if st.get("role") == "leader":
        return True, "leader"
    contact = st.get("leader_contact_ms")
    if not st.get("leader") or contact is None:
        return False, "no leader known"
    if float(contact) > election_timeout_ms:
        return False, f"last heard from leader {contact:.0f} ms ago"
    return True, f"following {st['leader']}"


class OpsServer:
    """The HTTP endpoint of one process; see the module docstring.

    Create it, `add_node` (and `add_transport`) what it should show, optionally
    `add_routes`, then `start`. Nodes may be added and removed while it runs.
    """

    def __init__(
        self,
        *,
        nodes: Iterable[Node] = (),
        transports: Iterable[Transport] = (),
        refresh_s: float = 2.0,
        authorize: Authorize | None = None,
        loop_lag_interval: float | None = 0.25,
    ) -> None:
        self._nodes: dict[tuple[str, str], Node] = {}
        self._transports: list[Transport] = []
        for n in nodes:
            self.add_node(n)
        for t in transports:
            self.add_transport(t)
        self.refresh_s = refresh_s
        self._authorize = authorize
        self._started_at = time.time()
        self.loop_lag = LoopLagMonitor(loop_lag_interval) if loop_lag_interval else None
        self.registry = CollectorRegistry(auto_describe=False)
        """The Prometheus registry ``/metrics`` serves; add your own collectors."""
        self.registry.register(
            RaftCollector(lambda: list(self._nodes.values()), self.transports, self.loop_lag)
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.app = web.Application(middlewares=[self._guard])
        """The aiohttp application; routes may be added until `start`."""
        self.app.add_routes(
            [
                web.get("/", self._index),
                web.get("/metrics", make_aiohttp_handler(self.registry)),
                web.get("/status", self._status_page),
                web.get("/status.json", self._status_json),
                web.get("/describe.json", self._describe_json),
                web.get("/health", self._health),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._address = ""

    # -- what it shows -------------------------------------------------------------

    def add_node(self, node: Node) -> None:
        """Show ``node`` (replacing one of the same group and id)."""
        self._nodes[(node.group, node.id)] = node

    def remove_node(self, node: Node) -> None:
        """Stop showing ``node``."""
        self._nodes.pop((node.group, node.id), None)

    def add_transport(self, transport: Transport) -> None:
        """Export ``transport``'s counters (once, however often it is added)."""
        if all(t is not transport for t in self._transports):
            self._transports.append(transport)

    @property
    def nodes(self) -> list[Node]:
        """The nodes shown, by group then id."""
        return [self._nodes[k] for k in sorted(self._nodes)]

    def transports(self) -> Sequence[Transport]:
        """The transports exported: those added, and those of the nodes shown."""
        out = list(self._transports)
        for n in self._nodes.values():
            if all(t is not n.transport for t in out):
                out.append(n.transport)
        return out

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Add routes (say, ``/v1/kv/...``) before `start`; they are served with
        the same TLS and ``authorize`` check as the rest."""
        if self._runner is not None:
            raise RuntimeError("routes must be added before start()")
        self.app.add_routes(list(routes))

    # -- lifecycle --------------------------------------------------------------

    async def start(
        self,
        host: str,
        port: int,
        *,
        ssl: _ssl.SSLContext | None = None,
        insecure_plaintext: bool = False,
    ) -> str:
        """Listen on ``host:port`` (port 0: any free port); returns the address.

        Raises `ValueError` for a non-loopback ``host`` without ``ssl`` unless
        ``insecure_plaintext`` (anyone who reaches it could read the cluster's
        state, and write through routes added later)."""
        if ssl is None and not insecure_plaintext and not is_loopback(host):
            raise ValueError(
                f"refusing to serve HTTP on {host} without TLS: give an ssl context "
                "(--tls-cert/--tls-key/--tls-ca) or insecure_plaintext=True"
            )
        if self._runner is not None:
            raise RuntimeError("already started")
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        sock_host, sock_port = runner.addresses[0][:2]
        self._address = format_address(str(sock_host), int(sock_port))
        if self.loop_lag is not None:
            self.loop_lag.start()
        return self._address

    @property
    def address(self) -> str:
        """``host:port`` listened on ("" before `start`)."""
        return self._address

    async def close(self) -> None:
        """Stop serving. Idempotent."""
        if self.loop_lag is not None:
            await self.loop_lag.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- handlers ---------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._authorize is not None:
            allowed = self._authorize(request)
            if not isinstance(allowed, bool):
                allowed = await allowed
            if not allowed:
                raise web.HTTPForbidden(text="forbidden\n")
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("status")

    def snapshot(self) -> dict[str, Any]:
        """What ``/status.json`` serves (and ``/status`` renders)."""
        return status_snapshot(
            self.nodes,
            endpoint=self._address,
            uptime_s=time.time() - self._started_at,
            loop_lag=self.loop_lag,
        )

    async def _status_page(self, request: web.Request) -> web.Response:
        refresh = self.refresh_s
        if "refresh" in request.query:
            try:
                refresh = max(0.0, min(3600.0, float(request.query["refresh"])))
            except ValueError:
                raise web.HTTPBadRequest(text="refresh must be a number of seconds\n") from None
        html = render_status_page(self.snapshot(), refresh)
        return web.Response(text=html, content_type="text/html")

    async def _status_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot(), dumps=_dumps)

    async def _describe_json(self, request: web.Request) -> web.Response:
        return web.json_response([n.describe() for n in self.nodes], dumps=_dumps)

    async def _health(self, request: web.Request) -> web.Response:
        group = request.query.get("group")
        nodes = [n for n in self.nodes if group is None or n.group == group]
        checks = []
        for n in nodes:
            ok, why = node_health(n.status(), n.options.election_timeout_ms)
            checks.append({"group": n.group, "node": n.id, "ok": ok, "reason": why})
        healthy = bool(checks) and all(c["ok"] for c in checks)
        body = {"status": "ok" if healthy else "unavailable", "checks": checks}
        if not checks:
            body["reason"] = "no raft group here" + (f" named {group!r}" if group else "")
        return web.json_response(body, status=200 if healthy else 503, dumps=_dumps)


def status_snapshot(
    nodes: Sequence[Node],
    *,
    endpoint: str = "",
    uptime_s: float = 0.0,
    loop_lag: LoopLagMonitor | None = None,
) -> dict[str, Any]:
    """The status of ``nodes`` and of this process, as JSON-able data."""
    groups = []
    for n in nodes:
        latency: dict[str, tuple[float, float]] = {}
        if n.metrics is not None:
            for name in (
                "replicate_seconds",
                "log_append_seconds",
                "apply_seconds",
                "read_index_seconds",
            ):
                h = getattr(n.metrics, name)
                if h.count:
                    latency[name.removesuffix("_seconds")] = (
                        round(h.quantile(0.5) * 1000, 3),
                        round(h.quantile(0.99) * 1000, 3),
                    )
        groups.append(
            {
                "status": n.status(),
                "elections": n.events.elections(),
                "events": dict(n.events.counters),
                "latency": latency,
            }
        )
    return {
        "time": time.time(),
        "process": {
            "endpoint": endpoint,
            "pid": os.getpid(),
            "uptime_s": round(uptime_s, 3),
            "loop_lag_max_ms": None if loop_lag is None else round(loop_lag.recent_max() * 1000, 3),
        },
        "groups": groups,
    }


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
