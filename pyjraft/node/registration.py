"""`Registration`: a member on a new (or wiped) data directory makes itself
known to its peers before it takes part (issue 13, section 5).

Theory of operation
-------------------
`prepare` runs at every start, once the node's storage is open (the log's
lock held). It loads the group directory's identity and checks it against
the node's cluster, group and id (`IdentityMismatchError`, fatal, for a
directory of another node); a directory without one gets one now, with a
fresh random instance id (a warning when it already held raft state: a
directory from before identities). The member's own entry in its registry
is the mark that its instance was registered: when it names this instance,
the node starts as it always did, with no network round. Otherwise:

`Registration.run` asks every other member of the configuration, through
their ``pyjraft.members`` service (`pyjraft.node.members`), to record this
instance, and retries those that cannot answer yet (not started, still
opening their logs) with backoff, logging who it waits for. Once a majority
of the *other* members recorded it, it records itself (durably) and the
node joins its group: from then on it steps messages and ticks. Two
majorities of the others always share a member other than this one, so if
this member ever registered an earlier instance, some peer in any majority
knows it and answers ``instance_conflict``: the node then fails with
`MemberDataLostError`, which says what happened and how to recover, and
never takes part. Every round asks every peer not reached yet and waits for
all of them, so a conflict is seen as soon as a peer that knows is
reachable. A cluster of one has no one to ask.

A new cluster is the exception: while every peer that answered has an
empty log too (no group ever worked with them: a leader's first act is to
replicate an entry to a majority), a majority of the whole configuration,
this member included, suffices, so a new 3-member cluster starts with 2
members up, as raft itself would. As soon as a peer with data answers, a
majority of the others is needed: a first-time member of a running
3-member cluster needs both others. (The exception cannot tell a wiped
member that starts together with a member that never ran, while every peer
that knows its former instance is down, from a new cluster.)

After joining it goes on asking the members it has not reached, in the
background, so that every member learns the instance (a conflict found
then stops the node too); it also learns from each answer the instances
its peers recorded for the others.

``NodeOptions.force_new_instance`` makes the peers replace the instance
they know (the member says so when they ask it who it is): for an operator
who knows the member's data is gone and accepts the risk (see the README).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
from collections.abc import Callable
from typing import Any

from pyjraft.node.errors import MemberDataLostError, RegistrationError
from pyjraft.node.members import (
    CLUSTER_MISMATCH,
    INSTANCE_CONFLICT,
    MEMBERS_SERVICE,
    HostedGroup,
    MembersService,
)
from pyjraft.node.options import NodeOptions
from pyjraft.storage.identity import (
    DataDirIdentity,
    MemberRegistry,
    bootstrap_identity,
    check_identity,
    load_identity,
)
from pyjraft.transport.base import Transport

ATTEMPT_TIMEOUT_S = 10.0
"""How long one peer is given to answer a registration (it asks us back first)."""
BACKOFF_S = (0.05, 2.0)
"""First and longest pause between rounds of asking."""
PROGRESS_EVERY_S = 5.0
"""How often a registration still waiting says whom it waits for."""


def group_dir(options: NodeOptions) -> str:
    """The node's group directory, ``data_dir/group``."""
    assert options.data_dir is not None
    return os.path.join(options.data_dir, options.group)


def prepare(
    options: NodeOptions, has_state: bool, log: logging.Logger | logging.LoggerAdapter[Any]
) -> tuple[HostedGroup, bool]:
    """Load (or create) the identity of the node's group directory and open its
    registry; return them and whether this instance still has to register
    (blocking: call it off the loop). ``has_state``: whether the directory
    holds raft state already (a log entry, a term)."""
    directory = group_dir(options)
    ident = load_identity(directory)
    if ident is None:
        if has_state:
            log.warning(
                "%s holds raft state but no identity (written before identities "
                "existed, or the file was lost): giving it one; peers that know another "
                "instance of %s will refuse it",
                directory,
                options.id,
            )
        ident = bootstrap_identity(
            directory, cluster_id=options.cluster_id, group=options.group, node_id=options.id
        )
        log.info(
            "%s: new data directory of member %s, instance %s",
            directory,
            options.id,
            ident.instance_id,
        )
    else:
        ident = check_identity(
            directory, cluster_id=options.cluster_id, group=options.group, node_id=options.id
        )
    registry = MemberRegistry(directory)
    hosted = HostedGroup(ident, registry, force_new_instance=options.force_new_instance)
    return hosted, registry.get(options.id) != ident.instance_id


def _when(ident: DataDirIdentity) -> str:
    ts = datetime.datetime.fromtimestamp(ident.created_at, datetime.UTC)
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC")


