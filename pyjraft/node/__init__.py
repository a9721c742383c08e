"""The asyncio runtime: `Node` drives one raft group; `StateMachine` is yours."""

from pyjraft.node.errors import (
    LeadershipLostError,
    MemberDataLostError,
    NodeStorageError,
    NotLeaderError,
    OverloadedError,
    RaftError,
    ReadTimeoutError,
    RegistrationError,
    ShutdownError,
    StateMachineError,
)
from pyjraft.node.fsm_caller import FSMCaller
from pyjraft.node.lifecycle import Done, NodeState
from pyjraft.node.loop import loop_factory, run, tune_gc
from pyjraft.node.node import Node
from pyjraft.node.options import NodeOptions, peers_from
from pyjraft.node.snapshots import SnapshotsUnavailableError
from pyjraft.node.state_machine import (
    LeaderChangeContext,
    SnapshotReader,
    SnapshotWriter,
    StateMachine,
    Status,
)

__all__ = [
    "Done",
    "FSMCaller",
    "LeaderChangeContext",
    "LeadershipLostError",
    "MemberDataLostError",
    "Node",
    "NodeOptions",
    "NodeState",
    "NodeStorageError",
    "NotLeaderError",
    "OverloadedError",
    "RaftError",
    "ReadTimeoutError",
    "RegistrationError",
    "ShutdownError",
    "SnapshotReader",
    "SnapshotWriter",
    "SnapshotsUnavailableError",
    "StateMachine",
    "StateMachineError",
    "Status",
    "loop_factory",
    "peers_from",
    "run",
    "tune_gc",
]
