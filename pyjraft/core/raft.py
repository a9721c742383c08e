"""The Raft state machine of one group member: pure, deterministic, no IO.

Theory of operation
-------------------
`RaftCore` is driven by four inputs and produces one output:

- `tick()` advances logical time by one tick (the runtime's timer calls it);
- `step(message)` delivers a message from a peer;
- `propose(data)` / `propose_batch(datas)` appends user entries (leader only);
- `campaign()` starts an election now;
- `read_index(ctx, lease=False)` asks for a linearizable read (leader only;
  see `pyjraft.core.read_only`): ``Ready.read_states`` says when it is safe;
- `restore(leader, term, snapshot)` offers a snapshot received from the
  leader; `report_snapshot(peer, ok)` and `set_snapshot(snapshot)` tell a
  leader how a transfer ended and which snapshot is its newest;
- `ready()` returns a `Ready` (see `pyjraft.core.ready` for the durability
  contract) and `advance(ready)` reports it done.

Rules that affect every message live in `step`: a message from a higher term
makes us a follower of that term (except pre-votes, which never change terms,
and vote requests during a leader lease, which are ignored); a message from a
lower term is dropped, or answered so the stale sender learns the new term.
Then the message goes to the handler of our role.

The rules live in parts, one module each: `pyjraft.core.election` (terms,
votes and pre-votes, paper 5.2 and thesis 9.6), `pyjraft.core.replication`
(appends, heartbeats, commit, snapshots to send: paper 5.3 and 5.4, thesis
chapter 5), over the fields `pyjraft.core.core_base` declares. This module
holds the inputs, the roles and the `Ready`, and the follower's side of
snapshots: it restores an offered snapshot only if it is newer than its
commit index and its log does not already hold the snapshot's last entry
(then it just commits up to it); either way it answers with the index it
now matches.

Bad input (thesis 3.2's "no Byzantine faults" is a promise peers cannot
always keep: a buggy or garbled peer, a forged packet on an unauthenticated
port): a message from a non-member or from ourselves, one no correct peer
could build (`pyjraft.core.validate`), a second leader in a term, a
timeout-now from anyone but the current leader, an acknowledgement beyond
our last index -- each is dropped and reported in `Ready.bad_messages`,
never raised: only the node's own
storage or state machine may stop it. A follower whose log went backwards
(it rejects below what it acknowledged in this term: its disk lost data) is
reported and re-probed from its own hint, rather than probed forever above
its log.

Nothing here reads a clock or a global random source: time is ticks, and the
election jitter comes from the injected `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from itertools import repeat

from pyjraft.core import conf as confs
from pyjraft.core import validate
from pyjraft.core.config import CoreConfig
from pyjraft.core.election import Elections
from pyjraft.core.errors import NotLeaderError, ProposalDroppedError
from pyjraft.core.log_reader import LogReader
from pyjraft.core.membership import Membership
from pyjraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    Message,
    PreVoteRequest,
    PreVoteResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from pyjraft.core.progress import Progress, ProgressState
from pyjraft.core.raft_log import RaftLog
from pyjraft.core.read_only import ReadOnly, ReadState
from pyjraft.core.ready import Ready
from pyjraft.core.replication import Replication
from pyjraft.core.types import (
    NONE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    NodeId,
    Role,
    SnapshotMeta,
    SoftState,
)
from pyjraft.core.validate import BadMessage

_new_entry = partial(tuple.__new__, Entry)

# Entry types as plain ints (see `Entry`).
_NORMAL = int(EntryType.NORMAL)
_NOOP = int(EntryType.NOOP)
_VOTE_REQUESTS = (VoteRequest, PreVoteRequest)


class RaftCore(Elections, Replication, Membership):
    """One member of one raft group. See the module docstring."""

    def __init__(
        self,
        config: CoreConfig,
        log: LogReader,
        hard_state: HardState,
        rng: random.Random,
        *,
        snapshot: SnapshotMeta | None = None,
        applied: int = 0,
    ) -> None:
        """``snapshot``: the newest local snapshot, if any (its configuration
        replaces the configured one). ``applied``: what the state machine holds
        already (the snapshot's index, or more for a machine that persists its
        own state); those entries are committed and never handed out again."""
        self.config = config
        self.id = config.id
        self.group = config.group
        self._rng = rng
        self._snapshot = snapshot
        self.log = RaftLog(log, max(applied, snapshot.index if snapshot else 0))
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.leader: NodeId = NONE
        self.role = Role.FOLLOWER
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = config.election_ticks
        self._eager: list[Message] = []
        self._msgs: list[Message] = []
        self._bad: list[BadMessage] = []
        self._snapshot_sends: list[tuple[NodeId, SnapshotMeta]] = []
        self._restored: SnapshotMeta | None = None  # handed out in the next Ready
        self.ticks = 0  # ticks since start, in any role: the lease's clock
        self.read_only = ReadOnly(self.id)
        self._read_states: list[ReadState] = []
        # Reads asked before this leader committed an entry of its term.
        self._reads_waiting: list[tuple[bytes, bool]] = []
        self._persisted_hard_state = hard_state
        self._durable_term = hard_state.term  # the term the runtime made durable
        self._last_soft = SoftState(NONE, Role.FOLLOWER, self.term)
        # Highest index the runtime reported durable; the leader counts itself to here.
        self._stable_index = log.last_index()
        # The configuration: the snapshot's, else the bootstrap one, then the
        # configuration entries of the log (`pyjraft.core.membership`).
        if snapshot is not None and snapshot.conf.voters:
            base = snapshot.conf
        else:
            base = ConfState(config.voters, config.learners)
        self._init_membership(base)
        self._become_follower(self.term, NONE)

    # -- properties ----------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        """The current term and vote."""
        return HardState(self.term, self.vote)

    @property
    def soft_state(self) -> SoftState:
        """The current leader, role and term."""
        return SoftState(self.leader, self.role, self.term)

    @property
    def commit_index(self) -> int:
        """The highest index known committed."""
        return self.log.committed

    # -- inputs --------------------------------------------------------------

    def tick(self, n: int = 1) -> None:
        """Advance logical time by ``n`` ticks. A leader given several at once (the
        runtime catching up after its loop stalled) checks its quorum and sends
        heartbeats once, but its lease sees all of them: a lease read must never
        be served on a clock that fell behind. Anyone else counts them one by one."""
        self.ticks += n
        if self.role is Role.LEADER:
            self._tick_leader(n)
            return
        for _ in range(n):
            self._tick_election()
            if self.promotable and self.leader == self.id:
                return  # won an election: the rest of the ticks were its own

    def campaign(self) -> None:
        """Start an election now (with a pre-vote round when enabled)."""
        if self.role is not Role.LEADER:
            self._hup(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a normal entry; returns its index.

        Raises `NotLeaderError` (carrying the known leader) on a non-leader.
        """
        return self.propose_batch((data,))

    def propose_batch(self, datas: Sequence[bytes]) -> int:
        """Append several normal entries in one step; returns the last one's index.

        One batch becomes one durable write and one AppendEntries per follower.
        """
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if self._transfer is not None:
            raise ProposalDroppedError("leadership transfer in progress")
        term = self.term
        start = self.log.last_index() + 1
        normal = _NORMAL
        # tuple.__new__ through map builds the entries in C, without the
        # NamedTuple constructor's Python-level call per entry.
        stop = start + len(datas)
        fields = zip(repeat(term), range(start, stop), repeat(normal), datas, strict=False)
        entries = list(map(_new_entry, fields))
        last = self.log.append(entries)
        self._broadcast_append()
        return last

    def step(self, m: Message, from_node: bool = True) -> None:
        """Deliver a message from a peer. A message no correct peer could send is
        dropped and reported in `Ready.bad_messages`; this never raises for
        what a peer sends.

        ``from_node``: whether the transport authenticated the sender as a node
        of the cluster (a TLS node certificate naming ``m.src``; in plaintext
        mode the operator vouches for every peer). Only such a sender outside
        our configuration may be taken as a leader we have not learned of yet.
        """
        if m.group != self.group or m.dst != self.id:
            return
        if m.src not in self._members or m.src == self.id:
            # A leader's messages from outside our configuration are the leader of a
            # configuration we have not learned yet (we are joining, or lagged behind
            # a change that brought it in), if they come from a node with a newer
            # term, or with ours while we know no other leader for it; anything else
            # from a stranger is refused (forged or misrouted, a removed member).
            newer_leader = (
                from_node
                and type(m) in (AppendEntries, Heartbeat)
                and (m.term > self.term or (m.term == self.term and self.leader in (NONE, m.src)))
            )
            # A node with no configuration yet (just added) votes as Raft says, on
            # terms and logs alone: the group may need its vote to finish its change.
            joining_vote = from_node and not self._members and type(m) in _VOTE_REQUESTS
            if not (newer_leader or joining_vote) or m.src == self.id:
                why = "claims to come from this node" if m.src == self.id else "from a non-member"
                if (
                    from_node
                    and m.src != self.id
                    and type(m) in (AppendEntries, Heartbeat)
                    and m.term < self.term
                ):
                    # The leader of an older term, of a configuration we do not have
                    # (we may be stuck at a higher term in an old one): our term makes
                    # it step down, so that a leader of a newer term can reach us.
                    self._send(
                        AppendEntriesResponse(self.group, self.term, self.id, m.src, False, 0)
                    )
                self._reject(m, why)
                return
        why_not = validate.problem(m, self.term)
        if why_not is not None:
            self._reject(m, why_not)
            return
        if (
            type(m) in _VOTE_REQUESTS
            and self._members
            and m.src not in self.voters
            and m.src not in self.outgoing
        ):
            # Before the term rules: a learner's or a removed voter's campaign must
            # not move our term. (A node with no configuration yet, just added,
            # votes as Raft says: on terms and logs alone.)
            self._reject(m, "a vote request from a non-voter")
            return
        if type(m) is TimeoutNow and (m.term != self.term or m.src != self.leader):
            # Only the leader we follow, in our term, may hand leadership over.
            self._reject(m, f"timeout-now, but the leader of term {self.term} is {self.leader!r}")
            return
        if m.term > self.term:
            if isinstance(m, (VoteRequest, PreVoteRequest)):
                transfer = isinstance(m, VoteRequest) and m.transfer
                if not transfer and self._in_lease():
                    # We heard from a live leader within the election timeout: the
                    # requester is partitioned or slow, so it must not depose it.
                    return
            if isinstance(m, PreVoteRequest):
                pass  # a pre-vote never changes our term
            elif isinstance(m, PreVoteResponse) and m.granted:
                pass  # granted pre-votes echo the term we would campaign in
            elif isinstance(m, (AppendEntries, Heartbeat)):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if isinstance(m, (AppendEntries, Heartbeat)):
                # A stale leader, probably just back from a partition: tell it our
                # term so it steps down (without pre-vote/check-quorum it would have
                # learned it from our vote requests).
                self._send(AppendEntriesResponse(self.group, self.term, self.id, m.src, False, 0))
            elif isinstance(m, PreVoteRequest):
                self._send(PreVoteResponse(self.group, self.term, self.id, m.src, False))
            elif isinstance(m, VoteRequest):
                # A candidate of an older term learns ours (the paper's RequestVote
                # reply): left unanswered, it may stay behind for good while it is
                # the only one whose log can win.
                self._send(VoteResponse(self.group, self.term, self.id, m.src, False))
            return

        match m:
            case VoteRequest() | PreVoteRequest():
                self._handle_vote_request(m)
            case AppendEntries() | Heartbeat():
                if self.role is Role.LEADER or self.leader not in (NONE, m.src):
                    leader = self.id if self.role is Role.LEADER else self.leader
                    self._reject(m, f"a second leader in term {self.term}, after {leader}")
                    return
                self._on_leader_contact(m.src)
                if type(m) is AppendEntries:
                    self._handle_append(m)
                else:
                    self._handle_heartbeat(m)  # type: ignore[arg-type]
            case AppendEntriesResponse():
                if self.role is Role.LEADER:
                    self._handle_append_response(m)
            case HeartbeatResponse():
                if self.role is Role.LEADER:
                    self._handle_heartbeat_response(m)
            case VoteResponse():
                if self.role is Role.CANDIDATE:
                    self._handle_vote_response(m.src, m.granted)
            case PreVoteResponse():
                if self.role is Role.PRE_CANDIDATE and (m.term == self.term + 1 or not m.granted):
                    self._handle_vote_response(m.src, m.granted)
            case TimeoutNow():
                if self.role is not Role.LEADER and self.promotable:
                    self._hup(transfer=True)

    def read_index(self, ctx: bytes, lease: bool = False) -> None:
        """Ask for a linearizable read; ``ctx`` identifies it in `Ready.read_states`.

        Safe reads confirm leadership with a heartbeat round (all reads asked
        before one round starts share it); with ``lease`` and check-quorum, a
        leader within its lease answers at once and falls back to a round
        otherwise. A new leader answers only once an entry of its term is
        committed. Raises `NotLeaderError` on a non-leader. Reads not yet
        answered when leadership is lost are dropped: the runtime fails them.
        """
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if not self._committed_in_term():
            self._reads_waiting.append((ctx, lease))
            return
        self._start_reads([(ctx, lease)])

    def lease_valid(self) -> bool:
        """Whether this leader may serve lease reads now (`pyjraft.core.read_only`)."""
        return (
            self.role is Role.LEADER
            and self.config.check_quorum
            and self._committed_in_term()
            and self._lease_off_term != self.term
            and self.ticks
            < self.read_only.lease_until(self.voters, self._lease_span(), self.outgoing)
        )

    def _committed_in_term(self) -> bool:
        return self.log.term_or_none(self.log.committed) == self.term

    def _start_reads(self, reads: list[tuple[bytes, bool]]) -> None:
        index = self.log.committed
        lease = self.lease_valid()
        waiting = False
        for ctx, wants_lease in reads:
            if self._all_voters() == (self.id,) or (wants_lease and lease):
                self._read_states.append(ReadState(index, ctx))
            else:
                self.read_only.add_read(index, ctx)
                waiting = True
        if waiting:
            self._broadcast_heartbeat()

    def _commit_advanced(self) -> None:
        self._conf_committed()
        if self._reads_waiting and self._committed_in_term():
            reads, self._reads_waiting = self._reads_waiting, []
            self._start_reads(reads)

    def restore(self, leader: NodeId, term: int, snap: SnapshotMeta) -> bool:
        """Offer ``snap``, received from ``leader`` of ``term``, to this follower.

        Returns True if the follower restores it: the next `Ready` carries it
        (``Ready.snapshot``) for the runtime to install. False if it is stale
        (another term or leader, or not past our commit index) or our log
        already holds its last entry (then we commit up to it instead); the
        runtime then discards what it received. Either way the leader is told
        what we now match, once that is durable.
        """
        if self.role is Role.LEADER or term != self.term or leader != self.leader:
            return False
        log = self.log
        if snap.index <= log.committed:
            self._send(
                AppendEntriesResponse(self.group, term, self.id, leader, True, log.committed)
            )
            return False
        if log.match_term(snap.index, snap.term):
            # Everything up to it is here already: fast-forward the commit index.
            log.commit_to(snap.index)
            self._send(AppendEntriesResponse(self.group, term, self.id, leader, True, snap.index))
            return False
        log.restore(snap)
        self._stable_index = snap.index
        self._restored = snap
        if snap.conf.voters:
            self._confs_restored(snap.conf)
        self._send(AppendEntriesResponse(self.group, term, self.id, leader, True, snap.index))
        return True

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        """The transfer of a snapshot to ``peer`` ended (``ok``: the follower
        installed it). Either way the leader goes back to probing it; after a
        failure the next probe finds the gap again and asks for the newest
        snapshot."""
        pr = self.progress.get(peer)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()

    def set_snapshot(self, snap: SnapshotMeta) -> None:
        """The runtime took (or installed) ``snap``: the newest to send followers."""
        if self._snapshot is None or snap.index > self._snapshot.index:
            self._snapshot = snap

    @property
    def snapshot(self) -> SnapshotMeta | None:
        """The newest snapshot this node holds, as far as the core knows."""
        return self._snapshot

    # -- output --------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether `ready` would return anything."""
        # Field by field: building a SoftState and a HardState per call to
        # compare them costs more than the rest of this check.
        soft = self._last_soft
        hard = self._persisted_hard_state
        return bool(
            self._msgs
            or self._eager
            or self._bad
            or self._restored is not None
            or self._snapshot_sends
            or self._read_states
            or self._conf_events
            or self.leader != soft.leader
            or self.role is not soft.role
            or self.term != soft.term
            or self.term != hard.term
            or self.vote != hard.vote
            or self.log.in_progress < self.log.last_index()
            or self.log.has_next_committed()
        )

    def ready(self) -> Ready:
        """Take the pending output; see `pyjraft.core.ready` for what to do with it."""
        rd = Ready(commit_index=self.log.committed)
        soft = self._last_soft
        if self.leader != soft.leader or self.role is not soft.role or self.term != soft.term:
            rd.soft_state = self._last_soft = self.soft_state
        hard = self._persisted_hard_state
        if self.term != hard.term or self.vote != hard.vote:
            rd.hard_state = self._persisted_hard_state = self.hard_state
        if self._restored is not None:
            rd.snapshot, self._restored = self._restored, None
        if self._snapshot_sends:
            rd.snapshots_to_send, self._snapshot_sends = self._snapshot_sends, []
        if self._read_states:
            rd.read_states, self._read_states = self._read_states, []
        if self._conf_events:
            rd.conf_events, self._conf_events = self._conf_events, []
        rd.entries = self.log.next_unstable()
        self.log.accept_unstable(rd.entries)
        rd.committed_entries = self.log.next_committed(self.config.max_apply_bytes)
        self.log.accept_committed(rd.committed_entries)
        rd.eager_messages, self._eager = self._eager, []
        rd.messages, self._msgs = self._msgs, []
        if self._bad:
            rd.bad_messages, self._bad = self._bad, []
        return rd

    def take_eager_messages(self) -> list[Message]:
        """Take the messages that may be sent before anything is durable (a leader's
        appends and heartbeats), without waiting for the next `Ready`.

        A runtime whose write is in flight calls this after each input, so
        followers receive new entries while the leader's own fsync runs.
        """
        out, self._eager = self._eager, []
        return out

    def advance(self, rd: Ready) -> None:
        """Report that ``rd`` was handled: its state is durable and its entries applied."""
        if rd.hard_state is not None:
            self._durable_term = max(self._durable_term, rd.hard_state.term)
        if rd.snapshot is not None:
            self.log.snapshot_installed(rd.snapshot)
            self.set_snapshot(rd.snapshot)
        if rd.entries:
            last = rd.entries[-1]
            # If the tail changed while the write was in flight, the write is superseded
            # and the next Ready carries the replacement.
            if self.log.stable_to(last.index, last.term):
                self._stable_index = last.index
                if self.role is Role.LEADER:
                    # The commit reaches followers with the next append or heartbeat.
                    self._maybe_commit()

    # -- roles ---------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = self.config.election_ticks + self._rng.randrange(
            self.config.election_ticks
        )
        self.votes = {}
        # Reads of an earlier leadership are gone (the runtime fails their callers).
        self.read_only = ReadOnly(self.id)
        self._reads_waiting = []
        self._membership_reset()
        cfg = self.config
        nxt = self.log.last_index() + 1
        self.progress = {}
        for peer in sorted(confs.members(self.conf) | {self.id}):
            learner = peer not in self.voters and peer not in self.outgoing
            pr = Progress(nxt, cfg.max_inflight_msgs, cfg.max_inflight_bytes, learner)
            if peer == self.id:
                pr.match = self._stable_index
                pr.recent_active = True
            self.progress[peer] = pr

    def _become_follower(self, term: int, leader: NodeId) -> None:
        self._reset(term)
        self.leader = leader
        self.role = Role.FOLLOWER if self.promotable else Role.LEARNER

    def _become_pre_candidate(self) -> None:
        # Changes neither term nor vote: that is the point of pre-voting.
        self.votes = {}
        self.leader = NONE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.leader = self.id
        self.role = Role.LEADER
        # Paper 5.4.2 / 8: an entry of our own term lets us commit earlier terms' entries.
        noop = Entry(self.term, self.log.last_index() + 1, _NOOP, b"")
        self.log.append([noop])
        self._broadcast_append()
        self._after_elected()

    # -- plumbing ------------------------------------------------------------

    def _reject(self, m: Message, reason: str) -> None:
        self._bad.append(BadMessage(m, reason))

    def _send(self, m: Message) -> None:
        # A leader's appends may leave before its write (thesis 10.2.1), but not
        # before its term is durable: a leader that won alone (the only voter, or
        # a transfer target voting for itself) has not written its term yet, so
        # its messages wait for that write.
        if (
            self.role is Role.LEADER
            and isinstance(m, (AppendEntries, Heartbeat, TimeoutNow))
            and self._durable_term == self.term
        ):
            self._eager.append(m)
        else:
            self._msgs.append(m)

    def __repr__(self) -> str:
        return (
            f"RaftCore({self.id} {self.role.value} term={self.term} vote={self.vote or '-'} "
            f"leader={self.leader or '-'} last={self.log.last_index()} commit={self.log.committed})"
        )
