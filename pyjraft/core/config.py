"""Configuration of one raft group member's core, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from pyjraft.core.errors import ConfigError
from pyjraft.core.types import GroupId, NodeId


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Every knob of the core. Times are in ticks; the runtime decides a tick's length."""

    id: NodeId
    """This member's id."""
    voters: tuple[NodeId, ...]
    """The initial voting members, this one included unless it is a learner."""
    group: GroupId = "default"
    """The raft group this member belongs to."""
    learners: tuple[NodeId, ...] = ()
    """Initial non-voting members, which receive the log but neither vote nor count."""
    election_ticks: int = 10
    """Base election timeout; each election waits a random time in ``[e, 2e)``."""
    heartbeat_ticks: int = 1
    """A leader sends heartbeats every this many ticks; must be below ``election_ticks``."""
    pre_vote: bool = True
    """Raft thesis 9.6: poll before campaigning so a rejoining node cannot depose a leader."""
    check_quorum: bool = True
    """A leader steps down when it has not heard from a quorum within an election timeout,
    and followers that heard from a live leader within one refuse to vote."""
    max_inflight_msgs: int = 256
    """Unacknowledged AppendEntries per follower."""
    max_inflight_bytes: int = 64 << 20
    """Unacknowledged entry bytes per follower."""
    max_entries_per_msg: int = 4096
    """Entries per AppendEntries."""
    max_bytes_per_msg: int = 1 << 20
    """Entry bytes per AppendEntries (one larger entry still goes alone)."""
    max_apply_bytes: int = 16 << 20
    """Committed entry bytes handed out per `Ready`."""
    catchup_margin: int = 1000
    """A voter joining the group votes only once its log is within this many
    entries of the leader's (thesis 4.2.1)."""
    catchup_timeout_ticks: int = 100
    """A change whose joining voters have not caught up by then is abandoned."""
    read_lease_ticks: int = 0
    """How long after a heartbeat round a majority answered the leader may serve
    lease reads with no round trip (`pyjraft.core.read_only`); it must be shorter
    than ``election_ticks`` by a margin for clock drift. 0: ``election_ticks``
    less a fifth (at least one tick)."""

    @property
    def lease_ticks(self) -> int:
        """``read_lease_ticks``, or its default."""
        if self.read_lease_ticks:
            return self.read_lease_ticks
        return self.election_ticks - max(1, self.election_ticks // 5)

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("id must be non-empty")
        if self.heartbeat_ticks < 1:
            raise ConfigError(f"heartbeat_ticks must be >= 1, got {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                f"election_ticks ({self.election_ticks}) must exceed heartbeat_ticks "
                f"({self.heartbeat_ticks})"
            )
        if len(set(self.voters)) != len(self.voters):
            raise ConfigError(f"duplicate voters: {self.voters}")
        if set(self.voters) & set(self.learners):
            raise ConfigError("a member cannot be both voter and learner")
        if self.catchup_margin < 0 or self.catchup_timeout_ticks < 1:
            raise ConfigError("catchup_margin must be >= 0 and catchup_timeout_ticks >= 1")
        if not 0 <= self.read_lease_ticks < self.election_ticks:
            raise ConfigError(
                f"read_lease_ticks ({self.read_lease_ticks}) must be below election_ticks "
                f"({self.election_ticks}): the lease must end before anyone can be elected"
            )
        for name in (
            "max_inflight_msgs",
            "max_inflight_bytes",
            "max_entries_per_msg",
            "max_bytes_per_msg",
            "max_apply_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
