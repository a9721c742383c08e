"""`NodeOptions`: every knob of a node, with sane defaults and validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyjraft.core.errors import ConfigError
from pyjraft.core.types import GroupId, NodeId

_MAX_SEGMENT_BYTES = (1 << 32) - 1
"""`pyjraft.storage.segment_log.MAX_SEGMENT_BYTES`, without importing storage here."""


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Options of one raft group member. Invalid values raise `ConfigError`."""

    id: NodeId
    """This member's address, ``host:port`` (the transport's address)."""
    peers: tuple[NodeId, ...]
    """Initial voting members, this one included."""
    group: GroupId = "default"
    """The raft group's name; many groups may share one transport."""
    data_dir: str | None = None
    """Directory for the log and term/vote; None keeps everything in memory (tests only)."""
    cluster_id: str = "default"
    """The cluster this member belongs to, written in its data directory's
    identity (`pyjraft.storage.identity`) and checked at every start and by
    its peers when it registers: a directory or a peer of another cluster is
    refused."""
    force_new_instance: bool = False
    """Start on a data directory whose member its peers know as another
    instance (its data was lost), and have them record this one instead.
    RISKY: the member forgot the votes it cast and the entries it
    acknowledged, so rejoining could elect a second leader in a term or
    lose committed writes; see the README ("A member that lost its data").
    Without it such a member refuses to start (`MemberDataLostError`)."""
    election_timeout_ms: int = 1000
    """Base election timeout; each election waits a random time in [t, 2t)."""
    heartbeat_ms: int = 100
    """Leader heartbeat interval; also the tick length. Must divide into the election timeout."""
    max_inflight_appends: int = 256
    """Unacknowledged AppendEntries per follower (pipelining depth)."""
    max_entries_per_append: int = 4096
    """Entries per AppendEntries."""
    max_bytes_per_append: int = 1 << 20
    """Entry bytes per AppendEntries."""
    max_inflight_bytes: int = 64 << 20
    """Unacknowledged entry bytes per follower."""
    apply_batch_bytes: int = 4 << 20
    """Committed entry bytes handed to the state machine per call, and so per
    loop turn: a node catching up (re-applying its log after a restart, say)
    serves timers and messages between batches of this size."""
    max_pending_proposals: int = 100_000
    """Proposals queued, awaiting commit or (with ``leader_write_thread``)
    awaiting the leader's own log write, beyond which `apply` fails fast with
    `OverloadedError` instead of growing memory."""
    max_queue_delay_ms: int = 500
    """A leader refuses new proposals with `OverloadedError` while its oldest
    proposal still waiting to be applied has waited longer than this: load
    is shed at the door, so the queue holds about this much work and callers
    hear "overloaded" (retry) rather than wait past their timeouts (see
    `pyjraft.node.turns`). 0 turns it off (``max_pending_proposals`` alone
    then bounds the queue)."""
    max_proposals_per_turn: int = 4096
    """Queued proposals proposed per turn of the event loop (one batch); the
    rest wait for the next turn, after timers and sockets had theirs."""
    max_applies_per_turn: int = 4096
    """Committed entries applied (and their callers answered) per turn of the
    event loop; a longer run of them goes on in the next turn, so heartbeats
    and votes are never starved by a backlog."""
    max_entry_bytes: int = 16 << 20
    """Largest accepted entry."""
    storage_retry_timeout_ms: int = 30_000
    """How long a log or term/vote write that failed for want of a file
    descriptor (`pyjraft.storage.TransientStorageError`) is retried, with
    backoff, before the node gives up (`NodeStorageError`); the node keeps
    running meanwhile, its messages that depend on the write held back
    (`pyjraft.node.storage_retry`)."""
    sync: bool = True
    """fdatasync before acknowledging. ``False`` is UNSAFE: an acknowledged write can
    be lost if a majority of machines lose power or crash together."""
    leader_write_thread: bool = False
    """Write the leader's log on a dedicated thread (`pyjraft.node.writer`), so
    the leader keeps stepping messages, applying what its followers made
    durable and producing the next batches during its fdatasync; each round of
    the thread writes every batch queued meanwhile with one fdatasync. Pays
    where the disk, not the CPU, limits a leader: large entries with a disk to
    itself (2-core reference machine, 4 KiB entries, 256 in flight, followers
    on tmpfs: 29-34k -> 35-44k writes/s). Neutral at 100 B (c=1 p50 and c=1000
    throughput within noise) and when the replicas share one disk. Off by
    default. Followers always write inline: they must not acknowledge before
    the write is durable."""
    busy_poll_us: int = 0
    """After a leader sends a batch of new entries, keep its event loop polling
    the sockets without sleeping for this long (re-armed by every batch), so
    the acknowledgement is handled the moment it arrives by a process still on
    its core, not after a wake-up (`pyjraft.node.busy_poll`). Lowers latency at
    low concurrency where the network round trip dominates (sync off, or a disk
    much faster than the wake-up), not where the followers' fdatasync does;
    costs up to this much CPU per batch sent (an idle leader, sending only
    heartbeats, never polls). 0 turns it off."""
    segment_bytes: int = 64 << 20
    """Log segment file size."""
    log_cache_bytes: int = 32 << 20
    """Memory for recently appended entries, served to followers that lag a
    little without a disk read: their data plus about 150 bytes each of Python
    objects (`pyjraft.storage.segment_log.CACHED_ENTRY_OVERHEAD`)."""
    metrics: bool = False
    """Record latency and batch-size histograms (`pyjraft.node.metrics`): a few
    clock reads per batch, never per entry. Counters and gauges (`Node.stats`,
    `Node.status`) exist either way; `pyjraft.ops` exports both."""
    read_timeout_ms: int = 5000
    """Default time `Node.read_index` waits for a read to be confirmed and applied."""
    read_lease_ms: int = 0
    """How long after a majority answered a heartbeat round the leader may serve
    lease reads with no round trip; must be below the election timeout by a
    margin for clock drift between the nodes (0: 80% of it). See
    `pyjraft.core.read_only` for the clock assumption."""
    join: bool = False
    """Start as a node an existing group is adding (`Node.add_peer` on its
    leader): no configuration of its own; it learns the group's from the
    leader's log or snapshot. ``peers`` then only names members to reach."""
    catchup_margin: int = 1000
    """A joining voter votes only once within this many entries of the leader."""
    catchup_timeout_ms: int = 60_000
    """A change whose joining voters have not caught up by then is abandoned."""
    snapshot_every_entries: int = 100_000
    """Snapshot the state machine once this many entries were applied since the
    last snapshot (0: never on a count). Only a machine implementing
    `StateMachine.on_snapshot_save` is snapshotted, and only with a
    ``data_dir`` (snapshots live in ``data_dir/<group>/snapshot``)."""
    snapshot_interval_s: float = 3600.0
    """Also snapshot this often (seconds) when anything was applied since the
    last snapshot (0: never on a timer)."""
    snapshot_log_margin: int = 10_000
    """Log entries kept behind a new snapshot when the log is compacted, so a
    follower lagging by fewer entries catches up from the log instead of
    needing the whole snapshot. Whole segments are dropped, so the log holds
    at most this many entries before the snapshot plus one segment, plus the
    entries applied since."""
    snapshot_write_bytes_per_s: int = 64 << 20
    """How fast a new snapshot's files are handed to the disk before their
    final fsync (`pyjraft.node.writeback`; 0: as fast as the disk takes
    them). A snapshot reaches the page cache at memory speed; flushed at
    once, a large one fills the disk's queue and every log fdatasync (on
    each write's latency path) waits behind it. Paced, the log's writes keep
    their latency and the snapshot takes longer to publish (a 1 GiB one at
    the default, 16 s: on the reference machine's disk, p99 write latency
    during such a save rose by 8 ms at 64 MiB/s, 10 ms at 128 MiB/s, and 68
    ms unpaced; see the README). Installs are paced by ``snapshot_throttle_bytes``."""
    snapshot_keep: int = 2
    """Published snapshots kept (at least 1). At start-up a damaged newest one
    is set aside and the next one used, if the log still reaches back to it
    (see ``snapshot_log_margin``)."""
    snapshot_chunk_bytes: int = 1 << 20
    """Bytes per request when a follower fetches its leader's snapshot (4 KiB
    to 16 MiB)."""
    snapshot_window: int = 4
    """Chunk requests a follower keeps in flight while fetching a snapshot:
    memory on each side stays within about window x chunk bytes."""
    snapshot_throttle_bytes: int = 0
    """Bytes per second a leader serves to all the followers installing its
    snapshots together (0: unlimited): keeps installs from starving its disk
    and network."""
    snapshot_transfer_timeout_ms: int = 10_000
    """A snapshot transfer that makes no progress for this long is abandoned
    by both sides (temporary files removed) and retried by the leader from
    its newest snapshot. Also the timeout of each request of a transfer."""
    pre_vote: bool = True
    """Raft thesis 9.6 pre-vote."""
    check_quorum: bool = True
    """Leaders step down without a quorum; followers in a lease ignore vote requests."""

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("id must be set")
        if not self.cluster_id or len(self.cluster_id.encode()) > 1024:
            raise ConfigError("cluster_id must be a non-empty string of at most 1024 bytes")
        if self.id not in self.peers and not self.join:
            raise ConfigError(
                f"id {self.id} must be one of peers {self.peers} (or join=True for a node "
                "that an existing group adds)"
            )
        if len(set(self.peers)) != len(self.peers):
            raise ConfigError(f"duplicate peers in {self.peers}")
        if self.heartbeat_ms < 1:
            raise ConfigError("heartbeat_ms must be >= 1")
        if self.election_timeout_ms < 2 * self.heartbeat_ms:
            raise ConfigError(
                f"election_timeout_ms ({self.election_timeout_ms}) must be at least twice "
                f"heartbeat_ms ({self.heartbeat_ms})"
            )
        for name in (
            "max_inflight_appends",
            "max_entries_per_append",
            "max_bytes_per_append",
            "max_inflight_bytes",
            "apply_batch_bytes",
            "max_pending_proposals",
            "max_proposals_per_turn",
            "max_applies_per_turn",
            "max_entry_bytes",
            "segment_bytes",
            "snapshot_keep",
            "snapshot_window",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.read_timeout_ms < 1:
            raise ConfigError(f"read_timeout_ms must be >= 1, got {self.read_timeout_ms}")
        if not 0 <= self.read_lease_ms < self.election_timeout_ms:
            raise ConfigError(
                f"read_lease_ms ({self.read_lease_ms}) must be below election_timeout_ms "
                f"({self.election_timeout_ms}): the lease must end before anyone else can "
                "be elected"
            )
        if self.storage_retry_timeout_ms < 0:
            raise ConfigError(
                f"storage_retry_timeout_ms must be >= 0, got {self.storage_retry_timeout_ms}"
            )
        if self.max_queue_delay_ms < 0:
            raise ConfigError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.busy_poll_us < 0:
            raise ConfigError(f"busy_poll_us must be >= 0, got {self.busy_poll_us}")
        for name in (
            "snapshot_every_entries",
            "snapshot_log_margin",
            "snapshot_throttle_bytes",
            "snapshot_write_bytes_per_s",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.snapshot_interval_s < 0:
            raise ConfigError(f"snapshot_interval_s must be >= 0, got {self.snapshot_interval_s}")
        if not 4096 <= self.snapshot_chunk_bytes <= 16 << 20:
            raise ConfigError(
                f"snapshot_chunk_bytes must be 4 KiB to 16 MiB, got {self.snapshot_chunk_bytes}"
            )
        if self.snapshot_window > 64:
            raise ConfigError(f"snapshot_window must be at most 64, got {self.snapshot_window}")
        if self.snapshot_transfer_timeout_ms < 100:
            raise ConfigError(
                "snapshot_transfer_timeout_ms must be >= 100, got "
                f"{self.snapshot_transfer_timeout_ms}"
            )
        if self.log_cache_bytes < 0:
            raise ConfigError("log_cache_bytes must be >= 0")
        if self.segment_bytes > _MAX_SEGMENT_BYTES:
            raise ConfigError(
                f"segment_bytes must be at most {_MAX_SEGMENT_BYTES} (4 GiB - 1), "
                f"got {self.segment_bytes}"
            )

    @property
    def election_ticks(self) -> int:
        """The election timeout in ticks (a tick is one heartbeat interval)."""
        return max(2, self.election_timeout_ms // self.heartbeat_ms)

    @property
    def catchup_timeout_ticks(self) -> int:
        """``catchup_timeout_ms`` in ticks."""
        return max(1, self.catchup_timeout_ms // self.heartbeat_ms)

    @property
    def read_lease_ticks(self) -> int:
        """``read_lease_ms`` in ticks (0: the core's default, 80%); always below
        the election timeout."""
        if not self.read_lease_ms:
            return 0
        return max(1, min(self.read_lease_ms // self.heartbeat_ms, self.election_ticks - 1))


def peers_from(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Parse ``"a:1,b:2"`` (or a sequence) into a tuple of peer addresses."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(p.strip() for p in items if p.strip())
