"""Planted Raft bugs: copies of the core, each broken in one classic way.

The simulator is the project's safety net only if it catches real bugs, so
it is tested against these mutants (`tests/sim/test_mutants.py`, and at
length with ``python -m pyjraft.testing.sim --mutants``). Each mutant is a
subclass of `RaftCore` that overrides one rule; everything else is the real
core. A mutant that stops overriding anything (because the core it patches
was refactored) is no longer broken and its test fails, so they cannot rot
silently.

Each entry of `MUTANTS` names the rule broken, in the vocabulary of the Raft
paper (section numbers) or of the `Ready` contract (`pyjraft.core.ready`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyjraft.core import quorum
from pyjraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    Message,
    PreVoteRequest,
    PreVoteResponse,
    VoteRequest,
    VoteResponse,
)
from pyjraft.core.progress import Progress
from pyjraft.core.raft import RaftCore
from pyjraft.core.raft_log import RaftLog
from pyjraft.core.read_only import ReadState
from pyjraft.core.ready import Ready
from pyjraft.core.types import NONE, ConfState, Entry, NodeId, Role, SnapshotMeta


class VotesSkipLogCheck(RaftCore):
    """Paper 5.4.1 broken for real votes only: a vote is granted without the
    up-to-date check (pre-votes still check, so pre-vote hides it unless the
    simulator also runs without pre-vote, or with transfers)."""

    def _handle_vote_request(self, m: VoteRequest | PreVoteRequest) -> None:
        if isinstance(m, PreVoteRequest):
            super()._handle_vote_request(m)
            return
        grant = self.vote == m.src or (self.vote == NONE and self.leader == NONE)
        if grant:
            self.vote = m.src
            self.election_elapsed = 0
        self._send(VoteResponse(self.group, self.term, self.id, m.src, grant))


class LeaderCountsUndurable(RaftCore):
    """Thesis 10.2.1 broken: the leader counts its own entries toward the
    commit index as soon as it appends them, before its write is durable."""

    def _maybe_commit(self) -> bool:
        me = self.progress.get(self.id)
        if me is not None:
            me.match = max(me.match, self.log.last_index())
        return super()._maybe_commit()


class VoteBeforeDurable(RaftCore):
    """`Ready` contract step 3 broken: vote responses are sent eagerly, before
    the vote they grant is durable."""

    def _send(self, m: Message) -> None:
        if isinstance(m, VoteResponse):
            self._eager.append(m)
        else:
            super()._send(m)


class CommitsOldTermsByCounting(RaftCore):
    """Paper 5.4.2 (Figure 8) broken: commits any index a majority holds,
    whatever its term."""

    def _maybe_commit(self) -> bool:
        me = self.progress.get(self.id)
        if me is not None:
            me.match = max(me.match, self._stable_index)
        index = quorum.majority_index(self.voters, {p: pr.match for p, pr in self.progress.items()})
        if index > self.log.committed:
            self.log.commit_to(index)
            return True
        return False


class TruncatesOnStaleAppend(RaftCore):
    """Paper 5.3 (step 3 of the receiver rules) broken: a follower truncates
    its log after the entries of every AppendEntries, even when they all match
    (a stale or reordered message then erases entries it already
    acknowledged)."""

    def _handle_append(self, m: AppendEntries) -> None:
        log = self.log
        if (
            m.entries
            and m.prev_log_index >= log.committed
            and log.match_term(m.prev_log_index, m.prev_log_term)
            and log.last_index() > m.entries[-1].index
        ):
            keep = [e for e in m.entries if e.index > log.committed]
            if keep:
                log.append(keep)  # replaces everything from keep[0] on
                self._stable_index = min(self._stable_index, log.in_progress)
        super()._handle_append(m)


class CountsStaleVotes(RaftCore):
    """Paper 5.1 broken: a candidate counts vote responses from earlier terms."""

    def step(self, m: Message, from_node: bool = True) -> None:
        if (
            isinstance(m, VoteResponse)
            and m.group == self.group
            and m.dst == self.id
            and m.term < self.term
            and self.role is Role.CANDIDATE
        ):
            self._handle_vote_response(m.src, m.granted)
            return
        super().step(m, from_node)


class HeartbeatCommitUnclamped(RaftCore):
    """Paper 5.3 broken on the leader's side: heartbeats carry the full commit
    index, not what the follower is known to match, so a follower commits its
    own divergent, uncommitted entries at those indexes."""

    def _broadcast_heartbeat(self) -> None:
        for peer in self.progress:
            if peer != self.id:
                self._send(Heartbeat(self.group, self.term, self.id, peer, self.log.committed))


class ForgetsVote(RaftCore):
    """`Ready` contract step 2 broken: a vote changes the hard state without it
    reaching the `Ready` unless the term changed too, so it is never made
    durable and a restarted node can vote twice in one term."""

    def ready(self) -> Ready:
        vote_only = self.term == self._persisted_hard_state.term
        rd = super().ready()
        if vote_only and rd.hard_state is not None:
            # Pretend the vote was persisted (it was not).
            rd.hard_state = None
        return rd


class AcceptsStaleLeader(RaftCore):
    """Paper 5.1 broken: AppendEntries from an older term are accepted as if
    current (the stale leader's entries overwrite newer ones)."""

    def step(self, m: Message, from_node: bool = True) -> None:
        if (
            isinstance(m, AppendEntries)
            and m.group == self.group
            and m.dst == self.id
            and m.term < self.term
            and self.role is not Role.LEADER
        ):
            self._handle_append(m)
            return
        super().step(m, from_node)


class _KeepsConflictsLog(RaftLog):
    __slots__ = ()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        # Only entries beyond our last index count as new; a conflicting
        # entry at an index we hold is taken as already present.
        last = self.last_index()
        for e in entries:
            if e.index > last:
                return e.index
        return 0


class KeepsConflictingEntries(RaftCore):
    """Paper 5.3 broken: a follower does not delete a conflicting suffix; it
    acknowledges the leader's entries while keeping its own at those indexes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log.__class__ = _KeepsConflictsLog


class PreVoteResponseChangesTerm(RaftCore):
    """Thesis 9.6 broken: a granted pre-vote response makes the pre-candidate
    adopt the (not yet campaigned) term as if it were elected in it, skipping
    the real vote."""

    def step(self, m: Message, from_node: bool = True) -> None:
        if (
            isinstance(m, PreVoteResponse)
            and m.group == self.group
            and m.dst == self.id
            and m.granted
            and self.role is Role.PRE_CANDIDATE
            and m.term == self.term + 1
        ):
            self.votes.setdefault(m.src, True)
            if quorum.majority_vote(self.voters, self.votes) is quorum.VoteResult.WON:
                self.term += 1
                self.vote = self.id
                self._become_leader()
            return
        super().step(m, from_node)


class RestoresStaleSnapshot(RaftCore):
    """Thesis 5.1 broken: a follower restores any snapshot offered, even one at
    or below its commit index (its state machine and log go back)."""

    def restore(self, leader: NodeId, term: int, snap: SnapshotMeta) -> bool:
        if self.role is Role.LEADER or term != self.term or leader != self.leader:
            return False
        if snap.index > self.log.committed:
            return super().restore(leader, term, snap)
        log = self.log
        log.pending_snapshot = snap
        log.unstable = []
        log.unstable_offset = snap.index + 1
        log.in_progress = snap.index
        log.committed = log.applying = snap.index
        self._stable_index = snap.index
        self._restored = snap
        self._send(AppendEntriesResponse(self.group, term, self.id, leader, True, snap.index))
        return True


class AppendsPastCompaction(RaftCore):
    """Thesis 5.1 broken on the leader: a follower that needs compacted entries
    is sent appends from the first entry still held, as if it had everything
    before (instead of the snapshot)."""

    def _send_snapshot(self, peer: NodeId, pr: Progress) -> None:
        pr.next = self.log.first_index()
        self._send_append(peer)


class ReadsWithoutConfirmation(RaftCore):
    """Thesis 6.4 broken: the leader answers a read at its commit index at once,
    without a heartbeat round to confirm it still leads."""

    def _start_reads(self, reads: list[tuple[bytes, bool]]) -> None:
        for ctx, _ in reads:
            self._read_states.append(ReadState(self.log.committed, ctx))


class ReadsBeforeTermCommit(RaftCore):
    """Thesis 6.4 broken: a new leader serves reads before an entry of its own
    term is committed, when its commit index may lag what was committed."""

    def read_index(self, ctx: bytes, lease: bool = False) -> None:
        if self.role is not Role.LEADER:
            super().read_index(ctx, lease)
            return
        self._start_reads([(ctx, lease)])


class LeaseOutlivesElection(RaftCore):
    """Thesis 6.4 broken: the leader lease is longer than the election timeout,
    so a deposed leader serves lease reads after a new leader was elected."""

    def _lease_span(self) -> int:
        return 3 * self.config.election_ticks


class ConfWhenCommitted(RaftCore):
    """Thesis 4.1 broken: a configuration takes effect only once committed, not
    when appended (a leader elected meanwhile uses the old one)."""

    def _use_conf(self, conf: ConfState) -> None:
        committed = self.log.committed
        in_force = self._base_conf
        for index, _, c in self._conf_log:
            if index <= committed:
                in_force = c
        super()._use_conf(in_force)

    def _conf_committed(self) -> None:
        super()._conf_committed()
        self._use_conf(self.conf)


class SkipsJointConsensus(RaftCore):
    """Thesis 4.3 broken: a change of voters goes straight from the old
    configuration to the new one, without the joint step."""

    def _append_conf(self, conf: ConfState) -> None:
        if conf.voters_outgoing:
            conf = ConfState(conf.voters, conf.learners, (), conf.priorities)
        super()._append_conf(conf)


class CountsLearnerVotes(RaftCore):
    """Thesis 4.2.1 broken: a candidate asks learners for votes and counts them
    as if they were voters."""

    def _request_votes(self, pre: bool, transfer: bool) -> None:
        super()._request_votes(pre, transfer)
        if (self.role is Role.PRE_CANDIDATE) != pre:
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for peer in self.learners:
            if pre:
                self._send(
                    PreVoteRequest(self.group, self.term + 1, self.id, peer, last_index, last_term)
                )
            else:
                self._send(
                    VoteRequest(
                        self.group, self.term, self.id, peer, last_index, last_term, transfer
                    )
                )

    def _handle_vote_response(self, src: NodeId, granted: bool) -> None:
        if src in self.learners:
            self.votes.setdefault(src, granted)
            electorate = (*self.voters, *self.learners)
            if quorum.majority_vote(electorate, self.votes) is quorum.VoteResult.WON:
                if self.role is Role.PRE_CANDIDATE:
                    self._become_candidate()
                    self._request_votes(pre=False, transfer=False)
                else:
                    self._become_leader()
            return
        super()._handle_vote_response(src, granted)


@dataclass(frozen=True, slots=True)
class Mutant:
    """A planted bug: its name, the core class, and what it breaks."""

    name: str
    factory: Callable[..., Any]
    breaks: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant("votes-skip-log-check", VotesSkipLogCheck, "5.4.1 up-to-date check on real votes"),
    Mutant("leader-counts-undurable", LeaderCountsUndurable, "10.2.1 leader counts only durable"),
    Mutant("vote-before-durable", VoteBeforeDurable, "Ready step 3: votes sent after persist"),
    Mutant("commits-old-terms", CommitsOldTermsByCounting, "5.4.2 / Figure 8"),
    Mutant("truncates-on-stale-append", TruncatesOnStaleAppend, "5.3 truncate only on conflict"),
    Mutant("counts-stale-votes", CountsStaleVotes, "5.1 drop messages of older terms"),
    Mutant("heartbeat-commit-unclamped", HeartbeatCommitUnclamped, "5.3 commit only matched"),
    Mutant("forgets-vote", ForgetsVote, "Ready step 2: vote made durable"),
    Mutant("accepts-stale-leader", AcceptsStaleLeader, "5.1 reject older-term appends"),
    Mutant("keeps-conflicting-entries", KeepsConflictingEntries, "5.3 delete conflicting suffix"),
    Mutant("pre-vote-elects", PreVoteResponseChangesTerm, "9.6 pre-vote is not a vote"),
    Mutant("restores-stale-snapshot", RestoresStaleSnapshot, "5.1 restore only past commit"),
    Mutant("appends-past-compaction", AppendsPastCompaction, "5.1 send a snapshot instead"),
    Mutant("reads-without-confirmation", ReadsWithoutConfirmation, "6.4 confirm leadership"),
    Mutant("reads-before-term-commit", ReadsBeforeTermCommit, "6.4 commit in term first"),
    Mutant("lease-outlives-election", LeaseOutlivesElection, "6.4 lease < election timeout"),
    Mutant("conf-when-committed", ConfWhenCommitted, "4.1 a configuration rules once appended"),
    Mutant("skips-joint-consensus", SkipsJointConsensus, "4.3 joint consensus"),
    Mutant("counts-learner-votes", CountsLearnerVotes, "4.2.1 learners do not vote"),
)
"""Every planted bug the simulator must catch."""


def by_name(name: str) -> Mutant:
    """The mutant called ``name``; raises KeyError listing the known names."""
    for m in MUTANTS:
        if m.name == name:
            return m
    raise KeyError(f"unknown mutant {name!r}; known: {', '.join(m.name for m in MUTANTS)}")
