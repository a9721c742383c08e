"""The asyncio client against a one-replica server over loopback TCP: every
operation, its errors, watches, and the service's answers to bad requests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pyjraft.client import ServiceError
from pyjraft.kv import (
    Client,
    CompactedError,
    Compare,
    Event,
    InvalidRequestError,
    KeyValue,
    KvLimits,
    Op,
)
from pyjraft.transport import RpcClient
from tests.kv.conftest import ServerThread

pytestmark = pytest.mark.timeout(60)


def run(server: ServerThread, body: Callable[[Client], Awaitable[None]]) -> None:
    async def main() -> None:
        client = Client([server.addr], deadline=10.0, rng=random.Random(1), watch_wait=0.5)
        try:
            await asyncio.wait_for(body(client), 30)
        finally:
            await client.close()

    asyncio.run(main())


def test_put_get_delete(server: ServerThread) -> None:
    async def body(kv: Client) -> None:
        assert await kv.get(b"k") is None
        p = await kv.put(b"k", b"v1")
        assert p.revision == 1 and p.prev is None
        p = await kv.put("k", "v2")  # str is UTF-8
        assert p.revision == 2 and p.prev == KeyValue(b"k", b"v1", 1, 1, 1)
        assert await kv.get(b"k") == KeyValue(b"k", b"v2", 1, 2, 2)
        for read in ("linearizable", "lease", "serializable"):
            kvr = await kv.get(b"k", read=read)  # type: ignore[arg-type]
            assert kvr is not None and kvr.value == b"v2"
        d = await kv.delete(b"k")
        assert d.deleted and d.revision == 3 and d.prev is not None and d.prev.value == b"v2"
        d = await kv.delete(b"k")
        assert not d.deleted and d.revision == 3 and d.prev is None
        assert await kv.get(b"k") is None

    run(server, body)


def test_get_many_and_scans(server: ServerThread) -> None:
    async def body(kv: Client) -> None:
        for k in (b"a", b"b/1", b"b/2", b"b/3", b"c"):
            await kv.put(k, k * 2)
        g = await kv.get_many([b"a", b"zz", b"c"])
        assert [x.value if x else None for x in g.kvs] == [b"aa", None, b"cc"]
        assert g.revision == 5
        s = await kv.scan(prefix=b"b/")
        assert [x.key for x in s.kvs] == [b"b/1", b"b/2", b"b/3"] and not s.more
        s = await kv.scan(prefix=b"b/", limit=2, reverse=True)
        assert [x.key for x in s.kvs] == [b"b/3", b"b/2"] and s.more and s.revision == 5
        s = await kv.scan(b"a", b"b/2", keys_only=True)
        assert [(x.key, x.value) for x in s.kvs] == [(b"a", b""), (b"b/1", b"")]
        assert [x.key async for x in kv.scan_all(page=2)] == [b"a", b"b/1", b"b/2", b"b/3", b"c"]
        assert [x.key async for x in kv.scan_all(prefix=b"b/", page=1, reverse=True)] == [
            b"b/3",
            b"b/2",
            b"b/1",
        ]
        s = await kv.scan(read="serializable")
        assert len(s.kvs) == 5

    run(server, body)


def test_conditional_writes(server: ServerThread) -> None:
    async def body(kv: Client) -> None:
        r = await kv.put_if_absent(b"lock", b"me")
        assert r.succeeded and r.revision == 1
        r = await kv.put_if_absent(b"lock", b"you")
        assert not r.succeeded and r.prev is not None and r.prev.value == b"me"
        r = await kv.compare_and_set(b"lock", b"you", expect_value=b"nope")
        assert not r.succeeded and r.revision == 1
        r = await kv.compare_and_set(b"lock", b"you", expect_value=b"me")
        assert r.succeeded and r.revision == 2
        r = await kv.compare_and_set(b"lock", b"x", expect_mod_revision=1)
        assert not r.succeeded and r.prev is not None and r.prev.mod_revision == 2
        r = await kv.compare_and_set(b"lock", b"x", expect_mod_revision=2)
        assert r.succeeded
        r = await kv.compare_and_set(b"new", b"x", expect_value=None)
        assert r.succeeded
        with pytest.raises(ValueError, match="exactly one"):
            await kv.compare_and_set(b"k", b"v")

    run(server, body)


def test_delete_range_and_txn(server: ServerThread) -> None:
    async def body(kv: Client) -> None:
        for i in range(5):
            await kv.put(b"r/%d" % i, b"%d" % i)
        dr = await kv.delete_range(b"r/1", b"r/3", prev_kv=True)
        assert dr.deleted == 2 and [x.key for x in dr.prev_kvs] == [b"r/1", b"r/2"]
        t = await kv.txn(
            [Compare(b"r/0", "value", "==", b"0"), Compare(b"r/9", "version", "==", 0)],
            [Op.put(b"r/9", b"9"), Op.get(b"r/9"), Op.scan(prefix=b"r/"), Op.delete(b"r/0")],
            [Op.put(b"failed", b"1")],
        )
        assert t.succeeded and t.revision == 7
        put, got, scan, deleted = t.results
        assert put.prev is None and put.revision == 7
        assert got == KeyValue(b"r/9", b"9", 7, 7, 1)
        assert [x.key for x in scan.kvs] == [b"r/0", b"r/3", b"r/4", b"r/9"]
        assert deleted.deleted and deleted.prev.key == b"r/0"
        t = await kv.txn(
            [Compare(b"r/0", "value", "==", b"0")], [], [Op.delete_range(prefix=b"r/")]
        )
        assert not t.succeeded and t.results[0].deleted == 3
        dr = await kv.delete_range(prefix=b"")
        assert dr.deleted == 0

    run(server, body)


def test_compact_and_errors_in_results(server: ServerThread) -> None:
    async def body(kv: Client) -> None:
        for i in range(4):
            await kv.put(b"k", b"%d" % i)
        c = await kv.compact(3)
        assert (c.revision, c.compact_revision) == (4, 3)
        with pytest.raises(ServiceError, match="future_revision"):
            await kv.compact(99)
        st = await kv.status()
        assert st["role"] == "leader"
        assert st["kv"]["revision"] == 4 and st["kv"]["compact_revision"] == 3

    run(server, body)


def test_invalid_requests_get_a_clear_error(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(limits=KvLimits(max_key_bytes=16, max_value_bytes=64))

    async def body(kv: Client) -> None:
        with pytest.raises(InvalidRequestError, match="value of 65 bytes exceeds 64"):
            await kv.put(b"k", b"v" * 65)
        with pytest.raises(InvalidRequestError, match="key of 17 bytes exceeds 16"):
            await kv.get(b"k" * 17)
        with pytest.raises(InvalidRequestError, match="must not be empty"):
            await kv.put(b"", b"v")
        with pytest.raises(InvalidRequestError, match="compare op"):
            await kv.txn([Compare(b"k", "value", "~", b"v")])  # type: ignore[arg-type]
        # Nothing of it reached the log.
        st = await kv.status()
        assert st["kv"]["revision"] == 0 and st["kv"]["service"]["invalid"] == 4
        rpc = RpcClient()
        try:
            for bad in (None, [1], {"op": "drop_all"}, {"op": "delete_range", "prefix": 5}):
                reply = await rpc.call(server.addr, "kv", bad)
                assert reply["error"] == "invalid_request", bad
        finally:
            await rpc.close()

    run(server, body)


async def take(w: Any, n: int) -> list[Event]:
    out = []
    async for ev in w:
        out.append(ev)
        if len(out) == n:
            break
    return out


def test_watch_a_key_and_a_prefix(server: ServerThread) -> None:
    async def body(kv: Client) -> None:
        await kv.put(b"before", b"0")
        key_watch = kv.watch(b"w/k", start_revision=2)
        prefix_watch = kv.watch(prefix=b"w/", start_revision=2)
        key_events = asyncio.ensure_future(take(key_watch, 3))
        prefix_events = asyncio.ensure_future(take(prefix_watch, 4))
        await kv.put(b"w/k", b"1")
        await kv.put(b"w/other", b"x")
        await kv.put(b"w/k", b"2")
        await kv.put(b"elsewhere", b"y")
        await kv.delete(b"w/k")
        got = await key_events
        assert [(e.type, e.kv.value, e.revision, e.kv.version) for e in got] == [
            ("put", b"1", 2, 1),
            ("put", b"2", 4, 2),
            ("delete", b"", 6, 0),
        ]
        got = await prefix_events
        assert [(e.type, e.kv.key, e.revision) for e in got] == [
            ("put", b"w/k", 2),
            ("put", b"w/other", 3),
            ("put", b"w/k", 4),
            ("delete", b"w/k", 6),
        ]

    run(server, body)


def test_watch_from_a_past_revision_replays_history(server: ServerThread) -> None:
    async def body(kv: Client) -> None:
        for i in range(5):
            await kv.put(b"h", b"%d" % i)
        async with kv.watch(b"h", start_revision=2) as w:
            got = await take(w, 4)
        assert [e.kv.value for e in got] == [b"1", b"2", b"3", b"4"]
        # Compacted away: a clear error that says where history starts.
        await kv.compact(4)
        with pytest.raises(CompactedError) as info:
            await take(kv.watch(b"h", start_revision=2), 1)
        assert info.value.compact_revision == 4
        assert [e.revision for e in await take(kv.watch(b"h", start_revision=4), 2)] == [4, 5]

    run(server, body)


def test_watch_splits_a_big_revision_without_losing_events(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(limits=KvLimits(max_watch_events=3))

    async def body(kv: Client) -> None:
        for i in range(10):
            await kv.put(b"m/%02d" % i, b"x")
        w = kv.watch(prefix=b"m/", start_revision=11)
        pending = asyncio.ensure_future(take(w, 10))
        await kv.delete_range(prefix=b"m/")  # revision 11: ten events
        got = await pending
        assert [e.kv.key for e in got] == [b"m/%02d" % i for i in range(10)]
        assert {e.revision for e in got} == {11}
        assert w.next_revision == 12

    run(server, body)


def test_a_watch_poll_answers_empty_when_nothing_happens(server: ServerThread) -> None:
    async def body(kv: Client) -> None:
        await kv.put(b"x", b"1")
        w = kv.watch(b"quiet")
        assert await w.poll() == []
        assert w.revision == 1 and w.next_revision == 2

    run(server, body)
