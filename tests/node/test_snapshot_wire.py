"""The ``raft.snapshot`` service's requests (hostile input), and the helpers a
save leans on: paced writeback and the idle I/O class."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from pyjraft.node import ioprio, writeback
from pyjraft.node.snapshot_wire import (
    EndRequest,
    MetaRequest,
    Offer,
    ReadRequest,
    SnapshotRequestError,
    end_request,
    meta_request,
    offer_request,
    parse_request,
    read_request,
)

T = b"t" * 16


def test_every_request_parses_back_to_what_was_built() -> None:
    offer = Offer("g", "a:1", 3, T, 100, 5)
    assert parse_request(offer_request(offer)) == offer
    assert parse_request(meta_request("g", T)) == MetaRequest("g", T)
    assert parse_request(read_request("g", T, "f", 10, 4096)) == ReadRequest("g", T, "f", 10, 4096)
    assert parse_request(end_request("g", T, False, "x" * 600)) == EndRequest(
        "g", T, False, "x" * 512
    )


@pytest.mark.parametrize(
    "bad",
    [
        None,
        b"meta",
        {"op": 1},
        {"op": "meta", "group": "g"},
        {"op": "meta", "group": "g", "transfer": T, "more": 1},
        {"op": "meta", "group": "", "transfer": T},
        {"op": "meta", "group": "g" * 2000, "transfer": T},
        {"op": "meta", "group": "g", "transfer": "t" * 16},
        {"op": "meta", "group": "g", "transfer": T + b"x"},
        {"op": "read", "group": "g", "transfer": T, "file": "f", "offset": -1, "size": 1},
        {"op": "read", "group": "g", "transfer": T, "file": "f", "offset": 0, "size": 0},
        {"op": "read", "group": "g", "transfer": T, "file": "f", "offset": 0, "size": 1 << 30},
        {"op": "read", "group": "g", "transfer": T, "file": "f", "offset": True, "size": 1},
        {"op": "read", "group": "g", "transfer": T, "file": b"f", "offset": 0, "size": 1},
        {
            "op": "offer",
            "group": "g",
            "leader": "a",
            "term": 0,
            "transfer": T,
            "index": 1,
            "size": 0,
        },
        {
            "op": "offer",
            "group": "g",
            "leader": "a",
            "term": 1,
            "transfer": T,
            "index": 0,
            "size": 0,
        },
        {
            "op": "offer",
            "group": "g",
            "leader": "a",
            "term": 1,
            "transfer": T,
            "index": 1,
            "size": -1,
        },
        {"op": "end", "group": "g", "transfer": T, "ok": 1, "reason": ""},
        {"op": "end", "group": "g", "transfer": T, "ok": True, "reason": "x" * 513},
    ],
)
def test_malformed_requests_are_refused(bad: Any) -> None:
    with pytest.raises(SnapshotRequestError):
        parse_request(bad)


@pytest.mark.skipif(writeback._sync_file_range is None, reason="Linux sync_file_range only")
def test_writeback_is_paced_at_the_rate(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(os.urandom(3 * writeback.RANGE_BYTES + 10))
    (tmp_path / "b").write_bytes(b"")
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    rate = 8 * writeback.RANGE_BYTES  # 8 ranges a second
    total = writeback.pace_writeback(str(tmp_path), rate, sleep=sleep, clock=lambda: now[0])
    assert total == 3 * writeback.RANGE_BYTES + 10
    # Each range waits until the rate allows the bytes handed over so far.
    assert slept == pytest.approx([0.125, 0.125, 0.125, 10 / rate])
    assert writeback.pace_writeback(str(tmp_path), 0, sleep=sleep, clock=lambda: now[0]) == total
    assert len(slept) == 4, "no limit: no pause"


@pytest.mark.skipif(ioprio._SYS is None, reason="Linux ioprio only")
def test_a_save_thread_writes_in_the_idle_io_class_and_restores_its_own() -> None:
    assert ioprio._SYS is not None
    libc, _, get = ioprio._SYS
    before = libc.syscall(get, 1, 0)
    with ioprio.idle_io():
        assert libc.syscall(get, 1, 0) >> 13 == 3, "IOPRIO_CLASS_IDLE"
    assert libc.syscall(get, 1, 0) == before


def test_off_linux_the_helpers_do_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(writeback, "_sync_file_range", None)
    monkeypatch.setattr(ioprio, "_SYS", None)
    (tmp_path / "a").write_bytes(b"x" * 10)
    assert writeback.pace_writeback(str(tmp_path), 1) == 0
    with ioprio.idle_io():
        pass
    assert sys.platform  # nothing raised
