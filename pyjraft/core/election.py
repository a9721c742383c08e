"""Elections (paper 5.2, thesis 9.6): a part of `pyjraft.core.raft.RaftCore`.

A follower whose election timer expires first polls with pre-votes at
term+1 without changing its own term, and only with a quorum of pre-votes
bumps its term and asks for real votes. With check-quorum, followers that
heard from a leader within the (unrandomized) election timeout refuse both,
and a leader that has not heard from a quorum within that timeout steps
down (`pyjraft.core.replication`). A vote is granted once per term, only to
a candidate whose log is at least as up to date (paper 5.4.1); it is made
durable before it is sent (the `Ready` contract).
"""

from __future__ import annotations

from pyjraft.core import quorum, validate
from pyjraft.core.core_base import CoreBase
from pyjraft.core.messages import PreVoteRequest, PreVoteResponse, VoteRequest, VoteResponse
from pyjraft.core.types import NONE, NodeId, Role


class Elections(CoreBase):
    """The election rules of a raft core."""

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable and self.election_elapsed >= self.randomized_election_ticks:
            if self._may_campaign():  # priority election: see pyjraft.core.membership
                self.election_elapsed = 0
                self._hup(transfer=False)
            else:
                # Not campaigning yet: keep counting from the leader's last contact
                # (our check-quorum lease must end), and look again a timeout later.
                self.randomized_election_ticks = self.election_elapsed + (
                    self.config.election_ticks + self._rng.randrange(self.config.election_ticks)
                )

    def _in_lease(self) -> bool:
        return (
            self.config.check_quorum
            and self.leader != NONE
            and self.election_elapsed < self.config.election_ticks
        )

    def _hup(self, transfer: bool) -> None:
        if not self.promotable or self.term >= validate.MAX_TERM:
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
            self._request_votes(pre=True, transfer=False)
        else:
            self._become_candidate()
            self._request_votes(pre=False, transfer=transfer)

    def _request_votes(self, pre: bool, transfer: bool) -> None:
        # Our own vote first: a single-member group wins without any message,
        # in which case this round is over.
        role, term = self.role, self.term
        self._handle_vote_response(self.id, True)
        if (self.role, self.term) != (role, term):
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for peer in self._all_voters():
            if peer == self.id:
                continue
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

    def _handle_vote_request(self, m: VoteRequest | PreVoteRequest) -> None:
        pre = isinstance(m, PreVoteRequest)
        can_vote = (
            self.vote == m.src
            or (self.vote == NONE and self.leader == NONE)
            or (pre and m.term > self.term)
        )
        grant = can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term)
        if pre:
            # A granted pre-vote echoes the requested term; a refusal carries ours.
            term = m.term if grant else self.term
            self._send(PreVoteResponse(self.group, term, self.id, m.src, grant))
            return
        if grant:
            self.vote = m.src
            self.election_elapsed = 0
        self._send(VoteResponse(self.group, self.term, self.id, m.src, grant))

    def _handle_vote_response(self, src: NodeId, granted: bool) -> None:
        if src not in self.voters and src not in self.outgoing:
            return
        self.votes.setdefault(src, granted)
        result = self._vote_result(self.votes)
        if result is quorum.VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._become_candidate()
                self._request_votes(pre=False, transfer=False)
            else:
                self._become_leader()
        elif result is quorum.VoteResult.LOST:
            self._become_follower(self.term, NONE)
