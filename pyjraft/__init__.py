"""pyjraft: Raft consensus for Python.

The public API is what this module exports; see the README for a tour. Names
are imported lazily, so ``import pyjraft.core`` loads no IO machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "CoreConfig": "pyjraft.core",
    "CorruptLogError": "pyjraft.storage",
    "Entry": "pyjraft.core",
    "EntryType": "pyjraft.core",
    "HardState": "pyjraft.core",
    "LeaderChangeContext": "pyjraft.node",
    "LeadershipLostError": "pyjraft.node",
    "LogStorage": "pyjraft.storage",
    "MemoryLogStorage": "pyjraft.storage",
    "MemoryMetaStorage": "pyjraft.storage",
    "Message": "pyjraft.core",
    "MetaStorage": "pyjraft.storage",
    "Node": "pyjraft.node",
    "NodeOptions": "pyjraft.node",
    "NodeStorageError": "pyjraft.node",
    "NotLeaderError": "pyjraft.core",
    "OverloadedError": "pyjraft.node",
    "RaftClient": "pyjraft.client",
    "RaftCore": "pyjraft.core",
    "RaftError": "pyjraft.core",
    "ReadTimeoutError": "pyjraft.node",
    "Ready": "pyjraft.core",
    "Role": "pyjraft.core",
    "RouteTable": "pyjraft.client",
    "ShutdownError": "pyjraft.node",
    "StateMachine": "pyjraft.node",
    "StateMachineError": "pyjraft.node",
    "Status": "pyjraft.node",
    "StorageError": "pyjraft.storage",
    "TcpTransport": "pyjraft.transport",
}

__all__ = [
    "__version__",
    "CoreConfig",
    "CorruptLogError",
    "Entry",
    "EntryType",
    "HardState",
    "LeaderChangeContext",
    "LeadershipLostError",
    "LogStorage",
    "MemoryLogStorage",
    "MemoryMetaStorage",
    "Message",
    "MetaStorage",
    "Node",
    "NodeOptions",
    "NodeStorageError",
    "NotLeaderError",
    "OverloadedError",
    "RaftClient",
    "RaftCore",
    "RaftError",
    "ReadTimeoutError",
    "Ready",
    "Role",
    "RouteTable",
    "ShutdownError",
    "StateMachine",
    "StateMachineError",
    "Status",
    "StorageError",
    "TcpTransport",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyjraft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from pyjraft.client import (
        RaftClient,
        RouteTable,
    )
    from pyjraft.core import (
        CoreConfig,
        Entry,
        EntryType,
        HardState,
        Message,
        NotLeaderError,
        RaftCore,
        RaftError,
        Ready,
        Role,
    )
    from pyjraft.node import (
        LeaderChangeContext,
        LeadershipLostError,
        Node,
        NodeOptions,
        NodeStorageError,
        OverloadedError,
        ShutdownError,
        StateMachine,
        StateMachineError,
        Status,
    )
    from pyjraft.storage import (
        CorruptLogError,
        LogStorage,
        MemoryLogStorage,
        MemoryMetaStorage,
        MetaStorage,
        StorageError,
    )
    from pyjraft.transport import (
        TcpTransport,
    )
