"""The key-value store's JSON gateway on the ops endpoint: ``/v1/kv/...`` over HTTP.

For clients in other languages. `add_kv_routes` mounts it on a
`pyjraft.ops.OpsServer` (before ``start``), so it is served with the
endpoint's TLS (a context that requires client certificates turns away
every request without one) and its ``authorize`` check. It serves from the
replica's own `KvService` in the same process: every request becomes the
``kv`` service's request map and goes through `KvService.handle`, with its
validation and limits; nothing reaches the log that the RPC service would
refuse.

Routes (``PREFIX`` is ``/v1/kv``):

==========================  ==================================================
``GET PREFIX/{key}``        the key-value; 404 when absent
``PUT PREFIX/{key}``        set it; the body is ``{"value": V}`` (JSON), or the
                            value's raw bytes with ``Content-Type:
                            application/octet-stream``
``DELETE PREFIX/{key}``     delete it (``deleted`` false when it was absent)
``GET PREFIX?prefix=P``     the keys starting with ``P`` (``""``: every key), in
                            order, at most ``limit`` (default 1000, capped by the
                            service); ``more`` says there are others after the
                            last, and ``next`` is the ``start=`` of the next
                            page; ``keys_only=true`` leaves the values out
==========================  ==================================================

Reads are linearizable unless ``?read=serializable`` (this replica's state
at once, possibly stale) or ``?read=lease``. Writes go through this
replica's raft node: a replica that does not lead answers ``not_leader``
with the leader's raft address (``leader``) and, when `add_kv_routes` was
given the cluster's HTTP addresses, a ``307`` redirect to the leader's
gateway (which keeps the method and body).

Encoding (``?encoding=``): ``utf-8`` (the default) takes the key in the
path and the values in JSON as text, encoded as UTF-8; in replies a key or
value that is not valid UTF-8 is ``{"base64": "..."}``. ``base64`` takes
and gives every key and value as RFC 4648 base64url (``-`` and ``_``;
padding optional on input, standard ``+``/``/`` accepted too). A key-value
in a reply is ``{"key", "value", "create_revision", "mod_revision",
"version"}``; ``revision`` is the store's revision the reply was read at or
made.

Errors are JSON, ``{"error": CODE, "message": TEXT, ...}``: 400
``invalid_request`` (a malformed key, encoding, body or parameter, or one
the service refuses: too long, too large), 404 ``not_found``, 413
``too_large`` (a body over the value limit plus its encoding),
503 ``not_leader`` / ``unavailable`` / ``overloaded`` (nothing was done: retry,
elsewhere for ``not_leader``), 504 ``unknown_outcome`` (the write was
proposed and its outcome is unknown: it may or may not be applied).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pyjraft.client import (
    INVALID_REQUEST,
    NOT_LEADER,
    OVERLOADED,
    UNAVAILABLE,
    UNKNOWN_OUTCOME,
)
from pyjraft.kv.protocol import READ_MODES
from pyjraft.kv.service import KvService
from pyjraft.kv.types import prefix_end

if TYPE_CHECKING:
    from pyjraft.ops import OpsServer

PREFIX = "/v1/kv"
"""Where the gateway's routes live."""
ENCODINGS = ("utf-8", "base64")
"""The ``encoding`` parameter's values."""
DEFAULT_SCAN_LIMIT = 1000
"""Keys a prefix listing returns without ``limit``."""

_STATUS = {
    INVALID_REQUEST: 400,
    NOT_LEADER: 503,
    UNAVAILABLE: 503,
    OVERLOADED: 503,
    UNKNOWN_OUTCOME: 504,
}


class _BadRequest(Exception):
    """A request the gateway refuses before asking the service."""


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": code, "message": message, **extra}
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def decode_b64(text: str) -> bytes:
    """base64url (or standard base64), padding optional; `ValueError` if malformed."""
    t = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(t + "=" * (-len(t) % 4), validate=True)
    except binascii.Error as e:
        raise ValueError(f"not base64: {e}") from None


def encode_b64(b: bytes) -> str:
    """base64url with padding."""
    return base64.urlsafe_b64encode(b).decode()


