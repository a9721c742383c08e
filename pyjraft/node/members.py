"""`MembersService`: the peers' side of member registration (issue 13, section 5).

Theory of operation
-------------------
A member that lost its data directory must not rejoin its group as itself:
it forgot the votes it cast and the entries it acknowledged, so it could
help elect a second leader in a term, or let a committed entry be lost.
Every group directory therefore has an *identity* with a random *instance
id* (`pyjraft.storage.identity`), chosen when the directory is created, and
every member keeps a durable *registry* of the instance id it accepted for
each member of its group. A member starting on a directory it has not yet
registered (a new or wiped one) asks its peers to record its instance id
(`pyjraft.node.registration`) and takes part only once a majority of the
other members did: two such majorities share a member other than itself, so
a wiped member meets at least one peer that knows its former instance and
refuses it, while a majority of the others are reachable.

This module answers those requests, one service per transport for every
group the process hosts (``MEMBERS_SERVICE``). It works as soon as a node
has opened its directory, before its raft group takes part, so members
bootstrapping together register with each other without waiting in a
circle. Two operations, msgpack maps checked field by field:

``{"op": "identity", "group": G}``
    this process's member of ``G``: ``{"cluster", "member", "instance",
    "force"}``.
``{"op": "register", "group": G, "cluster": C, "member": M}``
    record ``M``'s instance. The claim is not taken from the request: the
    service asks ``M`` itself, at its own address, for its identity (with
    TLS the caller's client checks that the certificate there names ``M``),
    so nobody registers an instance for a member it is not. It answers
    ``registered`` (new), ``already`` (the same instance), ``replaced`` (a
    different one, only when ``M`` itself says it starts with
    ``force_new_instance``) with whether this member's log is still empty
    (``fresh``) and the registry it holds (the registrant learns the
    instances of the other members), or an error:
    ``instance_conflict`` (with ``known``, the instance on record: the
    caller's data was lost), ``cluster_mismatch``, ``invalid_request``, or
    ``unavailable`` (the group is not hosted here yet, or ``M`` could not be
    asked: retried).

Registration does not check that ``M`` belongs to the group's
configuration: a member added by a configuration change registers with
the configuration it is given before the change commits.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyjraft.storage.identity import DataDirIdentity, MemberRegistry
from pyjraft.transport.base import Transport

log = logging.getLogger("pyjraft.node.members")

MEMBERS_SERVICE = "pyjraft.members"
"""The RPC service name."""
MAX_REQUEST_BYTES = 4096
"""The service's bound on a request (a few short strings)."""
CALLBACK_TIMEOUT_S = 5.0
"""How long the service waits for a registrant to confirm its identity."""
_MAX_NAME = 1024
_MAX_CALLBACKS = 16

INSTANCE_CONFLICT = "instance_conflict"
"""Error code: the registry knows another instance of the member."""
CLUSTER_MISMATCH = "cluster_mismatch"
"""Error code: the member belongs to another cluster."""
UNAVAILABLE = "unavailable"
"""Error code: retry later (the group is not hosted yet, the member could not be asked)."""
INVALID_REQUEST = "invalid_request"
"""Error code: a malformed request."""


