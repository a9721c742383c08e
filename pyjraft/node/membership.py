"""Membership changes and leadership transfer for a `Node`.

Theory of operation
-------------------
Each method asks the core (`pyjraft.core.membership`) on the leader and
returns an awaitable that resolves when the change is done: the final
configuration committed (``change_peers`` and the helpers built on it), or
the target leading (``transfer_leadership_to``). The core reports each step
in ``Ready.conf_events``; a change the core abandons (a joining peer did not
catch up in time, leadership changed) fails its caller with
`ConfChangeError` (nothing changed: the old configuration stands), and one
already in its joint stage when leadership changes is finished by the next
leader (the caller learns ``LeadershipLostError``: the outcome is then
known only by looking, `Node.configuration`).

`reset_peers` is the explicitly unsafe way out when a majority is lost for
good: it overrides this node's configuration without consensus (see its
docstring).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyjraft.core import conf as confs
from pyjraft.core.errors import RaftError
from pyjraft.core.membership import ConfEvent
from pyjraft.core.types import ConfState, NodeId, Role
from pyjraft.node.errors import LeadershipLostError

if TYPE_CHECKING:
    from pyjraft.core.raft import RaftCore
    from pyjraft.node.node import Node


class ConfChangeError(RaftError):
    """A configuration change was abandoned (``reason`` says why: a joining peer
    did not catch up in time, the leader changed before the change began); the
    configuration did not change."""


class TransferError(RaftError):
    """A leadership transfer did not finish (the target did not catch up within
    an election timeout, or leadership changed another way)."""


class MembershipManager:
    """The pending changes and transfer of one `Node`."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._change: tuple[ConfState, asyncio.Future[ConfState]] | None = None
        self._transfer: tuple[NodeId, asyncio.Future[NodeId]] | None = None

    def change(
        self,
        voters: Sequence[NodeId],
        learners: Sequence[NodeId] | None,
        priorities: Sequence[tuple[NodeId, int]] | None,
    ) -> asyncio.Future[ConfState]:
        """See `Node.change_peers`."""
        node = self._node
        loop = node._loop
        fut: asyncio.Future[ConfState] = loop.create_future()
        core = node._core
        try:
            node._check_running()
            if learners is None:
                learners = tuple(n for n in core.conf.learners if n not in voters)
            core.change_conf(
                tuple(voters), tuple(learners), tuple(priorities) if priorities else None
            )
        except Exception as exc:
            fut.set_exception(exc)
            return fut
        target = core._change.target if core._change is not None else core.conf
        self._change = (target, fut)
        node.events.record(
            "conf_change_started",
            f"configuration change started: voters {list(target.voters)}, "
            f"learners {list(target.learners)}",
        )
        node._send_eager()
        node._schedule_drive()
        return fut

    def transfer(self, target: NodeId | None) -> asyncio.Future[NodeId]:
        """See `Node.transfer_leadership_to`."""
        node = self._node
        fut: asyncio.Future[NodeId] = node._loop.create_future()
        try:
            node._check_running()
            chosen = node._core.transfer_leadership(target)
        except Exception as exc:
            fut.set_exception(exc)
            return fut
        if chosen == node.id:
            fut.set_result(chosen)
            return fut
        self._transfer = (chosen, fut)
        node.events.record("transfer_started", f"leadership transfer to {chosen} started")
        node._send_eager()
        node._schedule_drive()
        return fut

    def events(self, events: list[ConfEvent]) -> None:
        """The core's ``Ready.conf_events``."""
        record = self._node.events.record
        for ev in events:
            if ev.kind == "done" and self._change is not None:
                _, fut = self._change
                self._change = None
                if not fut.done():
                    fut.set_result(ev.conf)
                record(
                    "conf_change_done",
                    f"configuration change done: voters {list(ev.conf.voters)}, "
                    f"learners {list(ev.conf.learners)}",
                    counter="conf_changes",
                )
            elif ev.kind == "aborted" and self._change is not None:
                _, fut = self._change
                self._change = None
                why = f"configuration change abandoned: {ev.detail}"
                if not fut.done():
                    fut.set_exception(ConfChangeError(why))
                record(
                    "conf_change_aborted",
                    why,
                    level=logging.WARNING,
                    counter="conf_changes_aborted",
                )
            elif ev.kind == "joint":
                record("conf_change_joint", "joint configuration committed")
            elif ev.kind == "reset":
                record(
                    "conf_reset",
                    f"configuration RESET to {list(ev.conf.voters)} without consensus (unsafe)",
                    level=logging.WARNING,
                )
            elif ev.kind == "transfer_stepped_down" and self._transfer is not None:
                # Usually the target's election: role_changed sees who leads.
                target, tfut = self._transfer
                self._node._loop.call_later(
                    2 * self._node.options.election_timeout_ms / 1000,
                    self._transfer_unresolved,
                    tfut,
                )
            elif ev.kind == "transfer_aborted" and self._transfer is not None:
                target, tfut = self._transfer
                self._transfer = None
                why = f"transfer to {target} abandoned: {ev.detail}"
                if not tfut.done():
                    tfut.set_exception(TransferError(why))
                record("transfer_aborted", why, level=logging.WARNING)

    def _transfer_unresolved(self, fut: asyncio.Future[NodeId]) -> None:
        if self._transfer is not None and self._transfer[1] is fut:
            target = self._transfer[0]
            self._transfer = None
            if not fut.done():
                fut.set_exception(
                    TransferError(f"this node stepped down, but {target} has not taken over")
                )

    def role_changed(self, leader: NodeId, role: Role) -> None:
        """The node's leader or role changed: a transfer may be done, a change lost."""
        node = self._node
        if self._transfer is not None:
            target, fut = self._transfer
            if leader == target:
                self._transfer = None
                if not fut.done():
                    fut.set_result(target)
                node.events.record(
                    "transfer_done", f"leadership moved to {target}", counter="leader_transfers"
                )
            elif leader != "":
                self._transfer = None
                if not fut.done():
                    fut.set_exception(TransferError(f"leadership went to {leader}, not {target}"))
        if role is not Role.LEADER and self._change is not None:
            _, fut2 = self._change
            self._change = None
            if not fut2.done():
                fut2.set_exception(
                    LeadershipLostError(
                        "leadership changed before the configuration change finished; "
                        "look at the configuration to see where it stands"
                    )
                )

    def fail(self, exc: BaseException) -> None:
        """Fail what is pending (leadership lost, node stopped)."""
        if self._change is not None:
            _, fut = self._change
            self._change = None
            if not fut.done():
                fut.set_exception(exc)
        if self._transfer is not None:
            _, fut2 = self._transfer
            self._transfer = None
            if not fut2.done():
                fut2.set_exception(exc)


