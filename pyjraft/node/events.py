"""`NodeEvents`: what happened to one node, as log lines, counters and a short history.

Theory of operation
-------------------
The node tells this module about the rare things only: a change of its
soft state (role, leader, term), a durable change of its hard state (term,
vote), a fatal error. From those it derives the events an operator asks
about -- an election started (after a pre-vote round, or directly), won or
lost, a vote cast for another member, a role, term or leader change -- and
for each one it

- logs one line on the ``pyjraft.node`` logger through `NodeLogger`, which
  puts ``group``, ``node`` and ``term`` on every record (and ``event`` plus
  the event's own fields), so `pyjraft.ops.logs` can print them as JSON or
  key=value;
- bumps a counter (`counters`, exported as metrics);
- keeps it in `recent`, the history the status page shows.

Nothing here runs per entry or per message. Features that arrive later
(membership changes, snapshots and their installation) call `record` with
their own event name and fields, the same way.

The core's soft states reach the runtime one per `Ready`, so two changes in
one loop turn (a single-member group campaigning and winning at once, say)
arrive as one; the derivation below accounts for the step it did not see.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from pyjraft.core.types import NONE, HardState, Role, SoftState

RECENT_EVENTS = 32
"""How many events `NodeEvents.recent` keeps."""

_ELECTION_EVENTS = frozenset(
    {
        "pre_vote_started",
        "pre_vote_failed",
        "election_started",
        "election_won",
        "election_lost",
        "vote_granted",
    }
)


class NodeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that adds ``group``, ``node`` and the current ``term`` to every
    record (as attributes, for structured formatters)."""

    def __init__(
        self, logger: logging.Logger, group: str, node: str, term: Callable[[], int]
    ) -> None:
        super().__init__(logger, {"group": group, "node": node})
        self._term = term

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Merge our fields under the caller's ``extra`` (the caller's win)."""
        extra: dict[str, Any] = {"group": self.extra["group"], "node": self.extra["node"]}  # type: ignore[index]
        extra["term"] = self._term()
        given = kwargs.get("extra")
        if given:
            extra.update(given)
        kwargs["extra"] = extra
        return msg, kwargs


class NodeEvents:
    """Elections, votes, role/term/leader changes and failure of one node."""

    def __init__(
        self,
        group: str,
        node: str,
        term: Callable[[], int],
        *,
        logger: logging.Logger | None = None,
        initial: SoftState | None = None,
        hard_state: HardState | None = None,
    ) -> None:
        self.node = node
        self.log = NodeLogger(logger or logging.getLogger("pyjraft.node"), group, node, term)
        """The node's logger: every line carries group, node and term."""
        self.counters: dict[str, int] = {
            "pre_votes_started": 0,
            "elections_started": 0,
            "elections_won": 0,
            "elections_lost": 0,
            "votes_granted": 0,
            "role_changes": 0,
            "term_changes": 0,
            "leader_changes": 0,
        }
        """Counts of each kind of event since the node started."""
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        """The last `RECENT_EVENTS` events, oldest first: dicts with ``time``
        (Unix seconds), ``event``, ``term`` and the event's fields."""
        self._soft = initial or SoftState(NONE, Role.FOLLOWER, 0)
        self._hard = hard_state or HardState()
        self.error: BaseException | None = None
        """The fatal error, once the node failed."""
        self._failed: asyncio.Event | None = None

    # -- what the node reports -------------------------------------------------

    def soft_state(self, new: SoftState) -> None:
        """The core's role, leader or term changed (one `Ready`'s soft state)."""
        old, self._soft = self._soft, new
        if new.term != old.term:
            self._event("term_change", new.term, "term_changes", old_term=old.term)
        if old.role is Role.CANDIDATE and (
            new.role not in (Role.CANDIDATE, Role.LEADER) or new.term != old.term
        ):
            self._event("election_lost", old.term, "elections_lost", leader=new.leader or None)
        if old.role is Role.PRE_CANDIDATE and new.role in (Role.FOLLOWER, Role.LEARNER):
            self._event("pre_vote_failed", new.term, None, leader=new.leader or None)
        if new.role is Role.PRE_CANDIDATE and (old.role is not Role.PRE_CANDIDATE):
            self._event("pre_vote_started", new.term, "pre_votes_started", for_term=new.term + 1)
        campaigned = new.role is Role.CANDIDATE and (
            old.role is not Role.CANDIDATE or new.term != old.term
        )
        # A win seen without its campaign (both in one loop turn).
        skipped = new.role is Role.LEADER and old.role is not Role.CANDIDATE and new.term > old.term
        if campaigned or skipped:
            self._event("election_started", new.term, "elections_started")
        if new.role is Role.LEADER and (old.role is not Role.LEADER or new.term != old.term):
            self._event("election_won", new.term, "elections_won")
        if new.role is not old.role:
            self._event(
                "role_change",
                new.term,
                "role_changes",
                old_role=old.role.value,
                role=new.role.value,
                leader=new.leader or None,
            )
        if new.leader not in (old.leader, NONE):
            self._event(
                "leader_change",
                new.term,
                "leader_changes",
                leader=new.leader,
                old_leader=old.leader or None,
            )

    def hard_state(self, new: HardState) -> None:
        """A new term or vote is durable."""
        old, self._hard = self._hard, new
        if new.vote not in (NONE, self.node) and (new.vote != old.vote or new.term != old.term):
            self._event("vote_granted", new.term, "votes_granted", voted_for=new.vote)

    def fatal(self, error: BaseException) -> None:
        """The node stopped on ``error``: log it with its traceback, wake waiters."""
        self.error = error
        self.log.error(
            "raft node stopped on a fatal error: %r",
            error,
            exc_info=error,
            extra={"event": "node_error", "error": repr(error)},
        )
        self._remember("node_error", self._soft.term, {"error": repr(error)})
        if self._failed is not None:
            self._failed.set()

    async def wait_failed(self) -> BaseException:
        """Wait until the node fails; returns its fatal error."""
        if self.error is None:
            if self._failed is None:
                self._failed = asyncio.Event()
            await self._failed.wait()
        assert self.error is not None
        return self.error

    # -- for later features -----------------------------------------------------

    def record(
        self,
        event: str,
        message: str,
        *,
        level: int = logging.INFO,
        counter: str | None = None,
        **fields: Any,
    ) -> None:
        """Log and remember an event of a feature built on the node (membership
        change, snapshot save, snapshot install, ...): one line with
        ``event`` and ``fields``; ``counter`` (created at 0) is incremented."""
        if counter is not None:
            self.counters[counter] = self.counters.get(counter, 0) + 1
        self.log.log(level, message, extra={"event": event, **fields})
        self._remember(event, self._soft.term, fields)

    def elections(self) -> list[dict[str, Any]]:
        """The recent election events (started, won, lost, votes), oldest first."""
        return [e for e in self.recent if e["event"] in _ELECTION_EVENTS]

    # -- internals --------------------------------------------------------------

    def _event(self, event: str, term: int, counter: str | None, **fields: Any) -> None:
        if counter is not None:
            self.counters[counter] += 1
        shown = {k: v for k, v in fields.items() if v is not None}
        self.log.info(_describe(event, term, shown), extra={"event": event, **shown})
        self._remember(event, term, shown)

    def _remember(self, event: str, term: int, fields: Mapping[str, Any]) -> None:
        self.recent.append({"time": time.time(), "event": event, "term": term, **fields})


def _describe(event: str, term: int, f: Mapping[str, Any]) -> str:
    """The human sentence of an event (the structured fields carry the same)."""
    match event:
        case "term_change":
            return f"term {f['old_term']} -> {term}"
        case "pre_vote_started":
            return f"election timeout: pre-vote for term {f['for_term']}"
        case "pre_vote_failed":
            return f"pre-vote for term {term + 1} failed"
        case "election_started":
            return f"election started for term {term}"
        case "election_won":
            return f"election won: leader of term {term}"
        case "election_lost":
            leader = f.get("leader")
            return f"election for term {term} lost" + (f" to {leader}" if leader else "")
        case "vote_granted":
            return f"voted for {f['voted_for']} in term {term}"
        case "role_change":
            return f"role {f['old_role']} -> {f['role']}"
        case "leader_change":
            return f"leader is {f['leader']}"
    return event
