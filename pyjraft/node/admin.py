"""`AdminService`: a group's membership, leader and snapshots, over RPC (SOFAJRaft's CliService).

Theory of operation
-------------------
One service (``ADMIN_SERVICE``) per transport answers for every group the
process hosts: each `Node` hosts itself when it is made (see
`pyjraft.node.membership.MembershipManager`), held by a weak reference so
a stopped node answers ``unavailable`` and a forgotten one ``unknown_group``.
Requests are msgpack maps ``{"op": OP, "group": G, ...}`` checked field by
field (exactly the fields of ``OP``, each of its type and size; peers must
be ``host:port``): whatever a caller sends gets a reply, never an exception.

Who may do what: read-only operations (``leader``, ``peers``,
``alive_peers``) are open to every caller the transport let in; mutations
(changes, transfers, snapshots, resets) need `may_administer`: a node or
admin certificate under TLS, anyone in plaintext (a plaintext server
trusts whoever reaches its port: it listens on loopback unless told
``insecure_plaintext``). The transport tells the service who calls
(``register_caller_service``).

Where an operation runs: ``leader`` on any member (its own view);
``peers`` and ``alive_peers`` on the leader (``"local": true`` asks the
member itself, for a group without a leader); changes and transfers on the
leader -- a follower answers ``not_leader`` with the leader it knows, which
`pyjraft.client.RaftClient` follows; ``snapshot`` and ``reset_peers`` on the
member asked (they are per-member by nature). Long operations (a change
waits for its joining peers to catch up) answer when done; the node's
future is shielded from the caller going away.

Replies follow `pyjraft.client.reply`: ``{"ok": value}`` or ``{"error":
code, "message": text}`` with the codes below; ``not_leader`` carries
``leader``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar

from pyjraft.core.errors import ConfChangeBusyError, ConfigError, NotLeaderError
from pyjraft.core.types import ConfState
from pyjraft.node.errors import LeadershipLostError, ShutdownError
from pyjraft.node.membership import ConfChangeError, TransferError
from pyjraft.node.snapshots import SnapshotsUnavailableError
from pyjraft.transport.base import Transport, parse_address
from pyjraft.transport.tls import Identity, may_administer

if TYPE_CHECKING:
    from pyjraft.node.node import Node

log = logging.getLogger("pyjraft.node.admin")

ADMIN_SERVICE = "pyjraft.admin"
"""The RPC service name."""
MAX_REQUEST_BYTES = 64 * 1024
"""The service's bound on a request (a few hundred peer addresses)."""
MAX_PEERS = 256
"""The most peers one request may name."""
MAX_PRIORITY = 1_000_000
_MAX_NAME = 1024
_MAX_ADDR = 300

# Error codes (those of `pyjraft.client.reply` where they mean the same).
INVALID_REQUEST = "invalid_request"
"""A malformed request (wrong fields, types, sizes, addresses)."""
UNKNOWN_GROUP = "unknown_group"
"""This process hosts no member of the group."""
NOT_LEADER = "not_leader"
"""This member does not lead; ``leader`` names the one it knows (or ``""``),
``members`` the members of the configuration it has."""
UNAVAILABLE = "unavailable"
"""The member is not running (stopping, stopped, failed)."""
UNAUTHORIZED = "unauthorized"
"""The caller's certificate may not make this change (a plain client's)."""
BUSY = "busy"
"""A configuration change is already in progress (one at a time)."""
BAD_CONFIGURATION = "bad_configuration"
"""The change or transfer makes no sense (no voters, not a voter...)."""
CHANGE_ABORTED = "change_aborted"
"""The change was abandoned (the leader changed before it began); nothing changed."""
CATCHUP_TIMEOUT = "catchup_timeout"
"""The change was abandoned: a joining peer did not catch up within the
leader's ``catchup_timeout_ms``; nothing changed."""
TRANSFER_FAILED = "transfer_failed"
"""The leadership transfer did not happen in time."""
UNKNOWN_OUTCOME = "unknown_outcome"
"""Leadership changed mid-change: the next leader may finish it; look at ``peers``."""
SNAPSHOTS_UNAVAILABLE = "snapshots_unavailable"
"""The member takes no snapshots (no data directory, or its state machine cannot)."""