def describe_conf(conf: ConfState) -> dict[str, object]:
    """A configuration as plain data (status pages, admin replies)."""
    return {
        "voters": list(conf.voters),
        "learners": list(conf.learners),
        "voters_outgoing": list(conf.voters_outgoing),
        "priorities": dict(conf.priorities),
        "members": sorted(confs.members(conf)),
    }


class MembershipMethods:
    """`Node`'s membership methods (mixed into it; they need its core)."""

    _core: RaftCore
    _membership: MembershipManager

    def _check_running(self) -> None:
        raise NotImplementedError

    def _schedule_drive(self) -> None:
        raise NotImplementedError

    def change_peers(
        self,
        voters: Sequence[str],
        learners: Sequence[str] | None = None,
        priorities: Sequence[tuple[str, int]] | None = None,
    ) -> asyncio.Future[ConfState]:
        """On the leader: change the voters (and learners, default: keep those
        that are not becoming voters; and priorities, default: keep). Joining
        voters catch up first, then the joint configuration, then the new one
        (thesis chapter 4). Resolves to the new configuration once committed.
        Raises `NotLeaderError`, `ConfChangeBusyError` (one change at a time),
        `ConfigError`, `ConfChangeError` (abandoned: a joining peer did not catch
        up within ``catchup_timeout_ms``), `LeadershipLostError`."""
        return self._membership.change(voters, learners, priorities)

    def add_peer(self, peer: str) -> asyncio.Future[ConfState]:
        """Add ``peer`` as a voter (start it with ``NodeOptions(join=True)``)."""
        return self.change_peers((*self._core.voters, peer))

    def remove_peer(self, peer: str) -> asyncio.Future[ConfState]:
        """Remove voter ``peer`` (the leader itself too: it steps down after)."""
        return self.change_peers(tuple(v for v in self._core.voters if v != peer))

    def add_learners(self, peers: Sequence[str]) -> asyncio.Future[ConfState]:
        """Add non-voting members that receive the log."""
        learners = (*self._core.learners, *(p for p in peers if p not in self._core.learners))
        return self.change_peers(self._core.voters, learners)

    def remove_learners(self, peers: Sequence[str]) -> asyncio.Future[ConfState]:
        """Remove learners."""
        return self.change_peers(
            self._core.voters, tuple(p for p in self._core.learners if p not in peers)
        )

    def transfer_leadership_to(self, peer: str | None = None) -> asyncio.Future[str]:
        """On the leader: hand leadership to voter ``peer`` (None: the most
        up-to-date one). Proposals are refused meanwhile. Resolves to the new
        leader; raises `TransferError` if it did not happen within an election
        timeout, `NotLeaderError`, `ConfigError`."""
        return self._membership.transfer(peer)

    def reset_peers(self, voters: Sequence[str]) -> None:
        """UNSAFE, for disaster recovery only: when a majority of the group is
        lost for good, make ``voters`` (survivors) the configuration of this
        node without consensus. Call it on every survivor with the same set,
        and never let the lost members come back with their old data, or two
        groups may each take writes. See `RaftCore.reset_conf`."""
        self._check_running()
        self._core.reset_conf(tuple(voters))
        self._schedule_drive()

    @property
    def configuration(self) -> ConfState:
        """The configuration in force (the latest in the log, committed or not)."""
        return self._core.conf
