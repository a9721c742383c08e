"""`AdminClient`: a raft group's membership, leader and snapshots, from outside.

The client of `pyjraft.node.admin` (the ``pyjraft.admin`` service every
node serves), as SOFAJRaft's CliService::

    async with AdminClient("10.0.0.1:8100,10.0.0.2:8100,10.0.0.3:8100", group="kv") as admin:
        print(await admin.get_leader())
        await admin.add_peer("10.0.0.4:8100")        # started with --join
        await admin.transfer_leader("10.0.0.2:8100")  # None: the most up-to-date voter

Changes and transfers go to the leader: the client follows ``not_leader``
hints (only to the group's peers: those given, and the members a leader
reported), retrying what certainly did not happen (not leader,
unavailable, connection refused) for up to ``find_leader_timeout`` seconds,
then `NoLeaderError`. A change waits for the joining peers to catch up, so
one attempt may take up to ``change_timeout`` seconds. When the request left
and no answer came (timeout, broken connection), or leadership changed
mid-change, the outcome is unknown: `pyjraft.client.UnknownOutcomeError`
(look at `list_peers`; changes are not retried on their own).
``reset_peers`` and ``snapshot`` go to the member named (they are
per-member). Under TLS, changes need a node or admin certificate
(``pyjraft certs --admins``); a plain client certificate gets
`NotAuthorizedError`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyjraft.client.client import never_sent
from pyjraft.client.errors import ClientError, UnknownOutcomeError
from pyjraft.client.route import RouteTable
from pyjraft.node import admin as codes
from pyjraft.node.admin import ADMIN_SERVICE
from pyjraft.transport.errors import RemoteError, RpcTimeoutError, TransportError
from pyjraft.transport.rpc import RpcClient
from pyjraft.transport.tls import TlsConfig


class AdminError(ClientError):
    """The admin service refused or failed an operation (``code``, ``message``).
    ``exit_status`` is what ``pyjraft admin`` exits with for it."""

    exit_status = 1

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}" if message else code)


class UnknownGroupError(AdminError):
    """No member asked hosts the group."""


class BadConfigurationError(AdminError):
    """The change, transfer or request makes no sense (no voters, a target that
    is not a voter, a malformed peer address); nothing changed."""


class ChangeAbortedError(AdminError):
    """The change was abandoned (leadership changed before it began; or, as
    `CatchUpTimeoutError`, a joining peer did not catch up); nothing changed."""


class CatchUpTimeoutError(ChangeAbortedError):
    """A joining peer did not catch up within the leader's ``catchup_timeout_ms``
    (is it running, started with ``--join``, reachable from the leader?);
    nothing changed."""


class TransferFailedError(AdminError):
    """The leadership transfer did not happen in time; the leader stays."""


class SnapshotsUnavailableError(AdminError):
    """The member takes no snapshots (no data directory, or its state machine
    does not implement them)."""


class UnavailableError(AdminError):
    """The member asked could not be reached or is not running."""

    exit_status = 3


class NoLeaderError(UnavailableError):
    """No leader of the group could be reached in time."""


class BusyError(AdminError):
    """Another configuration change is in progress (one at a time); retry later."""

    exit_status = 4


class NotAuthorizedError(AdminError):
    """The caller's certificate may not make changes (a plain client's: use a
    node or admin certificate)."""

    exit_status = 5


UNKNOWN_OUTCOME_EXIT_STATUS = 6
"""``pyjraft admin``'s exit status for `UnknownOutcomeError`."""

_ERRORS: dict[str, type[AdminError]] = {
    codes.UNKNOWN_GROUP: UnknownGroupError,
    codes.INVALID_REQUEST: BadConfigurationError,
    codes.BAD_CONFIGURATION: BadConfigurationError,
    codes.CHANGE_ABORTED: ChangeAbortedError,
    codes.CATCHUP_TIMEOUT: CatchUpTimeoutError,
    codes.TRANSFER_FAILED: TransferFailedError,
    codes.SNAPSHOTS_UNAVAILABLE: SnapshotsUnavailableError,
    codes.UNAVAILABLE: UnavailableError,
    codes.BUSY: BusyError,
    codes.UNAUTHORIZED: NotAuthorizedError,
}


def error_for(code: str, message: str) -> AdminError:
    """The typed error of a reply's ``code``."""
    return _ERRORS.get(code, AdminError)(code, message)