READ_OPS = frozenset({"leader", "peers", "alive_peers"})
"""Operations any authenticated caller may use."""
# op -> (required fields, optional fields); "op" and "group" are always required.
_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "leader": (frozenset(), frozenset()),
    "peers": (frozenset(), frozenset({"local"})),
    "alive_peers": (frozenset(), frozenset()),
    "add_peer": (frozenset({"peer"}), frozenset()),
    "remove_peer": (frozenset({"peer"}), frozenset()),
    "change_peers": (frozenset({"voters"}), frozenset({"learners", "priorities"})),
    "add_learners": (frozenset({"peers"}), frozenset()),
    "remove_learners": (frozenset({"peers"}), frozenset()),
    "transfer_leader": (frozenset(), frozenset({"peer"})),
    "snapshot": (frozenset(), frozenset()),
    "reset_peers": (frozenset({"voters"}), frozenset()),
}
OPS = frozenset(_FIELDS)
"""Every operation."""


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def _peer(value: Any, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= _MAX_ADDR:
        raise ValueError(f"{what} must be a host:port string of at most {_MAX_ADDR} characters")
    parse_address(value)  # ValueError names it
    return value


def _peers(value: Any, what: str, *, empty: bool) -> tuple[str, ...]:
    if type(value) is not list or len(value) > MAX_PEERS or (not value and not empty):
        raise ValueError(
            f"{what} must be a list of {0 if empty else 1} to {MAX_PEERS} host:port strings"
        )
    peers = tuple(_peer(v, what) for v in value)
    if len(set(peers)) != len(peers):
        raise ValueError(f"{what} names a peer twice")
    return peers


def _priorities(value: Any) -> tuple[tuple[str, int], ...]:
    if type(value) is not list or len(value) > MAX_PEERS:
        raise ValueError(f"priorities must be a list of at most {MAX_PEERS} [peer, n] pairs")
    out = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise ValueError("each priority is a [peer, n] pair")
        n = item[1]
        if type(n) is not int or not 0 <= n <= MAX_PRIORITY:
            raise ValueError(f"a priority is an integer from 0 to {MAX_PRIORITY}")
        out.append((_peer(item[0], "a priority's peer"), n))
    return tuple(out)


def parse_request(request: Any) -> tuple[str, str, dict[str, Any]]:
    """``(op, group, arguments)`` of a request; `ValueError` saying what is wrong."""
    if type(request) is not dict:
        raise ValueError("a request is a map")
    op = request.get("op")
    if type(op) is not str or op not in _FIELDS:
        raise ValueError(f"unknown op {op!r:.60}; expected one of {sorted(OPS)}")
    required, optional = _FIELDS[op]
    keys = set(request)
    missing = (required | {"op", "group"}) - keys
    extra = keys - required - optional - {"op", "group"}
    if missing or extra:
        raise ValueError(
            f"{op}: missing fields {sorted(missing)!r:.200}, unexpected fields "
            f"{sorted(map(str, extra))!r:.200}"
        )
    group = request["group"]
    if type(group) is not str or not 0 < len(group) <= _MAX_NAME:
        raise ValueError(f"group must be a string of 1 to {_MAX_NAME} characters")
    args: dict[str, Any] = {}
    if "local" in request:
        if type(request["local"]) is not bool:
            raise ValueError("local must be true or false")
        args["local"] = request["local"]
    if "peer" in request:
        peer = request["peer"]
        args["peer"] = None if peer is None and op == "transfer_leader" else _peer(peer, "peer")
    if "peers" in request:
        args["peers"] = _peers(request["peers"], "peers", empty=False)
    if "voters" in request:
        args["voters"] = _peers(request["voters"], "voters", empty=False)
    if "learners" in request:
        args["learners"] = _peers(request["learners"], "learners", empty=True)
    if "priorities" in request:
        args["priorities"] = _priorities(request["priorities"])
    return op, group, args


def conf_reply(node: Node, conf: ConfState | None = None) -> dict[str, Any]:
    """A configuration as the service answers it, with who leads and, from the
    leader, each member's progress (match index, lag, heard from lately)."""
    conf = node.configuration if conf is None else conf
    out: dict[str, Any] = {
        "node": node.id,
        "leader": node.leader,
        "term": node.term,
        "voters": list(conf.voters),
        "learners": list(conf.learners),
        "voters_outgoing": list(conf.voters_outgoing),
        "priorities": [[p, n] for p, n in conf.priorities],
    }
    if node.is_leader:
        peers = node.status().get("peers", {})
        out["progress"] = {
            p: {"match": v["match"], "lag": v["lag"], "active": v["active"]}
            for p, v in peers.items()
        }
    return out


class AdminService:
    """The ``pyjraft.admin`` service of one transport; `for_transport` gets it."""

    _by_transport: ClassVar[weakref.WeakKeyDictionary[Any, AdminService]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, transport: Transport) -> None:
        self._nodes: dict[str, weakref.ref[Node]] = {}
        self.stats: dict[str, int] = {"requests": 0, "invalid": 0, "unauthorized": 0}
        """Requests served, refused as malformed, refused as unauthorized."""
        transport.register_caller_service(ADMIN_SERVICE, self.handle, MAX_REQUEST_BYTES)

    @classmethod
    def for_transport(cls, transport: Transport) -> AdminService:
        """The service of ``transport``, registered on it the first time."""
        service = cls._by_transport.get(transport)
        if service is None:
            service = cls._by_transport[transport] = cls(transport)
        return service

    def host(self, node: Node) -> None:
        """Answer for ``node.group`` with ``node`` from now on."""
        self._nodes[node.group] = weakref.ref(node)

    def _node(self, group: str) -> Node | None:
        ref = self._nodes.get(group)
        return None if ref is None else ref()

    async def handle(self, request: Any, caller: Identity | None) -> dict[str, Any]:
        """Serve one request from ``caller`` (see the module docstring)."""
        self.stats["requests"] += 1
        try:
            op, group, args = parse_request(request)
        except ValueError as e:
            self.stats["invalid"] += 1
            return _error(INVALID_REQUEST, str(e))
        if op not in READ_OPS and not may_administer(caller):
            self.stats["unauthorized"] += 1
            log.warning("admin %s on group %s refused to %s: not an admin", op, group, caller)
            return _error(
                UNAUTHORIZED,
                f"{op} needs a node or admin certificate; {caller} is a plain client",
            )
        node = self._node(group)
        if node is None:
            return _error(UNKNOWN_GROUP, f"no member of group {group!r} here")
        if node.state.value != "running":
            return _error(UNAVAILABLE, f"member {node.id} of group {group!r} is {node.state.value}")
        if op not in READ_OPS:
            log.info(
                "admin %s on group %s by %s: %s",
                op,
                group,
                caller or "an unauthenticated caller",
                args,
                extra={"group": group, "event": "admin_" + op},
            )
        try:
            return {"ok": await self._run(node, op, args)}
        except NotLeaderError as e:
            conf = node.configuration
            return _error(
                NOT_LEADER,
                f"{node.id} does not lead group {group!r}",
                leader=e.leader,
                # The members, so a client given only some of them may follow
                # a hint to a member added since.
                members=sorted({*conf.voters, *conf.learners, *conf.voters_outgoing}),
            )
        except ConfChangeBusyError as e:
            return _error(BUSY, str(e))
        except ConfChangeError as e:
            # The core says why in words only; this is its catch-up deadline's.
            code = CATCHUP_TIMEOUT if "did not catch up" in str(e) else CHANGE_ABORTED
            return _error(code, str(e))
        except TransferError as e:
            return _error(TRANSFER_FAILED, str(e))
        except LeadershipLostError as e:
            return _error(UNKNOWN_OUTCOME, str(e))
        except ConfigError as e:
            return _error(BAD_CONFIGURATION, str(e))
        except SnapshotsUnavailableError as e:
            return _error(SNAPSHOTS_UNAVAILABLE, str(e))
        except ShutdownError as e:
            return _error(UNAVAILABLE, str(e))

    async def _run(self, node: Node, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "leader":
            return {
                "node": node.id,
                "leader": node.leader,
                "term": node.term,
                "role": node.role.value,
            }
        if op in ("peers", "alive_peers") and not (node.is_leader or args.get("local")):
            raise NotLeaderError(node.leader)
        if op == "peers":
            return conf_reply(node)
        if op == "alive_peers":
            return await self._alive(node)
        if op == "snapshot":
            m = await asyncio.shield(asyncio.ensure_future(node.snapshot()))
            return {"node": node.id, "index": m.index, "term": m.term}
        if op == "reset_peers":
            log.warning(
                "group %s: RESETTING the configuration of %s to %s without consensus "
                "(admin request)",
                node.group,
                node.id,
                list(args["voters"]),
            )
            node.reset_peers(args["voters"])
            return conf_reply(node)
        if op == "transfer_leader":
            leader = await _shielded(node.transfer_leadership_to(args.get("peer")))
            return {"leader": leader}
        if op == "add_peer":
            fut = node.add_peer(args["peer"])
        elif op == "remove_peer":
            fut = node.remove_peer(args["peer"])
        elif op == "add_learners":
            fut = node.add_learners(args["peers"])
        elif op == "remove_learners":
            fut = node.remove_learners(args["peers"])
        else:
            assert op == "change_peers"
            fut = node.change_peers(
                args["voters"], args.get("learners"), args.get("priorities") or None
            )
        return conf_reply(node, await _shielded(fut))

    @staticmethod
    async def _alive(node: Node) -> dict[str, Any]:
        """The voters the leader heard from within an election timeout. With
        check-quorum the core forgets who answered at the start of each
        election timeout; a voter not yet heard from in the new one is looked
        at again after two heartbeats."""
        voters = list(node.configuration.voters)

        def heard() -> set[str]:
            peers = node.status().get("peers", {})
            return {p for p, v in peers.items() if v.get("active")} | {node.id}

        alive = heard()
        if any(v not in alive for v in voters):
            await asyncio.sleep(2 * node.options.heartbeat_ms / 1000)
            if not node.is_leader:
                raise NotLeaderError(node.leader)
            alive |= heard()
        return {
            "node": node.id,
            "leader": node.leader,
            "term": node.term,
            "voters": voters,
            "alive": [v for v in voters if v in alive],
        }


async def _shielded(fut: Awaitable[Any]) -> Any:
    """Await the node's future without cancelling it when the caller goes away."""
    return await asyncio.shield(fut)


__all__ = [
    "ADMIN_SERVICE",
    "BAD_CONFIGURATION",
    "BUSY",
    "CATCHUP_TIMEOUT",
    "CHANGE_ABORTED",
    "INVALID_REQUEST",
    "MAX_PEERS",
    "NOT_LEADER",
    "OPS",
    "READ_OPS",
    "SNAPSHOTS_UNAVAILABLE",
    "TRANSFER_FAILED",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "UNKNOWN_GROUP",
    "UNKNOWN_OUTCOME",
    "AdminService",
    "conf_reply",
    "parse_request",
]
