"""Log replication (paper 5.3) and snapshots to send (thesis chapter 5): a
part of `pyjraft.core.raft.RaftCore`.

Followers take a leader's entries when their log matches at the entry before
them, truncating only at a real conflict, and learn the commit index from
the next append or heartbeat (never past what they match). The leader keeps
a `Progress` per follower (`pyjraft.core.progress`: probe, replicate,
snapshot, with an in-flight window), appends a no-op of its term when it
wins, commits only an index of its own term replicated on a quorum (paper
5.4.2, Figure 8), and counts itself only for entries the runtime made
durable. A follower that needs entries the leader compacted is sent the
snapshot instead (`Ready.snapshots_to_send`). With check-quorum, a leader
that has not heard from a quorum within an election timeout steps down.
"""

from __future__ import annotations

from pyjraft.core import quorum
from pyjraft.core.core_base import CoreBase
from pyjraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
)
from pyjraft.core.progress import Progress, ProgressState
from pyjraft.core.raft_log import LogSafetyError
from pyjraft.core.read_only import context_round, round_context
from pyjraft.core.types import NONE, NodeId, Role, entries_size


class Replication(CoreBase):
    """The replication rules of a raft core, follower and leader side."""

    def _on_leader_contact(self, leader: NodeId) -> None:
        if self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._become_follower(self.term, leader)
        self.leader = leader
        self.election_elapsed = 0
        self._leader_heard()

    def _handle_append(self, m: AppendEntries) -> None:
        log = self.log
        if m.prev_log_index < log.committed:
            self._send(
                AppendEntriesResponse(self.group, self.term, self.id, m.src, True, log.committed)
            )
            return
        last_new = log.maybe_append(m.prev_log_index, m.prev_log_term, m.commit, m.entries)
        if last_new is not None:
            self._confs_appended(list(m.entries))
        # A conflict may have replaced entries already durable here: they no longer count.
        self._stable_index = min(self._stable_index, log.in_progress)
        if last_new is not None:
            self._send(AppendEntriesResponse(self.group, self.term, self.id, m.src, True, last_new))
            return
        hint_index, hint_term = log.find_conflict_by_term(
            min(m.prev_log_index, log.last_index()), m.prev_log_term
        )
        self._send(
            AppendEntriesResponse(
                self.group,
                self.term,
                self.id,
                m.src,
                False,
                m.prev_log_index,
                hint_index,
                hint_term,
            )
        )

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        # The leader never sends a commit past what we match, so this is safe.
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(HeartbeatResponse(self.group, self.term, self.id, m.src, m.context))

    def _tick_leader(self, n: int = 1) -> None:
        self.heartbeat_elapsed += n
        self.election_elapsed += n
        self.read_only.trim(self.ticks, self._lease_span())
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NONE)
                return
            # Once per election timeout: hand over to a better-placed voter
            # (priority election), judged on who answered in the window now over.
            self._hand_over_to_priority()
            if self.config.check_quorum:
                for peer, pr in self.progress.items():
                    if peer != self.id:
                        pr.recent_active = False
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()
        self._tick_membership()

    def _quorum_active(self) -> bool:
        active = {p: pr.recent_active or p == self.id for p, pr in self.progress.items()}
        return self._vote_result(active) is quorum.VoteResult.WON

    def _broadcast_append(self) -> None:
        for peer in self.progress:
            if peer != self.id:
                self._send_append(peer)

    def _broadcast_heartbeat(self) -> None:
        # Every broadcast is a read round (`pyjraft.core.read_only`): its number
        # rides in the context and comes back in the responses.
        ctx = round_context(self.read_only.new_round(self.ticks))
        committed = self.log.committed
        for peer, pr in self.progress.items():
            if peer != self.id:
                self._send(
                    Heartbeat(self.group, self.term, self.id, peer, min(pr.match, committed), ctx)
                )

    def _send_append(self, peer: NodeId, send_if_empty: bool = True) -> bool:
        """Send the next AppendEntries to ``peer`` if its flow control allows."""
        pr = self.progress.get(peer)
        if pr is None or pr.is_paused():
            return False  # (a peer the configuration just dropped has no progress)
        log = self.log
        prev = pr.next - 1
        if pr.next < log.first_index():
            self._send_snapshot(peer, pr)
            return False
        prev_term = log.term(prev)
        last = log.last_index()
        cfg = self.config
        if pr.next <= last:
            hi = min(last + 1, pr.next + cfg.max_entries_per_msg)
            entries = log.entries(pr.next, hi, cfg.max_bytes_per_msg)
        else:
            entries = []
        if not entries and not send_if_empty:
            return False
        self._send(
            AppendEntries(
                self.group, self.term, self.id, peer, prev, prev_term, tuple(entries), log.committed
            )
        )
        if entries and pr.state is ProgressState.REPLICATE:
            pr.next = entries[-1].index + 1
            pr.inflights.add(entries[-1].index, entries_size(entries))
        else:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, peer: NodeId, pr: Progress) -> None:
        snap = self._snapshot
        if snap is None or snap.index < self.log.first_index() - 1:
            # Compaction always follows a snapshot the runtime reported: this is a
            # local bug, not anything a peer did.
            raise LogSafetyError(
                f"entries before {self.log.first_index()} for {peer} are compacted, and no "
                f"snapshot covers them (newest: {snap})"
            )
        pr.become_snapshot(snap.index)
        self._snapshot_sends.append((peer, snap))

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        if m.index > self.log.last_index():
            self._reject(m, f"answers for index {m.index}, past our last {self.log.last_index()}")
            return
        pr.recent_active = True
        if (
            not m.success
            and pr.state is ProgressState.PROBE
            and m.index == pr.next - 1
            and m.hint_index < pr.match
        ):
            # It rejects our probe just after what it acknowledged in this term, and
            # its own log ends below that: its durable state went backwards (a wiped
            # or restored disk). Probing above its log would never end: probe from
            # where its log really ends.
            self._reject(
                m,
                f"its log went backwards: it acknowledged up to {pr.match} in term "
                f"{self.term}, and now ends at or below {m.hint_index} (data lost on its disk?)",
            )
            pr.match = m.hint_index
            pr.become_probe()
            pr.next = m.hint_index + 1
            self._send_append(m.src)
            return
        if not m.success:
            next_probe = m.hint_index
            if m.hint_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decrease_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.src)
            return
        probe_matched = pr.state is ProgressState.PROBE and m.index == pr.match
        if not pr.maybe_update(m.index) and not probe_matched:
            # A duplicate or reordered acknowledgement; it still frees the window.
            if pr.state is ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            if pr.match < pr.pending_snapshot:
                return  # an older acknowledgement; the install is still going on
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        self._maybe_commit()
        if self.role is not Role.LEADER:
            return  # the commit finished a change that removed us
        self._maybe_send_timeout_now()
        # Stream whatever the window now admits.
        while self._send_append(m.src, send_if_empty=False):
            pass

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        rnd = context_round(m.context)
        if rnd is not None and (m.src in self.voters or m.src in self.outgoing):
            self.read_only.ack(m.src, rnd)
            if self.read_only.waiting:
                self._read_states.extend(self.read_only.release(self.voters, self.outgoing))
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first()
        if pr.match < self.log.last_index():
            self._send_append(m.src)

    def _maybe_commit(self) -> bool:
        self_pr = self.progress.get(self.id)
        if self_pr is not None:
            self_pr.match = max(self_pr.match, self._stable_index)
        match = {p: pr.match for p, pr in self.progress.items()}
        index = self._quorum_index(match)
        log = self.log
        # Paper 5.4.2: only an entry of the current term commits by counting replicas.
        if index > log.committed and log.term_or_none(index) == self.term:
            log.commit_to(index)
            self._commit_advanced()
            return True
        return False

    def _lease_span(self) -> int:
        """How long a confirmed round keeps the lease (see `pyjraft.core.read_only`)."""
        return self.config.lease_ticks