@dataclass(frozen=True)
class GroupConfiguration:
    """A group's configuration as a member (usually its leader) reported it."""

    voters: list[str]
    learners: list[str]
    voters_outgoing: list[str]
    """Non-empty during a joint change: the voters being replaced."""
    priorities: dict[str, int]
    """Voters whose election priority is not 1 (0: leads only when no other voter can)."""
    leader: str
    term: int
    reported_by: str
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    """From the leader: each other member's ``match``, ``lag``, ``active``."""

    @classmethod
    def from_reply(cls, r: Any) -> GroupConfiguration:
        """Parse a service reply; `AdminError` if it is not one."""
        try:
            return cls(
                voters=[str(v) for v in r["voters"]],
                learners=[str(v) for v in r["learners"]],
                voters_outgoing=[str(v) for v in r["voters_outgoing"]],
                priorities={str(p): int(n) for p, n in r["priorities"]},
                leader=str(r["leader"]),
                term=int(r["term"]),
                reported_by=str(r["node"]),
                progress=dict(r.get("progress") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise AdminError("bad_reply", f"not a configuration: {r!r:.200}") from e

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return {
            "voters": self.voters,
            "learners": self.learners,
            "voters_outgoing": self.voters_outgoing,
            "priorities": self.priorities,
            "leader": self.leader,
            "term": self.term,
            "reported_by": self.reported_by,
            "progress": self.progress,
        }


class AdminClient:
    """Admin operations on one raft group (see the module docstring).

    ``peers``: member addresses (a sequence or a comma-separated string).
    ``tls``: a certificate (node or admin to make changes); or pass ``rpc``.
    ``timeout``: seconds per attempt of a read; ``change_timeout``: per
    attempt of a change, transfer or snapshot; ``find_leader_timeout``: how
    long to keep looking for a leader that accepts.
    """

    def __init__(
        self,
        peers: Sequence[str] | str,
        *,
        group: str,
        tls: TlsConfig | None = None,
        rpc: RpcClient | None = None,
        timeout: float = 2.0,
        change_timeout: float = 120.0,
        find_leader_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if rpc is not None and tls is not None:
            raise ValueError("give tls to the RpcClient you pass, not to AdminClient")
        if min(timeout, change_timeout, find_leader_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        self.group = group
        self.seeds = [p.strip() for p in (peers.split(",") if isinstance(peers, str) else peers)]
        self.seeds = [p for p in self.seeds if p]
        if not self.seeds:
            raise ValueError("give at least one peer")
        self.routes = RouteTable()
        self.routes.update_configuration(group, self.seeds)
        self.timeout = timeout
        self.change_timeout = change_timeout
        self.find_leader_timeout = find_leader_timeout
        self._own_rpc = rpc is None
        self._rpc = rpc if rpc is not None else RpcClient(tls=tls)
        self._rng = rng if rng is not None else random.Random()

    # -- reads -----------------------------------------------------------------

    async def get_leader(self) -> tuple[str, int]:
        """``(leader, term)``: asks every peer at once and takes the leader named
        in the highest term (by the leader itself, when it answered). `NoLeaderError`
        when none knows one."""
        peers = self.routes.peers_of(self.group)
        answers = await asyncio.gather(
            *(self._call_member(p, {"op": "leader"}) for p in peers), return_exceptions=True
        )
        # (term, says it leads, leader) of each well-formed answer.
        views = [
            (a["term"], a.get("role") == "leader", a["leader"])
            for a in answers
            if isinstance(a, dict) and type(a.get("term")) is int and type(a.get("leader")) is str
        ]
        if not views:
            errors = [a for a in answers if isinstance(a, BaseException)]
            if errors and all(isinstance(e, UnknownGroupError) for e in errors):
                raise errors[0]
            raise NoLeaderError(
                codes.UNAVAILABLE, f"no member of {self.group!r} answered: {errors[:1]}"
            )
        # The newest term's view; one that leads in it over hearsay.
        term, _, leader = max(v for v in views if v[2]) if any(v[2] for v in views) else views[0]
        if not leader:
            raise NoLeaderError(codes.NOT_LEADER, f"no member of {self.group!r} knows a leader")
        return leader, term

    async def list_peers(self, *, member: str | None = None) -> GroupConfiguration:
        """The configuration, from the leader (or from ``member``'s own view,
        leader or not: for a group that has none)."""
        if member is not None:
            reply = await self._call_member(member, {"op": "peers", "local": True})
        else:
            reply = await self._call_leader({"op": "peers"}, change=False)
        return self._configuration(reply)

    async def list_learners(self) -> list[str]:
        """The learners (from the leader)."""
        return (await self.list_peers()).learners

    async def list_alive_peers(self) -> list[str]:
        """The voters the leader heard from within an election timeout (itself included)."""
        reply = await self._call_leader({"op": "alive_peers"}, change=False)
        alive = reply.get("alive") if isinstance(reply, dict) else None
        if type(alive) is not list:
            raise AdminError("bad_reply", f"not a list of peers: {reply!r:.200}")
        return [str(p) for p in alive]

    # -- changes (on the leader) -----------------------------------------------

    async def add_peer(self, peer: str) -> GroupConfiguration:
        """Add voter ``peer`` (start it with ``--join`` / ``NodeOptions(join=True)``)."""
        return self._configuration(await self._change({"op": "add_peer", "peer": peer}))

    async def remove_peer(self, peer: str) -> GroupConfiguration:
        """Remove voter ``peer`` (the leader too: it steps down once done)."""
        return self._configuration(await self._change({"op": "remove_peer", "peer": peer}))

    async def change_peers(
        self,
        voters: Sequence[str],
        learners: Sequence[str] | None = None,
        priorities: dict[str, int] | None = None,
    ) -> GroupConfiguration:
        """Make ``voters`` the voters (and ``learners`` the learners; None keeps
        those that are not becoming voters; ``priorities``: None keeps them)."""
        request: dict[str, Any] = {"op": "change_peers", "voters": list(voters)}
        if learners is not None:
            request["learners"] = list(learners)
        if priorities is not None:
            request["priorities"] = [[p, n] for p, n in priorities.items()]
        return self._configuration(await self._change(request))

    async def add_learners(self, peers: Sequence[str]) -> GroupConfiguration:
        """Add non-voting members (started with ``--join``)."""
        return self._configuration(await self._change({"op": "add_learners", "peers": list(peers)}))

    async def remove_learners(self, peers: Sequence[str]) -> GroupConfiguration:
        """Remove learners."""
        request = {"op": "remove_learners", "peers": list(peers)}
        return self._configuration(await self._change(request))

    async def transfer_leader(self, peer: str | None = None) -> str:
        """Move leadership to voter ``peer`` (None: the most up-to-date one);
        returns the new leader."""
        reply = await self._change({"op": "transfer_leader", "peer": peer})
        leader = reply.get("leader") if isinstance(reply, dict) else None
        if type(leader) is not str:
            raise AdminError("bad_reply", f"no leader in {reply!r:.200}")
        self.routes.update_leader(self.group, leader)
        return leader

    # -- per member ------------------------------------------------------------

    async def snapshot(self, member: str) -> tuple[int, int]:
        """Have ``member`` take a snapshot now; returns its ``(index, term)``."""
        reply = await self._call_member(member, {"op": "snapshot"}, self.change_timeout)
        try:
            return int(reply["index"]), int(reply["term"])
        except (KeyError, TypeError, ValueError) as e:
            raise AdminError("bad_reply", f"not a snapshot: {reply!r:.200}") from e

    async def reset_peers(self, member: str, voters: Sequence[str]) -> GroupConfiguration:
        """UNSAFE (a majority lost for good): make ``voters`` ``member``'s
        configuration without consensus. Call it on every survivor with the
        same set; see `Node.reset_peers`."""
        reply = await self._call_member(member, {"op": "reset_peers", "voters": list(voters)})
        return self._configuration(reply)

    # -- plumbing --------------------------------------------------------------

    def _configuration(self, reply: Any) -> GroupConfiguration:
        conf = GroupConfiguration.from_reply(reply)
        # A member reported them: hints naming them may be followed.
        members = [*self.seeds, *conf.voters, *conf.learners, *conf.voters_outgoing]
        self.routes.update_configuration(self.group, members)
        return conf

    def _learn_members(self, members: Any) -> None:
        """A member listed its configuration's members: hints may name them."""
        if type(members) is list and len(members) <= codes.MAX_PEERS:
            named = [m for m in members if type(m) is str and 0 < len(m) <= 300]
            known = self.routes.peers_of(self.group)
            if any(m not in known for m in named):
                self.routes.update_configuration(self.group, [*known, *named])

    async def _change(self, request: dict[str, Any]) -> Any:
        return await self._call_leader(request, change=True)

    async def _call_member(
        self, addr: str, request: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """One attempt at ``addr``; the ``ok`` value, or the typed error."""
        request = {**request, "group": self.group}
        try:
            reply = await self._rpc.call(
                addr, ADMIN_SERVICE, request, timeout=timeout or self.timeout
            )
        except RemoteError as e:
            raise AdminError("remote_error", f"{addr}: {e.text}") from e
        except TransportError as e:
            if not never_sent(e) and request["op"] not in codes.READ_OPS:
                raise UnknownOutcomeError(addr, str(e)) from e
            raise UnavailableError(codes.UNAVAILABLE, f"{addr}: {e}") from e
        if not isinstance(reply, dict):
            raise AdminError("bad_reply", f"{addr} replied {reply!r:.200}")
        if "ok" in reply:
            return reply["ok"]
        return self._raise(addr, reply)

    def _raise(self, addr: str, reply: dict[str, Any]) -> Any:
        code = str(reply.get("error"))
        message = f"{addr}: {reply.get('message', '')}"
        if code == codes.UNKNOWN_OUTCOME:
            raise UnknownOutcomeError(addr, message)
        if code == codes.NOT_LEADER:
            raise NoLeaderError(code, f"{message} (leader: {reply.get('leader') or 'unknown'})")
        raise error_for(code, message)

    async def _call_leader(self, request: dict[str, Any], *, change: bool) -> Any:
        """Call the leader: follow hints, retry what certainly did not happen."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.find_leader_timeout
        group, routes = self.group, self.routes
        request = {**request, "group": group}
        timeout = self.change_timeout if change else self.timeout
        failures = hops = 0
        no_group: set[str] = set()
        last: BaseException | None = None
        while True:
            if loop.time() >= end:
                raise NoLeaderError(
                    codes.UNAVAILABLE,
                    f"no leader of group {group!r} reachable within "
                    f"{self.find_leader_timeout} s (last error: {last})",
                )
            addr = routes.next_target(group)
            try:
                reply = await self._rpc.call(addr, ADMIN_SERVICE, request, timeout=timeout)
            except RemoteError as e:
                raise AdminError("remote_error", f"{addr}: {e.text}") from e
            except TransportError as e:
                routes.forget_leader(group, addr)
                sent = isinstance(e, RpcTimeoutError) or not never_sent(e)
                if sent and change:
                    raise UnknownOutcomeError(addr, str(e)) from e
                last = e
            else:
                if not isinstance(reply, dict):
                    raise AdminError("bad_reply", f"{addr} replied {reply!r:.200}")
                if "ok" in reply:
                    routes.update_leader(group, addr)
                    return reply["ok"]
                code = reply.get("error")
                last = error_for(str(code), f"{addr}: {reply.get('message', '')}")
                if code == codes.NOT_LEADER:
                    hint = reply.get("leader")
                    hint = hint if isinstance(hint, str) else ""
                    self._learn_members(reply.get("members"))
                    followed = hint not in ("", addr)
                    if (
                        followed
                        and routes.update_leader(group, hint)
                        and hops <= 2 * len(self.seeds)
                    ):
                        hops += 1
                        continue
                    routes.forget_leader(group, addr)
                elif code == codes.UNAVAILABLE:
                    routes.forget_leader(group, addr)
                elif code == codes.UNKNOWN_GROUP:
                    routes.forget_leader(group, addr)
                    no_group.add(addr)
                    if no_group >= set(routes.peers_of(group)):
                        raise last
                else:
                    self._raise(addr, reply)
            failures += 1
            hops = 0
            cap = min(1.0, 0.02 * 2.0 ** min(failures - 1, 30))
            delay = cap / 2 + self._rng.uniform(0, cap / 2)
            await asyncio.sleep(max(0.0, min(delay, end - loop.time())))

    async def close(self) -> None:
        """Close the `RpcClient` if this client made it."""
        if self._own_rpc:
            await self._rpc.close()

    async def __aenter__(self) -> AdminClient:
        """Use as ``async with AdminClient(...) as admin:``."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        await self.close()


__all__ = [
    "UNKNOWN_OUTCOME_EXIT_STATUS",
    "AdminClient",
    "AdminError",
    "BadConfigurationError",
    "BusyError",
    "CatchUpTimeoutError",
    "ChangeAbortedError",
    "GroupConfiguration",
    "NoLeaderError",
    "NotAuthorizedError",
    "SnapshotsUnavailableError",
    "TransferFailedError",
    "UnavailableError",
    "UnknownGroupError",
    "error_for",
]
