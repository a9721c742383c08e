"""``pyjraft status``: a table of a cluster, from each member's status.

Each member is asked once per round, all at once: over the RPC status service
(the counter's ``status``, answering `Node.status`; a list of them is
accepted too) or, with ``http=True``, its ops endpoint's ``/status.json``. A
member that does not answer gets a row saying why. The lag of a member is
what the group's leader reports for it (its last index minus the member's
match index); where no leader answered, it is left blank.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from pyjraft.transport import RpcClient
from pyjraft.transport.tls import TlsConfig

COLUMNS = (
    ("member", "member"),
    ("group", "group"),
    ("role", "role"),
    ("term", "term"),
    ("leader", "leader"),
    ("first_index", "first"),
    ("last_index", "last"),
    ("commit_index", "commit"),
    ("applied_index", "applied"),
    ("lag", "lag"),
    ("state", "state"),
)
"""(row key, column title) of the table, in order."""


async def _rpc_statuses(
    rpc: RpcClient, addr: str, service: str, timeout: float
) -> list[dict[str, Any]]:
    reply = await rpc.call(addr, service, None, timeout=timeout)
    items = reply if isinstance(reply, list) else [reply]
    if not all(isinstance(x, dict) for x in items):
        raise ValueError(f"unexpected reply from {service!r}: {str(reply)[:80]}")
    return items


async def _http_statuses(
    session: Any, addr: str, timeout: float, https: bool
) -> list[dict[str, Any]]:
    import aiohttp

    url = addr if "://" in addr else f"{'https' if https else 'http'}://{addr}"
    async with session.get(
        f"{url.rstrip('/')}/status.json", timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        body = await resp.json()
    return [g["status"] for g in body.get("groups", [])]


async def collect(
    peers: Sequence[str],
    *,
    group: str | None = None,
    http: bool = False,
    service: str = "status",
    timeout: float = 2.0,
    rpc: RpcClient | None = None,
    tls: TlsConfig | None = None,
) -> list[dict[str, Any]]:
    """One row per (member, group) of ``peers`` (filtered to ``group``), with lag.

    ``tls``: call the members with this certificate (mutual TLS), and with
    ``http`` over HTTPS."""
    rows: list[dict[str, Any]] = []
    session: Any = None
    own_rpc = rpc is None and not http
    if http:
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=tls.client_context) if tls is not None else None
        session = aiohttp.ClientSession(connector=connector)
    client = rpc if rpc is not None else (None if http else RpcClient(tls=tls))
    try:

        async def one(addr: str) -> list[dict[str, Any]]:
            try:
                if http:
                    sts = await _http_statuses(session, addr, timeout, tls is not None)
                else:
                    assert client is not None
                    sts = await _rpc_statuses(client, addr, service, timeout)
            except Exception as e:
                return [{"member": addr, "group": group or "", "error": _why(e)}]
            out = []
            for st in sts:
                if group is not None and st.get("group") != group:
                    continue
                out.append({"member": addr, **st})
            if not out:
                return [{"member": addr, "group": group or "", "error": "no such group"}]
            return out

        for part in await asyncio.gather(*(one(a) for a in peers)):
            rows.extend(part)
    finally:
        if session is not None:
            await session.close()
        if own_rpc and client is not None:
            await client.close()
    add_lag(rows)
    return rows


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


def add_lag(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``lag`` from its group's leader row (None where unknown)."""
    leaders = {r.get("group"): r for r in rows if r.get("role") == "leader" and "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        leader = leaders.get(r.get("group"))
        if leader is None:
            r["lag"] = None
        elif leader is r:
            r["lag"] = 0
        else:
            pr = (leader.get("peers") or {}).get(r.get("id") or r["member"])
            if pr is not None and "lag" in pr:
                r["lag"] = pr["lag"]
            else:
                r["lag"] = max(0, int(leader.get("last_index", 0)) - int(r.get("last_index", 0)))


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table; members that did not answer say why."""
    table = [[title for _, title in COLUMNS]]
    errors = []
    for r in rows:
        if "error" in r:
            errors.append(f"{r['member']}: {r['error']}")
            table.append([str(r["member"]), str(r.get("group") or "")] + ["-"] * (len(COLUMNS) - 2))
            continue
        table.append(["" if r.get(k) is None else str(r.get(k)) for k, _ in COLUMNS])
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return "\n".join(lines + [f"! {e}" for e in errors])


def render_json(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as one JSON line."""
    return json.dumps(list(rows), default=str, sort_keys=True)