def data_lost_message(options: NodeOptions, ident: DataDirIdentity, known: dict[str, str]) -> str:
    """The refusal: what happened, why it matters, how to recover."""
    who = ", ".join(f"{peer} (instance {inst})" for peer, inst in sorted(known.items()))
    return (
        f"member {options.id} of group {options.group!r} refuses to start: its data "
        f"directory {group_dir(options)} was lost or replaced. It is a new instance "
        f"({ident.instance_id}, created {_when(ident)}), but its peers know this member as "
        f"another one: {who}. The votes it cast and the entries it acknowledged are gone; "
        "rejoining as itself could elect a second leader in a term or lose committed "
        "writes. To recover, remove the member from the group and add it back as a new "
        "member once membership changes exist, or, knowing the risk (see the README, "
        "'A member that lost its data'), restart it once with --force-new-instance "
        "(NodeOptions.force_new_instance)."
    )


class Registration:
    """Registers this member's instance with its peers (see the module docstring)."""

    def __init__(
        self,
        options: NodeOptions,
        hosted: HostedGroup,
        transport: Transport,
        *,
        pending: bool = True,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``pending``: whether the instance still has to register (else the
        node takes part at once and this only serves the group's members
        service)."""
        self.options = options
        self.hosted = hosted
        self.transport = transport
        self.log = log or logging.getLogger("pyjraft.node")
        """Where it logs (the node's logger, once the node exists)."""
        self.service = MembersService.for_transport(transport)
        self.service.host(hosted)
        self.others = tuple(p for p in options.peers if p != options.id)
        self.needed = len(self.others) // 2 + 1 if self.others else 0
        """Peers that must record the instance before the node takes part
        (a majority of the others), once any member has joined its group."""
        self.needed_new = len(options.peers) // 2  # and this member: a majority
        """The same while every peer that answered is new (a new cluster)."""
        self.accepted: set[str] = set()
        self.peers_with_data: set[str] = set()
        """Peers that answered with a log that is not empty (not a new cluster)."""
        self.waiting: dict[str, str] = {}
        """Peers not reached yet, with the last reason."""
        self.state = "pending" if pending else "registered"
        """``pending``, ``registered`` or ``refused``."""
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._learned: dict[str, str] = {}
        self._forgetting: set[asyncio.Task[None]] = set()

    def begin(
        self,
        log: logging.Logger | logging.LoggerAdapter[Any],
        joined: Callable[[], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        """Log to ``log`` (the node's) from now on; call ``joined()`` at once if
        the instance is registered, else register in a task and call it once
        enough peers recorded the instance, or ``failed(error)``."""
        self.log = log
        if self.state != "pending":
            joined()
            return
        self._task = asyncio.get_running_loop().create_task(
            self._main(joined, failed), name=f"register-{self.options.group}"
        )

    async def close(self) -> None:
        """Stop asking and stop answering for the group (the node shuts down)."""
        self.service.unhost(self.options.group)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def forget_removed(self, members: frozenset[str] | set[str]) -> None:
        """A configuration without some recorded members committed: forget their
        instances (in a task), so that one added again later, on a new data
        directory, registers afresh instead of being refused as a lost member."""
        gone = [m for m in self.hosted.registry.as_dict() if m not in members]
        if gone and self.options.id in members:
            task = asyncio.get_running_loop().create_task(self._forget(gone))
            self._forgetting.add(task)
            task.add_done_callback(self._forgetting.discard)

    async def _forget(self, gone: list[str]) -> None:
        registry = self.hosted.registry
        try:
            async with self.hosted.lock:
                for member in gone:
                    await asyncio.to_thread(registry.remove, member)
        except Exception as exc:  # the entries stay: a re-added member needs force
            self.log.warning("could not forget removed members %s: %s", gone, exc)
        else:
            self.log.info("forgot the instances of removed members %s", gone)

    def summary(self) -> str:
        """The state, for `Node.status`."""
        if self.state != "pending":
            return self.state
        return f"pending: {len(self.accepted)} of {self.needed} peers recorded this instance"

    async def _main(
        self, joined: Callable[[], None], failed: Callable[[BaseException], None]
    ) -> None:
        try:
            await self._register_with(self.needed, bootstrap=True)
            async with self.hosted.lock:
                await self.hosted.record(self.options.id, self.hosted.identity.instance_id)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self.state = "refused"
            failed(e)
            return
        self.state = "registered"
        self.log.info(
            "member %s of group %s: instance %s registered with %s; taking part",
            self.options.id,
            self.options.group,
            self.hosted.identity.instance_id,
            ", ".join(sorted(self.accepted)) or "no one (a group of one)",
            extra={"group": self.options.group, "event": "instance_registered"},
        )
        joined()
        try:  # the rest of the peers, in the background
            await self._register_with(len(self.others))
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            failed(e)

    def _enough(self, count: int, bootstrap: bool) -> bool:
        if len(self.accepted) >= count:
            return True
        new_cluster = bootstrap and not self.peers_with_data
        return new_cluster and len(self.accepted) >= self.needed_new

    async def _register_with(self, count: int, bootstrap: bool = False) -> None:
        """Ask the peers not reached yet, round after round, until ``count`` of
        them recorded the instance (with ``bootstrap``, or a majority with this
        member while every peer that answered is new); `MemberDataLostError` on a
        conflict."""
        loop = asyncio.get_running_loop()
        pause = BACKOFF_S[0]
        next_report = loop.time() + PROGRESS_EVERY_S
        conflicts: dict[str, str] = {}
        while not self._enough(count, bootstrap):
            todo = [p for p in self.others if p not in self.accepted]
            answers = await asyncio.gather(*(self._ask(p) for p in todo))
            for peer, answer in zip(todo, answers, strict=True):
                self._judge(peer, answer, conflicts)
            if self._learned and not conflicts:
                await self._record_learned()
            if conflicts:
                raise MemberDataLostError(
                    data_lost_message(self.options, self.hosted.identity, conflicts)
                )
            if self._enough(count, bootstrap):
                return
            if loop.time() >= next_report:
                next_report = loop.time() + PROGRESS_EVERY_S
                self.log.warning(
                    "member %s of group %s: instance %s recorded by %d of the %d peers needed "
                    "before taking part; waiting for %s",
                    self.options.id,
                    self.options.group,
                    self.hosted.identity.instance_id,
                    len(self.accepted),
                    self.needed,
                    "; ".join(f"{p}: {why}" for p, why in sorted(self.waiting.items())),
                    extra={"group": self.options.group, "event": "registration_waiting"},
                )
            await asyncio.sleep(pause * (0.5 + self._rng.random()))
            pause = min(pause * 2, BACKOFF_S[1])

    async def _ask(self, peer: str) -> Any:
        request = {
            "op": "register",
            "group": self.options.group,
            "cluster": self.options.cluster_id,
            "member": self.options.id,
        }
        try:
            return await self.transport.call(
                peer, MEMBERS_SERVICE, request, timeout=ATTEMPT_TIMEOUT_S
            )
        except Exception as e:
            return e

    def _judge(self, peer: str, answer: Any, conflicts: dict[str, str]) -> None:
        if isinstance(answer, BaseException):
            self.waiting[peer] = f"{type(answer).__name__}: {answer}"
            return
        if type(answer) is not dict:
            self.waiting[peer] = f"unexpected answer {answer!r:.100}"
            return
        ok = answer.get("ok")
        if type(ok) is dict:
            self.accepted.add(peer)
            self.waiting.pop(peer, None)
            if ok.get("fresh") is not True:
                self.peers_with_data.add(peer)
            if ok.get("result") == "replaced":
                self.log.warning(
                    "member %s of group %s: %s replaced the instance it knew by %s "
                    "(force_new_instance)",
                    self.options.id,
                    self.options.group,
                    peer,
                    self.hosted.identity.instance_id,
                )
            self._learn(ok.get("members"))
            return
        code = answer.get("error")
        if code == INSTANCE_CONFLICT and type(answer.get("known")) is str:
            conflicts[peer] = answer["known"]
            self.peers_with_data.add(peer)
        elif code == CLUSTER_MISMATCH:
            raise RegistrationError(
                f"member {self.options.id} of group {self.options.group!r} cannot join: "
                f"{answer.get('message')} (check --peers and the cluster id)"
            )
        else:
            self.waiting[peer] = f"{code}: {answer.get('message', '')}"[:300]

    def _learn(self, members: Any) -> None:
        """Note the instances a peer knows for the other members, where we know
        none (a peer's registry is as good as ours)."""
        if type(members) is not dict:
            return
        registry = self.hosted.registry
        for m, i in members.items():
            if (
                type(m) is str
                and type(i) is str
                and m != self.options.id
                and registry.get(m) is None
            ):
                self._learned.setdefault(m, i)

    async def _record_learned(self) -> None:
        learned, self._learned = self._learned, {}
        async with self.hosted.lock:
            merged = {**learned, **self.hosted.registry.as_dict()}
            try:
                await asyncio.to_thread(self.hosted.registry.replace, merged)
            except Exception as e:  # a bad entry from a peer, a full disk: not fatal here
                self.log.warning("could not record the instances its peers know: %s", e)
