"""`SyncClient`: the KV client for scripts without asyncio.

Each call runs the `Client` coroutine on a private event loop (an
`asyncio.Runner` owned by this object), so it must not be used from inside a
running event loop, nor from several threads at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pyjraft.kv.client import _UNSET, Bytes, Client
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
    ReadConsistency,
    ScanResult,
    TxnResult,
)
from pyjraft.node.loop import loop_factory


class SyncClient:
    """Blocking calls to a KV cluster; the arguments are `Client`'s."""

    def __init__(self, peers: Sequence[str] | str, **options: Any) -> None:
        self._runner = asyncio.Runner(loop_factory=loop_factory())
        self.client = Client(peers, **options)
        """The asyncio client doing the work."""

    def get(self, key: Bytes, *, read: ReadConsistency = "linearizable") -> KeyValue | None:
        """`Client.get`."""
        return self._runner.run(self.client.get(key, read=read))

    def get_many(
        self, keys: Iterable[Bytes], *, read: ReadConsistency = "linearizable"
    ) -> GetManyResult:
        """`Client.get_many`."""
        return self._runner.run(self.client.get_many(keys, read=read))

    def scan(
        self,
        start: Bytes = b"",
        end: Bytes | None = None,
        *,
        prefix: Bytes | None = None,
        limit: int = 0,
        reverse: bool = False,
        keys_only: bool = False,
        read: ReadConsistency = "linearizable",
    ) -> ScanResult:
        """`Client.scan`."""
        return self._runner.run(
            self.client.scan(
                start,
                end,
                prefix=prefix,
                limit=limit,
                reverse=reverse,
                keys_only=keys_only,
                read=read,
            )
        )

    def put(self, key: Bytes, value: Bytes) -> PutResult:
        """`Client.put`."""
        return self._runner.run(self.client.put(key, value))

    def put_if_absent(self, key: Bytes, value: Bytes) -> CasResult:
        """`Client.put_if_absent`."""
        return self._runner.run(self.client.put_if_absent(key, value))

    def compare_and_set(
        self,
        key: Bytes,
        value: Bytes,
        *,
        expect_value: Bytes | None = _UNSET,
        expect_mod_revision: int | None = None,
    ) -> CasResult:
        """`Client.compare_and_set`."""
        return self._runner.run(
            self.client.compare_and_set(
                key, value, expect_value=expect_value, expect_mod_revision=expect_mod_revision
            )
        )

    def delete(self, key: Bytes) -> DeleteResult:
        """`Client.delete`."""
        return self._runner.run(self.client.delete(key))

    def delete_range(
        self,
        start: Bytes = b"",
        end: Bytes | None = None,
        *,
        prefix: Bytes | None = None,
        prev_kv: bool = False,
    ) -> DeleteRangeResult:
        """`Client.delete_range`."""
        return self._runner.run(
            self.client.delete_range(start, end, prefix=prefix, prev_kv=prev_kv)
        )

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> TxnResult:
        """`Client.txn`."""
        return self._runner.run(self.client.txn(compare, success, failure))

    def compact(self, revision: int) -> CompactResult:
        """`Client.compact`."""
        return self._runner.run(self.client.compact(revision))

    def status(self) -> dict[str, Any]:
        """`Client.status`."""
        return self._runner.run(self.client.status())

    def watch(
        self,
        key: Bytes | None = None,
        *,
        prefix: Bytes | None = None,
        start: Bytes | None = None,
        end: Bytes | None = None,
        start_revision: int = 0,
    ) -> Iterator[Event]:
        """`Client.watch`, as a blocking iterator of events."""
        w = self.client.watch(
            key, prefix=prefix, start=start, end=end, start_revision=start_revision
        )
        while True:
            try:
                yield self._runner.run(w.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        """Close the connections and the private event loop."""
        try:
            self._runner.run(self.client.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncClient:
        """Use as ``with SyncClient(...) as kv:``."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        self.close()


__all__ = ["SyncClient"]
