"""Request validation: everything malformed or too large is refused before it
could reach the log, with a message that says why; what is accepted applies."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from pyjraft.kv.protocol import (
    HARD_LIMITS,
    InvalidRequest,
    KvLimits,
    check_command,
    command_from_request,
    read_from_request,
    unpack_command,
)

SMALL = KvLimits(max_key_bytes=8, max_value_bytes=16, max_request_bytes=200, max_txn_ops=2)


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        ([1, 2], "a request is a map"),
        ({"key": b"k"}, "unknown op"),
        ({"op": "frobnicate"}, "unknown op"),
        ({"op": b"put", "key": b"k", "value": b"v"}, "unknown op"),
        ({"op": "put", "key": b"k"}, "needs the field 'value'"),
        ({"op": "put", "key": b"k", "value": b"v", "lease": 5}, "no field 'lease'"),
        ({"op": "put", "key": "k", "value": b"v"}, "key must be bytes"),
        ({"op": "put", "key": b"", "value": b"v"}, "must not be empty"),
        ({"op": "put", "key": b"k" * 9, "value": b"v"}, "key of 9 bytes exceeds 8"),
        ({"op": "put", "key": b"k", "value": b"v" * 17}, "value of 17 bytes exceeds 16"),
        ({"op": "put", "key": b"k", "value": None}, "value must be bytes"),
        ({"op": "cas", "key": b"k", "value": b"v"}, "exactly one of"),
        (
            {
                "op": "cas",
                "key": b"k",
                "value": b"v",
                "expect_value": b"",
                "expect_mod_revision": 1,
            },
            "exactly one of",
        ),
        ({"op": "cas", "key": b"k", "value": b"v", "expect_mod_revision": -1}, "integer"),
        ({"op": "cas", "key": b"k", "value": b"v", "expect_mod_revision": True}, "integer"),
        ({"op": "delete_range"}, "needs start or prefix"),
        ({"op": "delete_range", "prefix": b"a", "start": b"a"}, "either prefix"),
        ({"op": "delete_range", "start": b"a", "end": 5}, "end must be bytes"),
        ({"op": "delete_range", "start": b"a", "prev_kv": 1}, "prev_kv must be a boolean"),
        ({"op": "compact", "revision": 0}, "revision"),
        ({"op": "txn", "compare": "no"}, "compare must be an array"),
        ({"op": "txn", "compare": [[b"k", "value", "=="]]}, "4 elements"),
        ({"op": "txn", "compare": [[b"k", "lease", "==", 1]]}, "compare target"),
        ({"op": "txn", "compare": [[b"k", "version", "<=", 1]]}, "compare op"),
        ({"op": "txn", "compare": [[b"k", "version", "==", b"1"]]}, "integer"),
        ({"op": "txn", "compare": [[b"k", "value", "==", 1]]}, "value must be bytes"),
        ({"op": "txn", "success": [["put", b"k"]]}, "3 elements"),
        ({"op": "txn", "success": [["txn"]]}, "unknown txn op"),
        ({"op": "txn", "success": [[]]}, "txn op"),
        ({"op": "txn", "success": [["put", b"k", b"v"]] * 3}, "3 success ops exceed 2"),
        ({"op": "txn", "failure": [["get", b"k"]] * 3}, "3 failure ops exceed 2"),
        ({"op": "txn", "compare": [[b"k", "version", "==", 1]] * 3}, "3 compares exceed 2"),
        ({"op": "txn", "success": [["scan", b"", None, 10**6, False, False]]}, "limit"),
        (
            {"op": "txn", "success": [["scan", b"", None, 1, False, False, 1 << 40]]},
            "max_bytes",
        ),
        (
            {"op": "txn", "success": [["put", b"k%d" % i, b"v" * 16] for i in range(2)]},
            None,
        ),
    ],
)
def test_writes_refused_before_proposing(request_: Any, why: str | None) -> None:
    if why is None:  # within every limit: accepted
        command_from_request(request_, SMALL)
        return
    with pytest.raises(InvalidRequest, match=why):
        command_from_request(request_, SMALL)


def test_the_encoded_size_is_bounded() -> None:
    limits = KvLimits(max_request_bytes=100)
    command_from_request({"op": "put", "key": b"k", "value": b"v" * 80}, limits)
    with pytest.raises(InvalidRequest, match=r"request of \d+ bytes exceeds 100"):
        command_from_request({"op": "put", "key": b"k", "value": b"v" * 100}, limits)


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        ({"op": "get"}, "needs the field 'key'"),
        ({"op": "get", "key": b"k", "read": "stale"}, "read must be one of"),
        ({"op": "get", "key": b"k", "revision": 3}, "no field"),
        ({"op": "get_many", "keys": b"k"}, "keys must be an array"),
        ({"op": "get_many", "keys": [b"k", 1]}, "key must be bytes"),
        ({"op": "scan", "limit": -1}, "limit"),
        ({"op": "scan", "limit": 10**9}, "limit"),
        ({"op": "scan", "prefix": b"a", "end": b"b"}, "either prefix"),
        ({"op": "scan", "reverse": "yes"}, "reverse must be a boolean"),
        ({"op": "watch", "start_revision": -1}, "start_revision"),
        ({"op": "watch", "wait_ms": 10**9}, "wait_ms"),
        ({"op": "watch", "start": b"k" * 600}, "start of 600 bytes"),
    ],
)
def test_reads_refused(request_: Any, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        read_from_request(request_, KvLimits())


def test_reads_are_normalized() -> None:
    limits = KvLimits(max_scan_limit=50)
    r = read_from_request({"op": "scan", "prefix": b"a\xff"}, limits)
    assert (r.start, r.end, r.limit, r.read) == (b"a\xff", b"b", 50, "linearizable")
    r = read_from_request({"op": "scan", "prefix": b"\xff\xff"}, limits)
    assert (r.start, r.end) == (b"\xff\xff", None)
    r = read_from_request({"op": "get", "key": b"k", "read": "serializable"}, limits)
    assert (r.key, r.read) == (b"k", "serializable")
    # A key watch is the range [key, key + NUL); the bound may be one byte over.
    key = b"k" * 511
    r = read_from_request({"op": "watch", "start": key, "end": key + b"\0"}, limits)
    assert r.limit == limits.max_watch_events


def test_a_txn_scan_carries_its_limit_and_budget_into_the_log() -> None:
    limits = KvLimits(max_scan_limit=7, max_reply_bytes=1234)
    data = command_from_request(
        {"op": "txn", "success": [["scan", b"a", None, 0, True, False]]}, limits
    )
    cmd = unpack_command(data)
    assert cmd[3] == (("scan", b"a", None, 7, True, False, 1234),)


def test_every_accepted_command_passes_the_hard_check() -> None:
    # What the service proposes under any configured limits, every replica applies.
    reqs = [
        {"op": "put", "key": b"k" * 511, "value": b"v" * 5000},
        {"op": "cas", "key": b"k", "value": b"", "expect_value": None},
        {"op": "delete_range", "start": b""},
        {"op": "txn", "success": [["scan", b"", None, 0, False, True]]},
        {"op": "compact", "revision": 1},
    ]
    for r in reqs:
        check_command(unpack_command(command_from_request(r, KvLimits())), HARD_LIMITS)


def test_hard_check_refuses_what_lmdb_cannot_store() -> None:
    with pytest.raises(InvalidRequest, match="exceeds 511"):
        check_command((1, "put", b"k" * 512, b""), HARD_LIMITS)
    with pytest.raises(InvalidRequest, match="undecodable"):
        unpack_command(b"\xc1")
    # Maps never appear in commands; a map key that is not a string does not decode.
    with pytest.raises(InvalidRequest):
        unpack_command(msgpack.packb({1: 2}))


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_key_bytes"):
        KvLimits(max_key_bytes=512)
    with pytest.raises(ValueError, match="max_value_bytes"):
        KvLimits(max_value_bytes=0)
