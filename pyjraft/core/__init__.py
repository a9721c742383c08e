"""The pure, sans-IO Raft core: no sockets, files, clocks, threads or asyncio.

Feed it `RaftCore.tick`, `RaftCore.step`, `RaftCore.propose`; take a `Ready`,
do what it says (see `pyjraft.core.ready`), then `RaftCore.advance`.
"""

from pyjraft.core.config import CoreConfig
from pyjraft.core.errors import ConfigError, NotLeaderError, ProposalDroppedError, RaftError
from pyjraft.core.log_reader import LogReader, LogUnavailableError
from pyjraft.core.messages import (
    MESSAGE_TYPES,
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
from pyjraft.core.raft import RaftCore
from pyjraft.core.raft_log import LogSafetyError
from pyjraft.core.ready import Ready
from pyjraft.core.types import (
    NONE,
    ConfState,
    Entry,
    EntryType,
    GroupId,
    HardState,
    NodeId,
    Role,
    SoftState,
)

__all__ = [
    "MESSAGE_TYPES",
    "NONE",
    "AppendEntries",
    "AppendEntriesResponse",
    "ConfState",
    "ConfigError",
    "CoreConfig",
    "Entry",
    "EntryType",
    "GroupId",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "LogReader",
    "LogSafetyError",
    "LogUnavailableError",
    "Message",
    "NodeId",
    "NotLeaderError",
    "PreVoteRequest",
    "PreVoteResponse",
    "ProposalDroppedError",
    "RaftCore",
    "RaftError",
    "Ready",
    "Role",
    "SoftState",
    "TimeoutNow",
    "VoteRequest",
    "VoteResponse",
]
