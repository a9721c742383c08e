"""``pyjraft kv ...`` and the synchronous client, against a one-replica server."""

from __future__ import annotations

import io
import json
import os
import random
import sys
from typing import Any

import pytest

from pyjraft.cli import main as pyjraft_main
from pyjraft.kv import Compare, KeyValue, Op, SyncClient
from pyjraft.kv.cli import parse_txn_spec
from tests.kv.conftest import ServerThread

pytestmark = pytest.mark.timeout(60)


def kv(server: ServerThread, capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> Any:
    """Run ``pyjraft kv ARGS --peers ADDR``; return (status, stdout bytes)."""
    status = pyjraft_main(["kv", *args, "--peers", server.addr])
    out = capsysbinary.readouterr().out
    return status, out


def test_put_get_delete_from_the_shell(
    server: ServerThread, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: Any
) -> None:
    assert kv(server, capsysbinary, "get", "k") == (1, b"")  # absent: exit 1, nothing printed
    assert kv(server, capsysbinary, "put", "k", "héllo") == (0, b"1\n")
    assert kv(server, capsysbinary, "get", "k") == (0, "héllo\n".encode())
    assert kv(server, capsysbinary, "get", "k", "--read", "serializable") == (
        0,
        "héllo\n".encode(),
    )
    status, out = kv(server, capsysbinary, "get", "k", "--json")
    assert status == 0
    assert json.loads(out) == {
        "key": "k",
        "value": "héllo",
        "create_revision": 1,
        "mod_revision": 1,
        "version": 1,
    }
    assert kv(server, capsysbinary, "put", "k", "x", "--if-absent")[0] == 1
    assert kv(server, capsysbinary, "put", "k", "x", "--expect-value", "héllo") == (0, b"2\n")
    assert kv(server, capsysbinary, "put", "k", "y", "--expect-mod-revision", "1")[0] == 1
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\x00\xff")))
    status, out = kv(server, capsysbinary, "put", "bin", "--stdin", "--json")
    assert status == 0 and json.loads(out)["revision"] == 3
    assert kv(server, capsysbinary, "get", "bin") == (0, b"\x00\xff\n")
    assert kv(server, capsysbinary, "delete", "k") == (0, b"1\n")
    assert kv(server, capsysbinary, "delete", "k") == (0, b"0\n")
    assert kv(server, capsysbinary, "get", "k", "--json") == (1, b"null\n")


def test_scan_txn_compact_watch_status_from_the_shell(
    server: ServerThread, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: Any
) -> None:
    for k in ("a/1", "a/2", "b"):
        kv(server, capsysbinary, "put", k, k.upper())
    assert kv(server, capsysbinary, "scan", "--prefix", "a/") == (0, b"a/1\tA/1\na/2\tA/2\n")
    assert kv(server, capsysbinary, "scan", "--reverse", "--limit", "1", "--keys-only") == (
        0,
        b"b\n",
    )
    status, out = kv(server, capsysbinary, "scan", "--start", "a/2", "--json")
    assert [x["key"] for x in json.loads(out)["kvs"]] == ["a/2", "b"]

    spec = {
        "compare": [["b", "value", "==", "B"], ["c", "version", "==", 0]],
        "success": [["put", "c", "C"], ["get", "a/1"], ["delete_range", "a/", "a0"]],
        "failure": [],
    }
    status, out = kv(server, capsysbinary, "txn", json.dumps(spec), "--json")
    assert status == 0
    result = json.loads(out)
    assert result["succeeded"] is True and result["revision"] == 4
    assert result["results"][1]["value"] == "A/1" and result["results"][2]["deleted"] == 2
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(spec).encode())))
    status, out = kv(server, capsysbinary, "txn", "-")
    assert status == 1 and out.startswith(b"FAILED revision 4")

    status, out = kv(
        server, capsysbinary, "watch", "--prefix", "a/", "--start-revision", "1", "--count", "4"
    )
    assert status == 0
    assert out.splitlines() == [
        b"PUT\t1\ta/1\tA/1",
        b"PUT\t2\ta/2\tA/2",
        b"DELETE\t4\ta/1",
        b"DELETE\t4\ta/2",
    ]
    assert kv(server, capsysbinary, "compact", "3") == (0, b"3\n")
    status, out = kv(server, capsysbinary, "watch", "b", "--start-revision", "1", "--count", "1")
    assert status == 1  # compacted
    status, out = kv(server, capsysbinary, "status")
    assert status == 0 and json.loads(out)["kv"]["compact_revision"] == 3


def test_non_utf8_bytes_round_trip_and_print_as_base64(
    server: ServerThread, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    with SyncClient([server.addr]) as c:
        c.put(b"\xff\x00", b"\x80")
    status, out = kv(server, capsysbinary, "scan", "--json")
    assert json.loads(out)["kvs"][0]["key"] == {"base64": "/wA="}
    status, out = kv(
        server,
        capsysbinary,
        "get",
        os.fsdecode(b"\xff\x00"),  # argv as Python hands over undecodable bytes
    )
    assert (status, out) == (0, b"\x80\n")


def test_usage_errors() -> None:
    assert pyjraft_main(["kv", "get", "k", "--peers", "127.0.0.1:1", "--deadline", "0.2"]) == 1
    with pytest.raises(SystemExit):
        pyjraft_main(["kv", "frobnicate"])
    with pytest.raises(ValueError, match="unknown op"):
        parse_txn_spec({"success": [["launch", "k"]]})
    with pytest.raises(ValueError, match="an object"):
        parse_txn_spec([])
    serve = ["kv", "serve", "--id", "127.0.0.1:1", "--peers", "127.0.0.1:1", "--data-dir", "d"]
    for bad in ("127.0.0.1:1", "127.0.0.1:1=nowhere", "x=127.0.0.1:2"):
        with pytest.raises(SystemExit) as exit_info:
            pyjraft_main([*serve, "--gateway-peers", bad])
        assert exit_info.value.code == 2  # a usage error, before anything starts


def test_the_sync_client(server: ServerThread) -> None:
    with SyncClient(server.addr, rng=random.Random(3)) as c:
        assert c.put("a", "1").revision == 1
        assert c.get("a") == KeyValue(b"a", b"1", 1, 1, 1)
        assert c.put_if_absent("a", "2").succeeded is False
        assert c.compare_and_set("a", "2", expect_mod_revision=1).succeeded
        assert c.get_many(["a", "b"]).kvs[1] is None
        assert [x.key for x in c.scan(prefix="a").kvs] == [b"a"]
        t = c.txn([Compare(b"a", "value", "==", b"2")], [Op.put(b"b", b"3")])
        assert t.succeeded and t.revision == 3
        events = c.watch(prefix="", start_revision=1)
        assert [next(events).revision for _ in range(3)] == [1, 2, 3]
        assert c.delete_range(prefix="").deleted == 2
        assert c.delete("a").deleted is False
        assert c.compact(2).compact_revision == 2
        assert c.status()["kv"]["revision"] == 4