class KvGateway:
    """The gateway's handlers over one replica's `KvService`; see the module doc."""

    def __init__(
        self,
        service: KvService,
        http_peers: Mapping[str, str] | None = None,
        scheme: str = "http",
    ) -> None:
        self.service = service
        self.http_peers = dict(http_peers or {})
        """Raft address -> the HTTP ``host:port`` of its gateway (for redirects)."""
        self.scheme = scheme
        limits = service.limits
        # A JSON body carries the value base64-encoded at worst, plus a little framing.
        self.max_body_bytes = limits.max_value_bytes * 4 // 3 + 1024
        self.stats: dict[str, int] = {"requests": 0, "errors": 0, "redirects": 0}
        """Requests served, answered with an error, and redirected to the leader."""

    def routes(self) -> list[web.RouteDef]:
        """The routes, for `OpsServer.add_routes`."""
        return [
            web.get(PREFIX, self.list_prefix),
            web.get(PREFIX + "/{key:.+}", self.get),
            web.put(PREFIX + "/{key:.+}", self.put),
            web.delete(PREFIX + "/{key:.+}", self.delete),
        ]

    # -- encoding ------------------------------------------------------------------

    @staticmethod
    def _encoding(request: web.Request) -> str:
        enc = request.query.get("encoding", "utf-8").lower()
        if enc in ("utf8", "utf-8"):
            return "utf-8"
        if enc != "base64":
            raise _BadRequest(f"encoding must be one of {', '.join(ENCODINGS)}, not {enc!r}")
        return enc

    @staticmethod
    def _decode(text: str, enc: str, what: str) -> bytes:
        if enc == "utf-8":
            try:
                return text.encode("utf-8")
            except UnicodeEncodeError:
                raise _BadRequest(f"{what} is not valid UTF-8") from None
        try:
            return decode_b64(text)
        except ValueError as e:
            raise _BadRequest(f"{what}: {e}") from None

    @staticmethod
    def _encode(b: bytes, enc: str) -> Any:
        if enc == "base64":
            return encode_b64(b)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": encode_b64(b)}

    def _kv_json(self, w: Any, enc: str) -> Any:
        if w is None:
            return None
        return {
            "key": self._encode(bytes(w[0]), enc),
            "value": self._encode(bytes(w[1]), enc),
            "create_revision": int(w[2]),
            "mod_revision": int(w[3]),
            "version": int(w[4]),
        }

    def _key(self, request: web.Request, enc: str) -> bytes:
        return self._decode(request.match_info["key"], enc, "key")

    @staticmethod
    def _read_mode(request: web.Request) -> str:
        read = request.query.get("read", "linearizable")
        if read not in READ_MODES:
            raise _BadRequest(f"read must be one of {', '.join(READ_MODES)}, not {read!r}")
        return read

    # -- calling the service -------------------------------------------------------------

    async def _call(self, request: web.Request, req: dict[str, Any]) -> Any:
        """The service's ``ok`` value, or raise the HTTP error reply."""
        self.stats["requests"] += 1
        pending = self.service.handle(req)
        reply = await pending if isinstance(pending, Awaitable) else pending
        value = reply.get("ok") if isinstance(reply, dict) else None
        if (
            isinstance(reply, dict)
            and "ok" in reply
            and not (isinstance(value, dict) and "error" in value)
        ):
            return value
        err = value if isinstance(value, dict) and "error" in value else reply
        if not isinstance(err, dict):
            raise web.HTTPInternalServerError(text="unexpected reply from the kv service\n")
        self.stats["errors"] += 1
        code = str(err.get("error"))
        message = str(err.get("message", ""))
        if code == NOT_LEADER:
            leader = str(err.get("leader") or "")
            target = self.http_peers.get(leader)
            if target:
                self.stats["redirects"] += 1
                url = (
                    request.url.with_scheme(self.scheme)
                    .with_host(target.rsplit(":", 1)[0].strip("[]"))
                    .with_port(int(target.rsplit(":", 1)[1]))
                )
                raise web.HTTPTemporaryRedirect(
                    location=str(url),
                    text=_dumps({"error": code, "message": message, "leader": leader}),
                    content_type="application/json",
                )
            raise _HttpError(_error(503, code, message or "not the leader", leader=leader))
        if code == UNKNOWN_OUTCOME:
            message = (message + "; " if message else "") + "the write may or may not be applied"
        raise _HttpError(_error(_STATUS.get(code, 500), code, message))

    async def _serve(self, request: web.Request, fn: Any) -> web.StreamResponse:
        try:
            return await fn(request)  # type: ignore[no-any-return]
        except _BadRequest as e:
            self.stats["errors"] += 1
            return _error(400, INVALID_REQUEST, str(e))
        except _HttpError as e:
            return e.response

    # -- handlers ----------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/kv/{key}``."""
        return await self._serve(request, self._get)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        enc = self._encoding(request)
        key = self._key(request, enc)
        v = await self._call(request, {"op": "get", "key": key, "read": self._read_mode(request)})
        if v["kv"] is None:
            return _error(
                404,
                "not_found",
                "no such key",
                key=self._encode(key, enc),
                revision=v["revision"],
            )
        return web.json_response(
            {**self._kv_json(v["kv"], enc), "revision": v["revision"]}, dumps=_dumps
        )

    async def put(self, request: web.Request) -> web.StreamResponse:
        """``PUT /v1/kv/{key}``."""
        return await self._serve(request, self._put)

    async def _put(self, request: web.Request) -> web.StreamResponse:
        enc = self._encoding(request)
        key = self._key(request, enc)
        body = await self._body(request)
        if request.content_type == "application/octet-stream":
            value = body
        else:
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise _BadRequest(f"the body is not JSON: {e}") from None
            if not isinstance(doc, dict) or set(doc) != {"value"}:
                raise _BadRequest('the body must be {"value": ...} and nothing else')
            if not isinstance(doc["value"], str):
                raise _BadRequest("value must be a string")
            value = self._decode(doc["value"], enc, "value")
        v = await self._call(request, {"op": "put", "key": key, "value": value})
        return web.json_response(
            {"revision": v["revision"], "prev": self._kv_json(v["prev"], enc)}, dumps=_dumps
        )

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/kv/{key}``."""
        return await self._serve(request, self._delete)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        enc = self._encoding(request)
        key = self._key(request, enc)
        v = await self._call(request, {"op": "delete", "key": key})
        return web.json_response(
            {
                "deleted": bool(v["deleted"]),
                "revision": v["revision"],
                "prev": self._kv_json(v["prev"], enc),
            },
            dumps=_dumps,
        )

    async def list_prefix(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/kv?prefix=P``."""
        return await self._serve(request, self._list)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        enc = self._encoding(request)
        q = request.query
        unknown = set(q) - {"prefix", "start", "limit", "keys_only", "read", "encoding"}
        if unknown:
            raise _BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        if "prefix" not in q:
            raise _BadRequest("give ?prefix= (empty for every key)")
        prefix = self._decode(q["prefix"], enc, "prefix")
        try:
            limit = int(q.get("limit", DEFAULT_SCAN_LIMIT))
        except ValueError:
            raise _BadRequest("limit must be an integer") from None
        if not 1 <= limit <= self.service.limits.max_scan_limit:
            raise _BadRequest(f"limit must be in 1..{self.service.limits.max_scan_limit}")
        keys_only = q.get("keys_only", "false").lower()
        if keys_only not in ("true", "false", "1", "0"):
            raise _BadRequest("keys_only must be true or false")
        req: dict[str, Any] = {
            "op": "scan",
            "limit": limit,
            "reverse": False,
            "keys_only": keys_only in ("true", "1"),
            "read": self._read_mode(request),
        }
        start = self._decode(q.get("start", ""), enc, "start")
        req.update(start=max(start, prefix), end=prefix_end(prefix) if prefix else None)
        v = await self._call(request, req)
        out: dict[str, Any] = {
            "kvs": [self._kv_json(w, enc) for w in v["kvs"]],
            "more": bool(v["more"]),
            "revision": v["revision"],
        }
        if out["more"] and v["kvs"]:
            # The next page starts just after the last key.
            out["next"] = self._encode(bytes(v["kvs"][-1][0]) + b"\0", enc)
        return web.json_response(out, dumps=_dumps)

    async def _body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise _HttpError(
                _error(413, "too_large", f"a body of {length} bytes exceeds {self.max_body_bytes}")
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _HttpError(
                    _error(413, "too_large", f"the body exceeds {self.max_body_bytes} bytes")
                )
            chunks.append(chunk)
        return b"".join(chunks)


class _HttpError(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def add_kv_routes(
    ops: OpsServer,
    service: KvService,
    *,
    http_peers: Mapping[str, str] | None = None,
    scheme: str = "http",
) -> KvGateway:
    """Mount the gateway for ``service`` on ``ops`` (before ``ops.start``).

    ``http_peers`` maps each replica's raft address to its ops endpoint's
    ``host:port``: a replica that does not lead then redirects writes (and
    linearizable reads) to the leader's gateway with ``scheme``. Returns the
    `KvGateway` (its ``stats``)."""
    gateway = KvGateway(service, http_peers, scheme)
    ops.add_routes(gateway.routes())
    return gateway


__all__ = ["DEFAULT_SCAN_LIMIT", "ENCODINGS", "PREFIX", "KvGateway", "add_kv_routes"]
