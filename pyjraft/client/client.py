"""`RaftClient`: call a raft group's service on its leader, following and retrying.

Retry rules (the point of this module)
--------------------------------------
An attempt's failure is retried only when it proves the operation was NOT
applied:

* a ``not_leader`` reply (the hint, when given, is followed at once),
* an ``overloaded`` or ``unavailable`` reply,
* a connection that could not be made (refused, unreachable, bad address).

Everything else that can happen after the request left us -- the reply timed
out, the connection broke before the reply, the leader answered
``unknown_outcome`` (it lost leadership after proposing) -- means the
operation may have been applied, or may still be. Retrying a non-idempotent
operation such as an increment could then apply it twice, so `RaftClient.call`
raises `UnknownOutcomeError` instead. Pass ``idempotent=True`` (reads,
compare-and-set with a unique token, ...) to have those retried too.

A ``not_leader`` reply's hint is followed only when it names one of the
group's peers (`RouteTable`): a hint naming any other address is counted
(``stats["refused_hints"]``), logged, and treated as no hint at all, so a
fooled or forged member cannot send the client to a stranger.

Backoff between attempts is exponential with jitter drawn from an injectable
`random.Random`, bounded by the call's deadline; when the deadline passes,
`DeadlineExceededError` carries the last error.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

from pyjraft.client.errors import DeadlineExceededError, ServiceError, UnknownOutcomeError
from pyjraft.client.reply import NOT_LEADER, OVERLOADED, UNAVAILABLE, UNKNOWN_OUTCOME
from pyjraft.client.route import RouteTable
from pyjraft.transport.errors import RemoteError, RpcTimeoutError, TransportError
from pyjraft.transport.limits import LogLimiter
from pyjraft.transport.tcp import RpcClient
from pyjraft.transport.tls import TlsConfig

log = logging.getLogger("pyjraft.client")


class RaftClient:
    """Calls services of one raft group, on its leader.

    ``peers`` are the group's member addresses (``"host:port"``, a sequence or
    a comma-separated string): the only addresses it will ever call. ``rpc``
    is the `RpcClient` to use (one is made, with ``tls`` when given, and
    closed by `close`, when None). ``tls`` (a client certificate, see
    `pyjraft.transport.tls`) authenticates the client and checks that each
    server is the node it dials. ``timeout`` bounds each attempt;
    ``deadline`` is the default total budget of a `call`, retries included.
    ``routes`` lets several clients share one `RouteTable`; ``rng`` draws the
    backoff jitter.
    """

    def __init__(
        self,
        group: str,
        peers: Sequence[str] | str,
        *,
        rpc: RpcClient | None = None,
        tls: TlsConfig | None = None,
        timeout: float = 2.0,
        deadline: float = 10.0,
        routes: RouteTable | None = None,
        rng: random.Random | None = None,
        backoff_min: float = 0.02,
        backoff_max: float = 1.0,
    ) -> None:
        if timeout <= 0 or deadline <= 0:
            raise ValueError("timeout and deadline must be positive")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        self.group = group
        self.timeout = timeout
        self.deadline = deadline
        self.routes = routes if routes is not None else RouteTable()
        plist = peers.split(",") if isinstance(peers, str) else list(peers)
        self.routes.update_configuration(group, plist)
        self._own_rpc = rpc is None
        if rpc is not None and tls is not None:
            raise ValueError("give tls to the RpcClient you pass, not to RaftClient")
        self._rpc = rpc if rpc is not None else RpcClient(tls=tls)
        self._limiter = LogLimiter(log)
        self._rng = rng if rng is not None else random.Random()
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self.stats: dict[str, int] = {
            "calls": 0,
            "attempts": 0,
            "redirects": 0,
            "retries": 0,
            "unknown_outcomes": 0,
            "refused_hints": 0,
        }
        """Counters: calls, attempts, not-leader redirects, retries, unknown
        outcomes, leader hints refused for naming a non-peer."""

    @property
    def leader(self) -> str:
        """The cached leader of the group, or ``""``."""
        return self.routes.leader_of(self.group)

    async def call(
        self,
        service: str,
        request: Any,
        *,
        deadline: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Call ``service`` with ``request`` on the group's leader; return the
        ``ok`` value of its reply.

        ``deadline``: seconds from now for the whole call, retries included
        (default: the client's). Raises `UnknownOutcomeError` when the
        operation may have been applied (never retried unless
        ``idempotent``), `DeadlineExceededError` when no attempt succeeded in
        time (none of them applied it), `ServiceError` for an application
        error reply or a failing handler.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + (self.deadline if deadline is None else deadline)
        self.stats["calls"] += 1
        group = self.group
        routes = self.routes
        failures = 0
        hops = 0
        last_error: BaseException | None = None
        while True:
            remaining = end - loop.time()
            if remaining <= 0:
                raise DeadlineExceededError(
                    f"{service!r} on group {group!r}: no leader accepted the call before the "
                    f"deadline (last error: {last_error})",
                    last_error,
                )
            addr = routes.next_target(group)
            self.stats["attempts"] += 1
            try:
                reply = await self._rpc.call(
                    addr, service, request, timeout=min(self.timeout, remaining)
                )
            except RpcTimeoutError as e:
                routes.forget_leader(group, addr)
                if not idempotent:
                    raise self._unknown(addr, f"no reply in time ({e})") from e
                last_error = e
            except RemoteError as e:
                raise ServiceError("remote_error", e.text) from e
            except TransportError as e:
                routes.forget_leader(group, addr)
                if not (idempotent or never_sent(e)):
                    raise self._unknown(addr, str(e)) from e
                last_error = e
            else:
                if not isinstance(reply, dict):
                    raise ServiceError("bad_reply", f"{addr} replied {reply!r:.200}")
                if "ok" in reply:
                    routes.update_leader(group, addr)
                    return reply["ok"]
                code = reply.get("error")
                message = str(reply.get("message", ""))
                if code == NOT_LEADER:
                    hint = reply.get("leader")
                    last_error = ServiceError(NOT_LEADER, f"{addr}: {message}")
                    if isinstance(hint, str) and hint and hint != addr:
                        if routes.update_leader(group, hint):
                            self.stats["redirects"] += 1
                            hops += 1
                            if hops <= 2 * len(routes.peers_of(group)):
                                continue  # follow the hint at once
                        else:
                            self.stats["refused_hints"] += 1
                            self._limiter.log(
                                logging.WARNING,
                                f"hint:{group}",
                                "ignoring %s's leader hint %r for group %r: not one of its "
                                "peers %s",
                                addr,
                                hint[:100],
                                group,
                                routes.peers_of(group),
                            )
                            routes.forget_leader(group, addr)
                    else:
                        routes.forget_leader(group, addr)
                elif code == OVERLOADED:
                    last_error = ServiceError(OVERLOADED, f"{addr}: {message}")
                elif code == UNAVAILABLE:
                    routes.forget_leader(group, addr)
                    last_error = ServiceError(UNAVAILABLE, f"{addr}: {message}")
                elif code == UNKNOWN_OUTCOME:
                    routes.forget_leader(group, addr)
                    if not idempotent:
                        raise self._unknown(addr, message)
                    last_error = ServiceError(UNKNOWN_OUTCOME, f"{addr}: {message}")
                else:
                    raise ServiceError(str(code), message)
            failures += 1
            hops = 0
            self.stats["retries"] += 1
            delay = self._backoff(failures)
            log.debug("retrying %r in %.3f s after %s", service, delay, last_error)
            await asyncio.sleep(max(0.0, min(delay, end - loop.time())))

    def _unknown(self, addr: str, reason: str) -> UnknownOutcomeError:
        self.stats["unknown_outcomes"] += 1
        return UnknownOutcomeError(addr, reason)

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        cap = min(self._backoff_max, self._backoff_min * (2.0 ** min(failures - 1, 30)))
        return cap / 2 + self._rng.uniform(0, cap / 2)

    async def close(self) -> None:
        """Close the `RpcClient` if this client made it."""
        if self._own_rpc:
            await self._rpc.close()

    async def __aenter__(self) -> RaftClient:
        """Use as ``async with RaftClient(...) as client:``."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        await self.close()


def never_sent(exc: TransportError) -> bool:
    """Whether ``exc`` (from `RpcClient.call`) proves the request never left:
    the connection could not be made (refused, unreachable, bad address)."""
    if isinstance(exc, RpcTimeoutError):
        return False
    if isinstance(exc.__cause__, ConnectionRefusedError):
        return True
    # RpcClient's connect failures say so; later failures say "connection ... lost/closed".
    return str(exc).startswith(("cannot connect to", "not a host:port", "port out of range"))


__all__ = ["RaftClient", "never_sent"]
