"""Reading the LMDB store: scans in both directions with limits and budgets, and
the event history a watch reads, with its cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.store import DELETE, PUT, KvStore
from tests.kv.helpers import Feeder


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KvStore]:
    m = KvStateMachine(str(tmp_path / "kv"))
    f = Feeder(m)
    for k in (b"a", b"b", b"b/1", b"b/2", b"c", b"d"):
        f.one({"op": "put", "key": k, "value": k.upper()})
    f.one({"op": "delete_range", "prefix": b"b/"})  # revision 7: two events
    f.one({"op": "put", "key": b"b/1", "value": b"again"})  # revision 8
    yield m.store
    m.close()


def keys(store: KvStore, *args: object, **kw: object) -> tuple[list[bytes], bool]:
    with store.read() as txn:
        kvs, more = store.scan(txn, *args, **kw)  # type: ignore[arg-type]
    return [kv[0] for kv in kvs], more


def test_scan_ascending_and_descending(store: KvStore) -> None:
    assert keys(store, b"", None, 100) == ([b"a", b"b", b"b/1", b"c", b"d"], False)
    assert keys(store, b"", None, 100, True) == ([b"d", b"c", b"b/1", b"b", b"a"], False)
    assert keys(store, b"b", b"c", 100) == ([b"b", b"b/1"], False)
    assert keys(store, b"b", b"c", 100, True) == ([b"b/1", b"b"], False)
    # end between keys, and bounds outside the data
    assert keys(store, b"b/", b"cc", 100, True) == ([b"c", b"b/1"], False)
    assert keys(store, b"e", None, 100) == ([], False)
    assert keys(store, b"", b"a", 100, True) == ([], False)
    assert keys(store, b"0", b"z", 100, True)[0][0] == b"d"


def test_scan_limit_says_more_only_when_more_is_in_range(store: KvStore) -> None:
    assert keys(store, b"", None, 2) == ([b"a", b"b"], True)
    assert keys(store, b"", None, 2, True) == ([b"d", b"c"], True)
    assert keys(store, b"b", b"c", 2) == ([b"b", b"b/1"], False)
    assert keys(store, b"c", None, 2, True) == ([b"d", b"c"], False)


def test_scan_byte_budget_and_keys_only(store: KvStore) -> None:
    # Each key-value is 2-6 bytes; a budget of 1 still returns one.
    assert keys(store, b"", None, 100, max_bytes=1) == ([b"a"], True)
    assert keys(store, b"", None, 100, max_bytes=4) == ([b"a", b"b"], True)
    with store.read() as txn:
        kvs, _ = store.scan(txn, b"b/", None, 1, keys_only=True)
    assert kvs == [[b"b/1", b"", 8, 8, 1]]


def test_events_in_order_with_revisions(store: KvStore) -> None:
    with store.read() as txn:
        events, cursor = store.events(txn, 0, 0, b"", None, 100, 1 << 20)
    assert [(e[0], e[1], e[4]) for e in events] == [
        (PUT, b"a", 1),
        (PUT, b"b", 2),
        (PUT, b"b/1", 3),
        (PUT, b"b/2", 4),
        (PUT, b"c", 5),
        (PUT, b"d", 6),
        (DELETE, b"b/1", 7),
        (DELETE, b"b/2", 7),
        (PUT, b"b/1", 8),
    ]
    assert cursor == (9, 0)
    assert events[-1] == [PUT, b"b/1", b"again", 8, 8, 1]


def test_events_filtered_by_range(store: KvStore) -> None:
    with store.read() as txn:
        events, cursor = store.events(txn, 4, 0, b"b/", b"b0", 100, 1 << 20)
    assert [(e[1], e[4]) for e in events] == [(b"b/2", 4), (b"b/1", 7), (b"b/2", 7), (b"b/1", 8)]
    assert cursor == (9, 0)


def test_events_cursor_resumes_inside_a_revision(store: KvStore) -> None:
    seen = []
    cursor = (6, 0)
    with store.read() as txn:
        while True:
            events, cursor = store.events(txn, *cursor, b"", None, 1, 1 << 20)
            if not events:
                break
            seen += [(e[1], e[4]) for e in events]
    assert seen == [(b"d", 6), (b"b/1", 7), (b"b/2", 7), (b"b/1", 8)]
    assert cursor == (9, 0)


def test_events_bounded_by_bytes_and_by_scanning(store: KvStore) -> None:
    with store.read() as txn:
        events, cursor = store.events(txn, 0, 0, b"", None, 100, 1)
        assert len(events) == 1 and cursor == (2, 0)
        # Nothing matches in the first 3 looked at: no events, but progress.
        events, cursor = store.events(txn, 0, 0, b"d", None, 100, 1 << 20, max_scanned=3)
        assert events == [] and cursor == (4, 0)


def test_events_cursor_never_moves_back(store: KvStore) -> None:
    # A replica behind the client's cursor answers nothing, and keeps the cursor.
    with store.read() as txn:
        events, cursor = store.events(txn, 20, 3, b"", None, 100, 1 << 20)
    assert events == [] and cursor == (20, 3)
