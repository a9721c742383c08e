"""Safety checks of the Raft paper's Figure 3, made incrementally.

Each property is checked at the moment it could first be broken, in O(1)
per entry, so the simulator can check after every event:

- Election safety: at most one leader per term, ever; no node grants two
  votes in one term; a leader of term T holds granted votes of term T from a
  majority of the voters (itself included).
- Leader append-only: while a node leads a term, its log only grows.
- Log matching: an (index, term) pair determines the entry's data and the
  term of the entry before it, across all nodes and all time. By induction
  that makes two logs with the same (index, term) identical up to there.
- Leader completeness: a new leader of term T holds every entry committed in
  an earlier term (a leader elected late, from votes of a term long gone,
  need not hold what later terms committed).
- State machine safety: no two nodes apply different entries at one index,
  and no node's commit index covers an entry that differs from one committed
  before.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from pyjraft.core import quorum
from pyjraft.core.log_reader import LogUnavailableError
from pyjraft.core.raft import RaftCore
from pyjraft.core.types import Entry, NodeId, Role


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken safety property: which, where, and what was seen."""

    prop: str
    node: NodeId
    detail: str

    def __str__(self) -> str:
        return f"{self.prop} at {self.node}: {self.detail}"


class SafetyViolation(AssertionError):
    """Raised by the checker on the first violation."""

    def __init__(self, violation: Violation) -> None:
        self.violation = violation
        super().__init__(str(violation))


class SafetyChecker:
    """Global knowledge accumulated over a run, against which each event is checked."""

    def __init__(self) -> None:
        self.leaders: dict[int, NodeId] = {}
        self.entries: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.committed: list[Entry] = []  # committed[i - 1] is the entry committed at i
        # commit_terms[i - 1]: the term of the leader that first committed index i
        # (as far as the checker can tell: the committing node's term).
        self.commit_terms: list[int] = []
        # states[i]: the state machine's state after applying committed entries 1..i
        self.states: list[int] = [0]
        self.applied: dict[int, Entry] = {}
        self.votes: dict[tuple[int, NodeId], NodeId] = {}  # (term, voter) -> candidate
        # node -> (term, last index, last term) while it leads
        self._leading: dict[NodeId, tuple[int, int, int]] = {}

    def _fail(self, prop: str, node: NodeId, detail: str) -> None:
        raise SafetyViolation(Violation(prop, node, detail))

    def record_vote(self, voter: NodeId, term: int, candidate: NodeId) -> None:
        """``voter`` sent a granted vote for ``candidate`` in ``term``."""
        known = self.votes.setdefault((term, voter), candidate)
        if known != candidate:
            self._fail(
                "election safety", voter, f"voted for {known} and for {candidate} in term {term}"
            )

    def _check_elected(self, nid: NodeId, core: RaftCore) -> None:
        term = core.term
        electors = set(core.voters) | set(core.outgoing)
        granted = {v: v == nid or self.votes.get((term, v)) == nid for v in electors}
        if quorum.joint_vote(core.voters, core.outgoing, granted) is not quorum.VoteResult.WON:
            voters = sorted(v for v, ok in granted.items() if ok)
            self._fail(
                "election safety",
                nid,
                f"leads term {term} with votes of that term from only {voters} of "
                f"{sorted(core.voters)} (outgoing {sorted(core.outgoing)})",
            )

    def check_role(self, nid: NodeId, core: RaftCore) -> None:
        """Election safety and leader append-only, for a core that just changed."""
        if core.role is not Role.LEADER:
            self._leading.pop(nid, None)
            return
        term = core.term
        known = self.leaders.setdefault(term, nid)
        if known != nid:
            self._fail("election safety", nid, f"term {term} already led by {known}")
        last = core.log.last_index()
        prev = self._leading.get(nid)
        if prev is None or prev[0] != term:
            self._check_elected(nid, core)
            self._check_leader_completeness(nid, core)
        else:
            _, prev_last, prev_last_term = prev
            compacted = prev_last < core.log.first_index()  # in its snapshot now
            if last < prev_last or (
                not compacted and core.log.term_or_none(prev_last) != prev_last_term
            ):
                self._fail(
                    "leader append-only",
                    nid,
                    f"log changed under leader of term {term}: last {prev_last}/"
                    f"{prev_last_term} -> {last}/{core.log.term_or_none(prev_last)}",
                )
        self._leading[nid] = (term, last, core.log.last_term())

    def _check_leader_completeness(self, nid: NodeId, core: RaftCore) -> None:
        term = core.term
        for e, committed_in in zip(self.committed, self.commit_terms, strict=True):
            if committed_in >= term or e.index < core.log.first_index():
                continue  # committed later; or in its snapshot (checked by state)
            if core.log.term_or_none(e.index) != e.term:
                self._fail(
                    "leader completeness",
                    nid,
                    f"new leader of term {term} lacks entry {e.index} (term {e.term}) "
                    f"committed in term {committed_in}; has term "
                    f"{core.log.term_or_none(e.index)}",
                )

    def check_append(self, nid: NodeId, core: RaftCore, entries: list[Entry]) -> None:
        """Log matching, for entries a node is about to make durable."""
        for e in entries:
            prev_term = 0 if e.index == 1 else core.log.term_or_none(e.index - 1)
            if prev_term is None:
                self._fail("log matching", nid, f"entry {e.index} does not follow the log")
                continue
            key = (e.index, e.term)
            seen = self.entries.get(key)
            if seen is None:
                self.entries[key] = (e.data, prev_term)
            elif seen != (e.data, prev_term):
                self._fail(
                    "log matching",
                    nid,
                    f"entry {key} has data/prev-term {(e.data[:20], prev_term)} elsewhere "
                    f"{(seen[0][:20], seen[1])}",
                )

    def check_commit(self, nid: NodeId, core: RaftCore) -> None:
        """State machine safety at the commit index: committed prefixes agree."""
        commit = core.log.committed
        known = len(self.committed)
        upto = min(commit, known)
        # Checking the last agreed index suffices by log matching (checked separately).
        if upto > 0:
            e = self.committed[upto - 1]
            if core.log.term_or_none(upto) not in (e.term, None):
                self._fail(
                    "state machine safety",
                    nid,
                    f"commit {commit} covers index {upto} of term "
                    f"{core.log.term_or_none(upto)}, committed before with term {e.term}",
                )
        if commit > known:
            try:
                fresh = core.log.entries(known + 1, commit + 1)
            except LogUnavailableError:
                self._fail(
                    "state machine safety",
                    nid,
                    f"commit {commit} covers entries {known + 1}.. it no longer holds",
                )
                return
            self.committed.extend(fresh)
            self.commit_terms.extend([core.term] * (commit - known))
            state = self.states[-1]
            for e in fresh:
                state = zlib.crc32(e.data, zlib.crc32(b"%d:%d:" % (e.index, e.term), state))
                self.states.append(state)

    def prefix_state(self, index: int) -> int | None:
        """The state machine's state after the committed prefix up to ``index``
        (the hash chain of `pyjraft.testing.sim.snapshots.chain`), if known."""
        return self.states[index] if index < len(self.states) else None

    def check_apply(self, nid: NodeId, entries: list[Entry]) -> None:
        """State machine safety: every node applies the same entry at each index."""
        for e in entries:
            seen = self.applied.setdefault(e.index, e)
            if seen != e:
                self._fail(
                    "state machine safety",
                    nid,
                    f"applied {e.index}/{e.term}; {seen.index}/{seen.term} was applied elsewhere",
                )
