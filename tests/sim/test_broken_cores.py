"""The checker can fail: deliberately broken cores are caught by the simulator."""

from __future__ import annotations

from pyjraft.core import quorum
from pyjraft.core.messages import PreVoteRequest, PreVoteResponse, VoteRequest, VoteResponse
from pyjraft.core.raft import RaftCore
from pyjraft.core.types import NONE
from pyjraft.testing.sim import SimOptions, SimResult, run_seed


class CommitsOldTermsByCounting(RaftCore):
    """Breaks paper 5.4.2: commits any index a majority holds, whatever its term."""

    def _maybe_commit(self) -> bool:
        me = self.progress.get(self.id)
        if me is not None:
            me.match = max(me.match, self._stable_index)
        index = quorum.majority_index(self.voters, {p: pr.match for p, pr in self.progress.items()})
        if index > self.log.committed:
            self.log.commit_to(index)
            return True
        return False


class VotesForStaleLogs(RaftCore):
    """Breaks paper 5.4.1: grants (pre-)votes without comparing logs."""

    def _handle_vote_request(self, m: VoteRequest | PreVoteRequest) -> None:
        pre = isinstance(m, PreVoteRequest)
        grant = (
            self.vote == m.src
            or (self.vote == NONE and self.leader == NONE)
            or (pre and m.term > self.term)
        )
        if pre:
            term = m.term if grant else self.term
            self._send(PreVoteResponse(self.group, term, self.id, m.src, grant))
            return
        if grant:
            self.vote = m.src
            self.election_elapsed = 0
        self._send(VoteResponse(self.group, self.term, self.id, m.src, grant))


def _first_violation(options: SimOptions, seeds: range) -> tuple[int, SimResult] | None:
    for seed in seeds:
        res = run_seed(seed, options)
        if res.violation is not None:
            return seed, res
    return None


def test_committing_previous_term_entries_by_counting_is_caught() -> None:
    # Figure 8 needs a leader to die between re-replicating an old entry and its
    # no-op reaching a majority: the churn regime makes that schedule common.
    found = _first_violation(
        SimOptions(nodes=5, regime="churn", core_factory=CommitsOldTermsByCounting), range(100)
    )
    assert found is not None, "the simulator missed a core that commits old-term entries"
    seed, res = found
    assert res.violation is not None
    assert res.violation.prop in ("leader completeness", "state machine safety"), (
        f"seed {seed}: {res.violation}"
    )


def test_voting_without_the_up_to_date_check_is_caught() -> None:
    found = _first_violation(SimOptions(nodes=3, core_factory=VotesForStaleLogs), range(50))
    assert found is not None, "the simulator missed a core that votes for stale logs"
    seed, res = found
    assert res.violation is not None
    assert res.violation.prop in ("leader completeness", "state machine safety", "log matching"), (
        f"seed {seed}: {res.violation}"
    )


def test_the_correct_core_passes_the_same_schedules() -> None:
    for seed in range(40):
        res = run_seed(seed, SimOptions(nodes=5, regime="churn"))
        assert res.violation is None, f"seed {seed}: {res.violation}"