@dataclass(slots=True)
class HostedGroup:
    """One group's member in this process: its identity and registry."""

    identity: DataDirIdentity
    registry: MemberRegistry
    force_new_instance: bool = False
    """Whether this member starts with ``force_new_instance`` (its peers then
    replace the instance they know)."""
    fresh: Callable[[], bool] = lambda: False
    """Whether this member's log is still empty: it never was in a working
    group (a leader's first act is to replicate an entry to a majority)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serializes the registry's (durable) changes."""

    async def record(self, member: str, instance: str) -> None:
        """Record ``instance`` for ``member``, durably, off the loop (under ``lock``)."""
        await asyncio.to_thread(self.registry.set, member, instance)


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def _name(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if type(value) is not str or not value or len(value) > _MAX_NAME:
        raise ValueError(f"{key} must be a string of 1 to {_MAX_NAME} characters")
    return value


class MembersService:
    """The ``pyjraft.members`` service of one transport; `for_transport` gets it."""

    _by_transport: ClassVar[weakref.WeakKeyDictionary[Any, MembersService]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.groups: dict[str, HostedGroup] = {}
        self._callbacks = 0
        self.stats: dict[str, int] = {
            "registered": 0,
            "replaced": 0,
            "conflicts": 0,
            "refused": 0,
        }
        """Registrations recorded (new instances), replaced (forced), refused for
        a conflicting instance, and refused otherwise."""
        transport.register_service(MEMBERS_SERVICE, self.handle, MAX_REQUEST_BYTES)

    @classmethod
    def for_transport(cls, transport: Transport) -> MembersService:
        """The service of ``transport``, registered on it the first time."""
        service = cls._by_transport.get(transport)
        if service is None:
            service = cls._by_transport[transport] = cls(transport)
        return service

    def host(self, group: HostedGroup) -> None:
        """Answer for ``group.identity.group`` from now on."""
        self.groups[group.identity.group] = group

    def unhost(self, name: str) -> None:
        """Stop answering for group ``name``."""
        self.groups.pop(name, None)

    async def handle(self, request: Any) -> dict[str, Any]:
        """Serve one request (see the module docstring)."""
        try:
            if type(request) is not dict:
                raise ValueError("a request is a map")
            op = request.get("op")
            fields = {"identity": {"op", "group"}, "register": {"op", "group", "cluster", "member"}}
            if op not in fields or set(request) != fields[op]:
                raise ValueError(f"expected the fields of 'identity' or 'register', got {op!r:.40}")
            group = _name(request, "group")
            if op == "register":
                cluster = _name(request, "cluster")
                member = _name(request, "member")
        except ValueError as e:
            self.stats["refused"] += 1
            return _error(INVALID_REQUEST, str(e))
        hosted = self.groups.get(group)
        if hosted is None:
            return _error(UNAVAILABLE, f"group {group!r} is not hosted here (yet)")
        ident = hosted.identity
        if op == "identity":
            return {
                "ok": {
                    "cluster": ident.cluster_id,
                    "member": ident.node_id,
                    "instance": ident.instance_id,
                    "force": hosted.force_new_instance,
                }
            }
        if cluster != ident.cluster_id:
            self.stats["refused"] += 1
            return _error(
                CLUSTER_MISMATCH,
                f"member {ident.node_id} of group {group!r} belongs to cluster "
                f"{ident.cluster_id!r}, not {cluster!r}",
            )
        return await self._register(hosted, member, cluster)

    async def _register(self, hosted: HostedGroup, member: str, cluster: str) -> dict[str, Any]:
        group = hosted.identity.group
        if self._callbacks >= _MAX_CALLBACKS:
            return _error(UNAVAILABLE, "too many registrations in progress")
        self._callbacks += 1
        try:
            claim = await self.transport.call(
                member,
                MEMBERS_SERVICE,
                {"op": "identity", "group": group},
                timeout=CALLBACK_TIMEOUT_S,
            )
        except Exception as e:
            return _error(UNAVAILABLE, f"could not ask {member} for its identity: {e}")
        finally:
            self._callbacks -= 1
        body = claim.get("ok") if type(claim) is dict else None
        if type(body) is not dict:
            return _error(UNAVAILABLE, f"{member} did not give its identity: {claim!r:.200}")
        instance = body.get("instance")
        if body.get("member") != member or body.get("cluster") != cluster:
            self.stats["refused"] += 1
            return _error(
                INVALID_REQUEST,
                f"{member} says it is member {body.get('member')!r:.100} of cluster "
                f"{body.get('cluster')!r:.100}",
            )
        if type(instance) is not str:
            return _error(INVALID_REQUEST, f"{member} gave no instance id")
        async with hosted.lock:
            known = hosted.registry.get(member)
            if known == instance:
                return {"ok": self._accepted(hosted, "already")}
            if known is not None and not body.get("force"):
                self.stats["conflicts"] += 1
                log.error(
                    "group %s: refused member %s as instance %s: this member is instance %s "
                    "here; its data directory was lost or replaced",
                    group,
                    member,
                    instance,
                    known,
                    extra={"group": group, "event": "instance_conflict"},
                )
                return _error(
                    INSTANCE_CONFLICT,
                    f"{self.transport.address} knows member {member} of group {group!r} as "
                    f"instance {known}, not {instance}",
                    known=known,
                )
            try:
                await hosted.record(member, instance)
            except Exception as e:
                return _error(UNAVAILABLE, f"cannot record it: {e}")
            if known is None:
                self.stats["registered"] += 1
                log.info(
                    "group %s: registered member %s as instance %s",
                    group,
                    member,
                    instance,
                    extra={"group": group, "event": "member_registered"},
                )
                result = "registered"
            else:
                self.stats["replaced"] += 1
                log.warning(
                    "group %s: member %s replaced instance %s by %s (it started with "
                    "force_new_instance: its earlier votes and acknowledgements are forgotten)",
                    group,
                    member,
                    known,
                    instance,
                    extra={"group": group, "event": "member_replaced"},
                )
                result = "replaced"
            return {"ok": self._accepted(hosted, result)}

    @staticmethod
    def _accepted(hosted: HostedGroup, result: str) -> dict[str, Any]:
        return {"result": result, "fresh": hosted.fresh(), "members": hosted.registry.as_dict()}
