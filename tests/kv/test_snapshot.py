"""Snapshot save and load of the KV state machine, called directly as the node
will: a consistent copy while applies go on, loaded into another replica."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.protocol import FORMAT, pack_command
from pyjraft.kv.store import KvStoreError
from tests.kv.helpers import Feeder, dump


@dataclass
class Writer:
    index: int
    term: int
    directory: str
    user_meta: bytes = b""


@dataclass
class Reader:
    index: int
    term: int
    directory: str


def filled(path: Path, n: int, value_size: int = 100) -> tuple[KvStateMachine, Feeder]:
    m = KvStateMachine(str(path))
    f = Feeder(m)
    for start in range(0, n, 500):
        f.apply(
            *(
                {"op": "put", "key": b"key%06d" % i, "value": os.urandom(value_size)}
                for i in range(start, min(n, start + 500))
            )
        )
    return m, f


def test_the_copy_is_the_state_at_save_time_whatever_is_applied_after(tmp_path: Path) -> None:
    m, f = filled(tmp_path / "a", 2000)
    at_save = dump(m.store)
    writer = Writer(f.index, 1, str(tmp_path / "snap"))
    copy = m.on_snapshot_save(writer)
    # Applies go on before the copy runs...
    f.apply(
        {"op": "put", "key": b"key000001", "value": b"changed"},
        {"op": "delete_range", "start": b""},
    )
    after = dump(m.store)
    assert after["kvs"] == []
    copy()
    # ... and the copy does not see them.
    fresh = KvStateMachine(str(tmp_path / "b"))
    fresh.on_snapshot_load(Reader(writer.index, 1, writer.directory))
    assert dump(fresh.store) == at_save
    assert msgpack.unpackb(writer.user_meta) == {
        "format": 1,
        "revision": at_save["revision"],
        "index": writer.index,
    }
    m.close()
    fresh.close()


def test_save_on_a_worker_thread_while_writes_go_on(tmp_path: Path) -> None:
    m, f = filled(tmp_path / "a", 20_000, value_size=500)
    at_save = dump(m.store)
    writer = Writer(f.index, 1, str(tmp_path / "snap"))
    copy = m.on_snapshot_save(writer)
    done = threading.Event()

    def run() -> None:
        try:
            copy()
        finally:
            done.set()

    t = threading.Thread(target=run)
    t.start()
    written = 0
    while True:  # writes commit while the copy runs (at least one, maybe after it)
        f.one({"op": "put", "key": b"new%06d" % written, "value": b"v"})
        written += 1
        if done.is_set():
            break
    t.join()
    print(f"{written} writes committed while the copy ran")
    fresh = KvStateMachine(str(tmp_path / "b"))
    fresh.on_snapshot_load(Reader(writer.index, 1, writer.directory))
    assert dump(fresh.store) == at_save
    assert dump(m.store)["revision"] == at_save["revision"] + written
    m.close()
    fresh.close()


def test_load_replaces_the_state_and_applying_continues_from_it(tmp_path: Path) -> None:
    src, fs = filled(tmp_path / "src", 10)
    writer = Writer(fs.index, 2, str(tmp_path / "snap"))
    src.on_snapshot_save(writer)()
    # The target has other data, further along in revisions but behind in the log.
    dst = KvStateMachine(str(tmp_path / "dst"))
    fd = Feeder(dst)
    for _ in range(3):
        fd.apply(*({"op": "put", "key": b"other", "value": b"%d" % j} for j in range(10)))
    heard: list[int] = []
    dst.add_listener(lambda: heard.append(dst.store.revision))
    assert dst.on_snapshot_load(Reader(writer.index, 2, writer.directory)) is None
    assert heard == [10]
    assert dump(dst.store) == dump(src.store)
    assert dst.last_applied_index() == writer.index
    # The next entries apply on top, as on the source.
    nxt = Feeder(dst, first_index=writer.index + 1)
    same = Feeder(src, first_index=writer.index + 1)
    req = {"op": "put", "key": b"key000003", "value": b"x"}
    assert nxt.apply(req) == same.apply(req)
    assert dump(dst.store) == dump(src.store)
    src.close()
    dst.close()


def test_save_records_an_index_past_trailing_entries_that_changed_nothing(tmp_path: Path) -> None:
    m, f = filled(tmp_path / "a", 3)
    f.raw(pack_command((FORMAT, "barrier")))
    f.one({"op": "delete", "key": b"absent"})
    assert m.last_applied_index() == 3
    writer = Writer(f.index + 2, 1, str(tmp_path / "snap"))  # config/no-op entries too
    m.on_snapshot_save(writer)()
    assert m.last_applied_index() == writer.index
    fresh = KvStateMachine(str(tmp_path / "b"))
    fresh.on_snapshot_load(Reader(writer.index, 1, writer.directory))
    assert fresh.last_applied_index() == writer.index
    m.close()
    fresh.close()


def test_save_refuses_a_state_ahead_of_the_snapshot_index(tmp_path: Path) -> None:
    m, f = filled(tmp_path / "a", 3)
    with pytest.raises(RuntimeError, match="from the future"):
        m.on_snapshot_save(Writer(f.index - 1, 1, str(tmp_path / "snap")))
    m.close()


def test_load_waits_for_a_copy_in_flight(tmp_path: Path) -> None:
    src, fs = filled(tmp_path / "src", 5)
    writer = Writer(fs.index, 1, str(tmp_path / "snap"))
    src.on_snapshot_save(writer)()
    dst, fd = filled(tmp_path / "dst", 2)
    copy = dst.on_snapshot_save(Writer(fd.index, 1, str(tmp_path / "snap2")))

    async def main() -> None:
        pending = dst.on_snapshot_load(Reader(writer.index, 1, writer.directory))
        assert asyncio.iscoroutine(pending)
        task = asyncio.ensure_future(pending)
        await asyncio.sleep(0)
        assert not task.done()  # blocked on the copy, the loop is not
        await asyncio.to_thread(copy)
        await task

    asyncio.run(main())
    assert dump(dst.store) == dump(src.store)
    # The copy that finished first is whole too.
    other = KvStateMachine(str(tmp_path / "other"))
    other.on_snapshot_load(Reader(fd.index, 1, str(tmp_path / "snap2")))
    assert other.store.revision == 2
    for m in (src, dst, other):
        m.close()


@pytest.mark.parametrize("kind", ["missing", "garbage", "not-kv"])
def test_a_bad_snapshot_is_refused_and_the_store_kept(tmp_path: Path, kind: str) -> None:
    m, f = filled(tmp_path / "a", 4)
    before = dump(m.store)
    snap = tmp_path / "snap"
    snap.mkdir()
    if kind == "garbage":
        (snap / "data.mdb").write_bytes(b"\0garbage" * 2000)
    elif kind == "not-kv":
        import lmdb

        env = lmdb.open(str(snap))
        with env.begin(write=True) as txn:
            txn.put(b"a", b"b")
        env.close()
    with pytest.raises(KvStoreError):
        m.on_snapshot_load(Reader(99, 1, str(snap)))
    assert dump(m.store) == before
    f.one({"op": "put", "key": b"still", "value": b"works"})
    m.close()


def test_save_commits_what_a_delayed_commit_holds(tmp_path: Path) -> None:
    async def main() -> None:
        m = KvStateMachine(str(tmp_path / "a"), commit_delay=3600)
        f = Feeder(m)
        f.apply(*({"op": "put", "key": b"k%d" % i, "value": b"v"} for i in range(5)))
        assert m.last_applied_index() == 0
        writer = Writer(f.index, 1, str(tmp_path / "snap"))
        m.on_snapshot_save(writer)()
        assert m.last_applied_index() == 5
        fresh = KvStateMachine(str(tmp_path / "b"))
        fresh.on_snapshot_load(Reader(writer.index, 1, writer.directory))
        assert dump(fresh.store) == dump(m.store)
        # Loading drops what is pending: the snapshot is the whole state.
        f.one({"op": "put", "key": b"pending", "value": b"x"})
        m.on_snapshot_load(Reader(writer.index, 1, writer.directory))
        assert dump(m.store) == dump(fresh.store)
        m.close()
        fresh.close()

    asyncio.run(main())
