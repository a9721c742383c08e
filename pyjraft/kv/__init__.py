"""pyjraft.kv: a replicated, ordered, watchable key-value store built on pyjraft.

* `Client` (asyncio) and `SyncClient` (scripts) talk to a cluster: get,
  get_many, scan, put, put_if_absent, compare_and_set, delete, delete_range,
  txn, compact, watch. Keys and values are bytes; revisions are etcd's.
* `KvServer` runs one replica: a raft `pyjraft.node.Node`, the LMDB store
  (`KvStateMachine` over `KvStore`) and the ``kv`` RPC service
  (`KvService`), on one TCP transport. ``pyjraft kv serve`` runs one from
  the command line.
* The wire format and its validation are in `pyjraft.kv.protocol`.
"""

from pyjraft.kv.client import Client, Watch
from pyjraft.kv.errors import CompactedError, InvalidRequestError
from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.protocol import KvLimits
from pyjraft.kv.server import KvOptions, KvServer
from pyjraft.kv.service import KV_SERVICE, KvService
from pyjraft.kv.store import KvStore, KvStoreError
from pyjraft.kv.sync_client import SyncClient
from pyjraft.kv.types import (
    CasResult,
    CompactResult,
    Compare,
    DeleteRangeResult,
    DeleteResult,
    Event,
    GetManyResult,
    KeyValue,
    Op,
    PutResult,
    ScanResult,
    TxnResult,
    prefix_end,
)

__all__ = [
    "KV_SERVICE",
    "CasResult",
    "Client",
    "CompactResult",
    "CompactedError",
    "Compare",
    "DeleteRangeResult",
    "DeleteResult",
    "Event",
    "GetManyResult",
    "InvalidRequestError",
    "KeyValue",
    "KvLimits",
    "KvOptions",
    "KvServer",
    "KvService",
    "KvStateMachine",
    "KvStore",
    "KvStoreError",
    "Op",
    "PutResult",
    "ScanResult",
    "SyncClient",
    "TxnResult",
    "Watch",
    "prefix_end",
]
