"""The KV state machine, driven directly with log entries: every operation, its
result and its revisions, invalid entries, restart, determinism, growth."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgpack
import pytest

from pyjraft.core.types import Entry
from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.protocol import FORMAT, pack_command
from tests.kv.helpers import Feeder, dump


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[KvStateMachine]:
    m = KvStateMachine(str(tmp_path / "kv"))
    yield m
    m.close()


@pytest.fixture
def feed(machine: KvStateMachine) -> Feeder:
    return Feeder(machine)


def put(k: bytes, v: bytes) -> dict[str, object]:
    return {"op": "put", "key": k, "value": v}


def test_put_bumps_the_revision_and_returns_the_previous_key_value(feed: Feeder) -> None:
    assert feed.one(put(b"a", b"1")) == {"revision": 1, "prev": None}
    assert feed.one(put(b"b", b"x")) == {"revision": 2, "prev": None}
    assert feed.one(put(b"a", b"2")) == {"revision": 3, "prev": [b"a", b"1", 1, 1, 1]}
    # Same value again is still a modification (etcd does the same).
    assert feed.one(put(b"a", b"2")) == {"revision": 4, "prev": [b"a", b"2", 1, 3, 2]}
    with feed.machine.store.read() as txn:
        assert feed.machine.store.get(txn, b"a") == [b"a", b"2", 1, 4, 3]


def test_delete_then_put_starts_a_new_life_of_the_key(feed: Feeder) -> None:
    feed.apply(put(b"a", b"1"), put(b"a", b"2"))
    assert feed.one({"op": "delete", "key": b"a"}) == {
        "deleted": True,
        "revision": 3,
        "prev": [b"a", b"2", 1, 2, 2],
    }
    # Deleting what is absent changes nothing, not even the revision.
    assert feed.one({"op": "delete", "key": b"a"}) == {
        "deleted": False,
        "revision": 3,
        "prev": None,
    }
    assert feed.one(put(b"a", b"3")) == {"revision": 4, "prev": None}
    with feed.machine.store.read() as txn:
        assert feed.machine.store.get(txn, b"a") == [b"a", b"3", 4, 4, 1]


def test_put_if_absent(feed: Feeder) -> None:
    r = feed.one({"op": "put_if_absent", "key": b"k", "value": b"1"})
    assert r == {"succeeded": True, "revision": 1, "prev": None}
    r = feed.one({"op": "put_if_absent", "key": b"k", "value": b"2"})
    assert r == {"succeeded": False, "revision": 1, "prev": [b"k", b"1", 1, 1, 1]}


def test_compare_and_set_on_value(feed: Feeder) -> None:
    def cas(v: bytes, expect: bytes | None) -> object:
        return feed.one({"op": "cas", "key": b"k", "value": v, "expect_value": expect})

    assert cas(b"1", b"zz") == {"succeeded": False, "revision": 0, "prev": None}
    assert cas(b"1", None) == {"succeeded": True, "revision": 1, "prev": None}
    assert cas(b"2", None) == {"succeeded": False, "revision": 1, "prev": [b"k", b"1", 1, 1, 1]}
    assert cas(b"2", b"1") == {"succeeded": True, "revision": 2, "prev": [b"k", b"1", 1, 1, 1]}
    assert cas(b"3", b"1") == {"succeeded": False, "revision": 2, "prev": [b"k", b"2", 1, 2, 2]}


def test_compare_and_set_on_mod_revision(feed: Feeder) -> None:
    def cas(v: bytes, rev: int) -> object:
        return feed.one({"op": "cas", "key": b"k", "value": v, "expect_mod_revision": rev})

    assert cas(b"1", 5)["succeeded"] is False  # type: ignore[index]
    assert cas(b"1", 0) == {"succeeded": True, "revision": 1, "prev": None}  # 0: absent
    feed.one(put(b"other", b"x"))
    assert cas(b"2", 2)["succeeded"] is False  # type: ignore[index]
    assert cas(b"2", 1) == {"succeeded": True, "revision": 3, "prev": [b"k", b"1", 1, 1, 1]}


def test_delete_range_is_one_revision_with_one_event_per_key(feed: Feeder) -> None:
    feed.apply(put(b"a/1", b"1"), put(b"a/2", b"2"), put(b"b", b"3"), put(b"a", b"0"))
    r = feed.one({"op": "delete_range", "prefix": b"a/", "prev_kv": True})
    assert r == {
        "deleted": 2,
        "revision": 5,
        "prev_kvs": [[b"a/1", b"1", 1, 1, 1], [b"a/2", b"2", 2, 2, 1]],
    }
    r = feed.one({"op": "delete_range", "prefix": b"a/"})
    assert r == {"deleted": 0, "revision": 5, "prev_kvs": []}
    r = feed.one({"op": "delete_range", "start": b"a", "end": b"b"})
    assert r == {"deleted": 1, "revision": 6, "prev_kvs": []}
    events = dump(feed.machine.store)["events"]
    assert [(e[0], e[1], e[4]) for e in events[4:]] == [
        (1, b"a/1", 5),
        (1, b"a/2", 5),
        (1, b"a", 6),
    ]
    # Everything: start b"" and no end.
    assert feed.one({"op": "delete_range", "start": b""})["deleted"] == 1


def txn(
    compare: list[object], success: list[object], failure: Sequence[object] = ()
) -> dict[str, object]:
    return {"op": "txn", "compare": compare, "success": success, "failure": list(failure)}


def test_txn_compares_every_target_and_op(feed: Feeder) -> None:
    feed.apply(put(b"x", b"m"), put(b"x", b"m"))  # x: create 1, mod 2, version 2

    def holds(target: str, op: str, operand: object, key: bytes = b"x") -> bool:
        return bool(feed.one(txn([[key, target, op, operand]], []))["succeeded"])

    cases = [
        ("value", "==", b"m", True),
        ("value", "!=", b"m", False),
        ("value", "<", b"n", True),
        ("value", ">", b"n", False),
        ("value", "==", None, False),
        ("version", "==", 2, True),
        ("version", ">", 1, True),
        ("version", "<", 2, False),
        ("create_revision", "==", 1, True),
        ("mod_revision", "==", 2, True),
        ("mod_revision", "!=", 2, False),
    ]
    for target, op, operand, expected in cases:
        assert holds(target, op, operand) is expected, (target, op, operand)
    # An absent key: value None, numbers 0; a value never orders against absence.
    assert holds("value", "==", None, b"nope") is True
    assert holds("value", "<", b"z", b"nope") is False
    assert holds("value", "!=", b"z", b"nope") is True
    assert holds("version", "==", 0, b"nope") is True
    assert holds("mod_revision", "<", 1, b"nope") is True


def test_txn_runs_one_branch_atomically_at_one_revision(feed: Feeder) -> None:
    feed.one(put(b"k", b"v"))
    ops = [
        ["put", b"a", b"1"],
        ["get", b"a"],  # sees the put before it
        ["put", b"a", b"2"],
        ["delete", b"k"],
        ["scan", b"", None, 0, False, False],
    ]
    r = feed.one(txn([[b"k", "value", "==", b"v"]], ops, [["put", b"f", b"1"]]))
    assert r["succeeded"] is True
    assert r["revision"] == 2
    assert r["results"] == [
        {"prev": None},
        {"kv": [b"a", b"1", 2, 2, 1]},
        {"prev": [b"a", b"1", 2, 2, 1]},
        {"deleted": True, "prev": [b"k", b"v", 1, 1, 1]},
        {"kvs": [[b"a", b"2", 2, 2, 2]], "more": False},
    ]
    # The compare now fails: the failure branch runs.
    r = feed.one(txn([[b"k", "value", "==", b"v"]], ops, [["put", b"f", b"1"], ["get", b"f"]]))
    assert r == {
        "succeeded": False,
        "revision": 3,
        "results": [{"prev": None}, {"kv": [b"f", b"1", 3, 3, 1]}],
    }
    # A txn that only reads changes nothing.
    r = feed.one(txn([], [["get", b"f"], ["delete", b"absent"]]))
    assert r["revision"] == 3
    assert feed.machine.store.revision == 3


def test_compact_drops_history_and_is_idempotent(feed: Feeder) -> None:
    for i in range(10):
        feed.one(put(b"k%d" % i, b"v" * i))
    store = feed.machine.store
    full = store.history_bytes
    assert feed.one({"op": "compact", "revision": 4}) == {"revision": 10, "compact_revision": 4}
    events = dump(store)["events"]
    assert [e[4] for e in events] == list(range(4, 11))
    assert 0 < store.history_bytes < full
    # A lower or equal compaction is a no-op success (retries are harmless).
    assert feed.one({"op": "compact", "revision": 2}) == {"revision": 10, "compact_revision": 4}
    r = feed.one({"op": "compact", "revision": 11})
    assert r["error"] == "future_revision"
    assert feed.one({"op": "compact", "revision": 10})["compact_revision"] == 10
    assert [e[4] for e in dump(store)["events"]] == [10]


def test_history_bytes_counts_what_is_kept(feed: Feeder) -> None:
    feed.apply(put(b"a", b"1" * 100), {"op": "delete", "key": b"a"}, put(b"b", b"2"))
    store = feed.machine.store
    with store.read() as txn, txn.cursor(store.events_db) as cur:
        assert store.history_bytes == sum(len(k) + len(v) for k, v in cur)
    feed.one({"op": "compact", "revision": 3})
    with store.read() as txn, txn.cursor(store.events_db) as cur:
        assert store.history_bytes == sum(len(k) + len(v) for k, v in cur)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xc1garbage", "undecodable"),
        (msgpack.packb([2, "put", b"k", b"v"]), "format"),
        (msgpack.packb([1, "frobnicate", b"k"]), "unknown command"),
        (msgpack.packb([1, "put", b"k" * 512, b"v"]), "exceeds 511"),
        (msgpack.packb([1, "put", "str key", b"v"]), "must be bytes"),
        (msgpack.packb([1, "put", b"k"]), "must have 4"),
        (msgpack.packb({"op": "put"}), "array"),
        (msgpack.packb([1, "txn", [[b"k", "value", "~", b"v"]], [], []]), "compare op"),
        (msgpack.packb([1, "txn", [], [["scan", b"", None, 0, 0, 0, 1]], []]), "limit"),
        (msgpack.packb([1, "compact", 0]), "revision"),
        (msgpack.packb([True, "barrier"]), "format"),
    ],
)
def test_an_invalid_entry_gets_an_error_result_and_changes_nothing(
    feed: Feeder, data: bytes, why: str
) -> None:
    feed.one(put(b"a", b"1"))
    before = dump(feed.machine.store)
    r = feed.raw(data)
    assert r["error"] == "invalid_request"
    assert why in r["message"]
    assert dump(feed.machine.store) == before
    assert feed.machine.stats["invalid"] == 1


def test_an_invalid_entry_amid_valid_ones_only_fails_itself(feed: Feeder) -> None:
    entries = [
        Entry(1, 1, 0, pack_command((FORMAT, "put", b"a", b"1"))),
        Entry(1, 2, 0, b"junk"),
        Entry(1, 3, 0, pack_command((FORMAT, "put", b"b", b"2"))),
    ]
    r = feed.machine.on_apply(entries)
    assert r[0]["revision"] == 1 and r[1]["error"] == "invalid_request" and r[2]["revision"] == 2
    assert feed.machine.last_applied_index() == 3


def test_restart_does_not_reapply_what_the_store_holds(tmp_path: Path) -> None:
    path = str(tmp_path / "kv")
    m = KvStateMachine(path)
    f = Feeder(m)
    entries = f.entries(put(b"a", b"1"), put(b"a", b"2"), {"op": "delete", "key": b"b"})
    m.on_apply(entries[:2])
    assert m.last_applied_index() == 2
    m.on_apply(entries[2:])  # changed nothing: the stored index stays at 2
    assert m.last_applied_index() == 2
    m.close()

    m = KvStateMachine(path)
    assert m.last_applied_index() == 2
    before = dump(m.store)
    # A node that re-delivers from the start (today's node does) gets None for those.
    assert m.on_apply(entries) == [None, None, {"deleted": False, "revision": 2, "prev": None}]
    assert dump(m.store)["kvs"] == before["kvs"]
    assert m.stats["skipped"] == 2
    more = Feeder(m, first_index=4).apply(put(b"c", b"3"))
    assert more == [{"revision": 3, "prev": None}]
    assert m.last_applied_index() == 4
    m.close()


def test_barriers_change_nothing_and_write_nothing(feed: Feeder) -> None:
    feed.one(put(b"a", b"1"))
    commits = feed.machine.stats["commits"]
    assert feed.raw(pack_command((FORMAT, "barrier"))) is None
    assert feed.machine.stats["commits"] == commits
    assert feed.machine.last_applied_index() == 1


def test_listeners_hear_of_changes_only(feed: Feeder) -> None:
    heard: list[int] = []
    feed.machine.add_listener(lambda: heard.append(feed.machine.store.revision))
    feed.one(put(b"a", b"1"))
    feed.one({"op": "delete", "key": b"zz"})
    feed.raw(pack_command((FORMAT, "barrier")))
    feed.one({"op": "delete", "key": b"a"})
    assert heard == [1, 2]


def test_a_full_map_grows_and_the_batch_is_applied_once(tmp_path: Path) -> None:
    m = KvStateMachine(str(tmp_path / "kv"), map_size=1 << 20)
    f = Feeder(m)
    big = b"x" * (200 << 10)
    results = f.apply(*(put(b"k%d" % i, big) for i in range(12)))  # ~5 MiB with history
    assert [r["revision"] for r in results] == list(range(1, 13))
    assert m.stats["map_grown"] >= 1
    assert m.store.revision == 12
    with m.store.read() as txn:
        assert all(m.store.get(txn, b"k%d" % i)[1] == big for i in range(12))  # type: ignore[index]
    m.close()


def test_the_store_refuses_files_of_another_format(tmp_path: Path) -> None:
    import lmdb

    from pyjraft.kv.store import KvStore, KvStoreError

    path = str(tmp_path / "kv")
    KvStore(path).close()
    env = lmdb.open(path, max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"format", (99).to_bytes(8, "big"), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(KvStoreError, match="format 99"):
        KvStore(path)


def test_delayed_commit_reads_see_applies_and_the_timer_makes_them_durable(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        m = KvStateMachine(str(tmp_path / "kv"), commit_delay=0.01)
        f = Feeder(m)
        f.apply(put(b"a", b"1"), put(b"b", b"2"))
        f.apply(put(b"a", b"3"))
        assert m.last_applied_index() == 0  # nothing committed yet...
        with m.store.read() as txn:  # ... but applied, and visible
            assert m.store.get(txn, b"a") == [b"a", b"3", 1, 3, 2]
        assert m.store.revision == 3
        while m.last_applied_index() < 3:  # the timer commits
            await asyncio.sleep(0.005)
        assert m.stats["commits"] == 1
        m.close()

    asyncio.run(main())


def test_delayed_commit_flushes_at_the_entry_bound_and_on_shutdown(tmp_path: Path) -> None:
    async def main() -> None:
        m = KvStateMachine(str(tmp_path / "kv"), commit_delay=3600, commit_max_entries=3)
        f = Feeder(m)
        f.apply(put(b"a", b"1"), put(b"b", b"2"))
        assert m.last_applied_index() == 0
        f.apply(put(b"c", b"3"))
        assert m.last_applied_index() == 3
        f.apply(put(b"d", b"4"))
        m.on_shutdown()
        assert m.last_applied_index() == 4
        m.close()

    asyncio.run(main())


def test_delayed_commit_survives_a_full_map(tmp_path: Path) -> None:
    async def main() -> None:
        m = KvStateMachine(str(tmp_path / "kv"), map_size=1 << 20, commit_delay=3600)
        f = Feeder(m)
        big = b"x" * (100 << 10)
        first = f.apply(*(put(b"a%d" % i, big) for i in range(3)))  # pending, fits
        assert m.stats["map_grown"] == 0 and m.last_applied_index() == 0
        more = f.apply(*(put(b"b%d" % i, big) for i in range(8)))  # does not fit
        assert m.stats["map_grown"] >= 1
        assert [r["revision"] for r in first + more] == list(range(1, 12))
        assert m.store.revision == 11
        m.flush()
        assert m.last_applied_index() == 11
        keys = [kv[0] for kv in dump(m.store)["kvs"]]
        assert keys == [b"a%d" % i for i in range(3)] + [b"b%d" % i for i in range(8)]
        m.close()

    asyncio.run(main())


def test_a_failed_timer_commit_stops_the_machine(tmp_path: Path) -> None:
    async def main() -> None:
        m = KvStateMachine(str(tmp_path / "kv"), commit_delay=0.001)
        f = Feeder(m)

        def broken() -> bool:
            raise OSError(28, "No space left on device")

        m.store.flush = broken  # type: ignore[method-assign]
        f.one(put(b"a", b"1"))
        while m._timer is not None:
            await asyncio.sleep(0.005)
        with pytest.raises(RuntimeError, match="failed to commit"):
            f.one(put(b"b", b"2"))
        del m.store.flush  # type: ignore[method-assign]
        m.store.discard()
        m.store.close()

    asyncio.run(main())
