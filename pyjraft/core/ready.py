"""`Ready`: everything the core wants the runtime to do, as one value.

The contract, in order, for each `Ready` the runtime takes:

1. ``eager_messages`` may be sent at once, before anything is durable: they
   are a leader's AppendEntries and heartbeats, whose term is already durable
   (Raft thesis 10.2.1: a leader may write its log in parallel with
   replicating it, because it counts itself toward a commit only once its
   own write is durable, which it learns from `advance`).
2. ``hard_state`` (if set) and ``entries`` (if any) must be made durable. If
   ``snapshot`` is set (a follower restoring its leader's snapshot), it is
   installed first: its files published, the log reset to start just after
   it (``first_index() == snapshot.index + 1``, ``term(snapshot.index) ==
   snapshot.term``), the state machine loaded from it. If ``entries[0].index``
   is not past the log's last index, the log is then truncated to
   ``entries[0].index - 1``.
3. Only then may ``messages`` be sent: votes, vote requests, and
   acknowledgements all promise durable state.
4. ``committed_entries`` are applied to the state machine, in order, only
   after step 2 (they may include entries of this very `Ready`).
5. `advance(ready)` tells the core all of that is done.

``snapshots_to_send`` asks the runtime (of a leader) to stream its newest
snapshot to each follower named, which the core will not send entries to
until `RaftCore.report_snapshot` says the transfer ended (the follower's
acknowledgement of the install also ends it). On the receiving side, the
runtime hands the received snapshot to `RaftCore.restore`.

``conf_events`` report the steps of a configuration change or leadership
transfer the runtime asked for (`pyjraft.core.membership.ConfEvent`).

``read_states`` are linearizable reads (`RaftCore.read_index`) now safe to
serve: each once this node has applied its index.

``bad_messages`` are messages the core dropped because no correct peer could
have sent them (`pyjraft.core.validate`): the runtime logs them and counts
them; they change nothing.

Between taking a `Ready` and advancing it the runtime may keep feeding the
core (ticks, messages, proposals); the next `Ready` then carries what
accumulated, which is how a burst becomes one write and one fsync.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyjraft.core.membership import ConfEvent
from pyjraft.core.messages import Message
from pyjraft.core.read_only import ReadState
from pyjraft.core.types import Entry, HardState, NodeId, SnapshotMeta, SoftState
from pyjraft.core.validate import BadMessage


@dataclass(slots=True)
class Ready:
    """The core's pending output. See the module docstring for the contract."""

    soft_state: SoftState | None = None
    """The new leader/role/term, when it changed since the last `Ready`."""
    hard_state: HardState | None = None
    """Term and vote to make durable, when they changed."""
    snapshot: SnapshotMeta | None = None
    """A snapshot to install (state machine and log) before anything else."""
    entries: list[Entry] = field(default_factory=list)
    """Entries to append durably."""
    committed_entries: list[Entry] = field(default_factory=list)
    """Entries to apply, in order."""
    eager_messages: list[Message] = field(default_factory=list)
    """Messages that may be sent before this `Ready` is durable."""
    messages: list[Message] = field(default_factory=list)
    """Messages to send only after ``hard_state`` and ``entries`` are durable."""
    commit_index: int = 0
    """The commit index when this `Ready` was taken."""
    snapshots_to_send: list[tuple[NodeId, SnapshotMeta]] = field(default_factory=list)
    """Followers that need the leader's snapshot (named with the snapshot the
    core knows as newest; the runtime may send a newer one)."""
    conf_events: list[ConfEvent] = field(default_factory=list)
    """Steps of configuration changes and leadership transfers."""
    read_states: list[ReadState] = field(default_factory=list)
    """Reads confirmed: serve each once applied up to its index."""
    bad_messages: list[BadMessage] = field(default_factory=list)
    """Messages dropped as impossible for a correct peer, to log."""

    @property
    def must_sync(self) -> bool:
        """Whether anything here has to be made durable before ``messages`` go out."""
        return self.hard_state is not None or bool(self.entries) or self.snapshot is not None
