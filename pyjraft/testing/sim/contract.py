"""The `Ready` contract (`pyjraft.core.ready`), checked directly.

The safety checker (`pyjraft.testing.sim.checker`) sees a broken durability
rule only through its consequences, which need a crash in the wrong window
to show. These checks look at the promise itself, at the moment it is made,
against what is durable on the simulated disks at that moment:

- a granted vote is sent only once the voter's term and vote are durable;
- a vote request is sent only once the candidate's term and self-vote are;
- a successful append acknowledgement for index i is sent only once the
  follower's durable log holds, at i, the entry the leader has there (or
  the follower has durably moved to a later term: see `_check_ack`), and
  the follower never again overwrites what it acknowledged in that term (the
  leader of a term only ever agrees with its own acknowledged prefix);
- a leader's appends, heartbeats and timeout-nows carry a durable term;
- an index is committed (on any node) only once its entry is durable on a
  majority of the voters;
- entries are applied only once durable on the applying node (except on a
  leader whose writes are pipelined: it applies what a majority made durable).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pyjraft.core import quorum
from pyjraft.core.log_reader import LogUnavailableError
from pyjraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from pyjraft.core.raft import RaftCore
from pyjraft.core.types import ConfState, Entry, NodeId, Role
from pyjraft.storage.memory import MemoryLogStorage
from pyjraft.testing.sim.checker import SafetyViolation, Violation
from pyjraft.testing.sim.disk import SimDisk

_LEADER_MESSAGES = (AppendEntries, Heartbeat, TimeoutNow)


def _term(log: MemoryLogStorage, index: int) -> int | None:
    try:
        return log.term(index)
    except LogUnavailableError:
        return None


class ContractChecker:
    """Checks each promise against the disks; see the module docstring."""

    def __init__(
        self, disks: Mapping[NodeId, SimDisk], core_of: Callable[[NodeId], RaftCore | None]
    ) -> None:
        self._disks = disks
        self._core_of = core_of
        # node -> (term, highest index it acknowledged in that term)
        self._acked: dict[NodeId, tuple[int, int]] = {}

    def _fail(self, node: NodeId, detail: str) -> None:
        raise SafetyViolation(Violation("ready contract", node, detail))

    def on_send(self, m: Message) -> None:
        """``m`` is being handed to the network by its sender's runtime."""
        if isinstance(m, VoteResponse):
            if m.granted:
                # A durable later term also keeps the voter from voting again in m.term.
                hs = self._disks[m.src].meta.load()
                if hs.term <= m.term and (hs.term, hs.vote) != (m.term, m.dst):
                    self._fail(
                        m.src,
                        f"vote for {m.dst} in term {m.term} sent while the durable "
                        f"term/vote is {hs.term}/{hs.vote or '-'}",
                    )
        elif isinstance(m, VoteRequest):
            hs = self._disks[m.src].meta.load()
            if hs.term <= m.term and (hs.term, hs.vote) != (m.term, m.src):
                self._fail(
                    m.src,
                    f"vote request of term {m.term} sent while the durable term/vote is "
                    f"{hs.term}/{hs.vote or '-'}",
                )
        elif isinstance(m, AppendEntriesResponse):
            if m.success:
                self._check_ack(m)
        elif isinstance(m, _LEADER_MESSAGES):
            hs = self._disks[m.src].meta.load()
            if hs.term < m.term:
                self._fail(
                    m.src,
                    f"{type(m).__name__} of term {m.term} sent while the durable term is {hs.term}",
                )

    def _check_ack(self, m: AppendEntriesResponse) -> None:
        term, index = self._acked.get(m.src, (0, 0))
        if m.term > term or (m.term == term and m.index > index):
            self._acked[m.src] = (m.term, m.index)
        if self._disks[m.src].meta.load().term > m.term:
            # Made in term m.term, sent once the follower had durably moved on (and
            # maybe overwritten that entry for a newer leader): harmless, since a
            # majority for the old leader would include a voter of the newer one,
            # whose vote implies it holds the entry.
            return
        leader = self._core_of(m.dst)
        if leader is None or leader.role is not Role.LEADER or leader.term != m.term:
            return  # whom it promises to is gone: nothing to compare with
        want = leader.log.term_or_none(m.index)
        if want is None:
            return
        disk = self._disks[m.src]
        if m.index == 0 or disk.holds(m.index, want):
            return
        have = _term(disk.log, m.index)
        self._fail(
            m.src,
            f"acknowledged index {m.index} to the leader of term {m.term} (which has "
            f"term {want} there) while its durable log has "
            f"{'nothing' if have is None else f'term {have}'} there",
        )

    def on_write(self, nid: NodeId, core: RaftCore, entries: list[Entry]) -> None:
        """``nid``'s core hands out ``entries`` to be written (maybe overwriting)."""
        if not entries:
            return
        term, index = self._acked.get(nid, (0, 0))
        first = entries[0].index
        if term == core.term and first <= index:
            self._fail(
                nid,
                f"overwrites from index {first} in term {term}, after acknowledging up to "
                f"{index} to that term's leader",
            )

    def on_commit(
        self, nid: NodeId, core: RaftCore, index: int, conf_before: ConfState | None = None
    ) -> None:
        """``core`` on ``nid`` has just moved its commit index to ``index``. The
        configuration may have changed in the same step (a commit that finishes
        a change stage appends the next): the one before counts too."""
        term = core.log.term_or_none(index)
        if term is None:
            return
        durable = {peer: disk.holds(index, term) for peer, disk in self._disks.items()}
        won = quorum.VoteResult.WON
        if conf_before is not None and (
            quorum.joint_vote(conf_before.voters, conf_before.voters_outgoing, durable) is won
        ):
            return
        if quorum.joint_vote(core.voters, core.outgoing, durable) is not won:
            holders = sorted(p for p, ok in durable.items() if ok)
            self._fail(
                nid,
                f"committed index {index} (term {term}) while it is durable only on "
                f"{holders or 'no node'} of voters {sorted(core.voters)} "
                f"(outgoing {sorted(core.outgoing)})",
            )

    def on_apply(self, nid: NodeId, entries: list[Entry]) -> None:
        """``nid`` applies ``entries`` (not as a pipelined leader)."""
        disk = self._disks[nid]
        for e in (entries[0], entries[-1]):
            if not disk.holds(e.index, e.term):
                self._fail(nid, f"applied entry {e.index} (term {e.term}) before it was durable")
