"""Helpers for the KV tests: feed requests to a state machine, dump a store."""

from __future__ import annotations

from typing import Any

from pyjraft.core.types import Entry
from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.protocol import KvLimits, command_from_request
from pyjraft.kv.store import KvStore

LIMITS = KvLimits()


class Feeder:
    """Turns requests into log entries with increasing indexes and applies them."""

    def __init__(self, machine: KvStateMachine, first_index: int = 1) -> None:
        self.machine = machine
        self.index = first_index - 1

    def entries(self, *requests: dict[str, Any]) -> list[Entry]:
        out = []
        for r in requests:
            self.index += 1
            out.append(Entry(1, self.index, 0, command_from_request(r, LIMITS)))
        return out

    def apply(self, *requests: dict[str, Any]) -> list[Any]:
        return self.machine.on_apply(self.entries(*requests))

    def one(self, request: dict[str, Any]) -> Any:
        return self.apply(request)[0]

    def raw(self, data: bytes) -> Any:
        self.index += 1
        return self.machine.on_apply([Entry(1, self.index, 0, data)])[0]


def dump(store: KvStore) -> dict[str, Any]:
    """Everything a store holds, for comparing replicas."""
    with store.read() as txn:
        kvs = [tuple(kv) for kv in store.scan(txn, b"", None, 1 << 30)[0]]
        events, _ = store.events(txn, 0, 0, b"", None, 1 << 30, 1 << 62, 1 << 30)
    return {
        "kvs": kvs,
        "events": [tuple(e) for e in events],
        "revision": store.revision,
        "compact_revision": store.compact_revision,
        "history_bytes": store.history_bytes,
        "applied_index": store.applied_index,
    }
