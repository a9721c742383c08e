"""``python -m pyjraft.bench.memory``: its log builder, and a tiny end-to-end run.

Never asserts memory figures or timings: it proves the tool builds a log that
`SegmentLogStorage` accepts, starts a cluster that recovers it, drives writes,
reports the JSON line, and cleans up its processes and directories.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyjraft.bench.memory import GOAL_RSS_MIB, build_log, parse_size, seal_log
from pyjraft.core.types import EntryType
from pyjraft.storage import SegmentLogStorage


def test_parse_size() -> None:
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("64M") == 64 << 20
    assert parse_size("1.5k") == 1536
    assert parse_size("1000000") == 1_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")


@pytest.mark.parametrize("batch", [1, 7])
def test_built_log_is_a_valid_log(tmp_path: Path, batch: int) -> None:
    d = str(tmp_path / "log")
    info = build_log(d, 20_000, 50, batch, 4096)
    assert info["log_bytes"] >= 20_000 and info["segments"] >= 4
    assert info["entries"] == info["batches"] * batch
    last, _ = seal_log(d, 4096)
    assert last == info["entries"]
    log = SegmentLogStorage(d, segment_bytes=4096)
    try:
        got = log.entries(1, last + 1)
        assert got[0].type == int(EntryType.NOOP) and got[0].data == b""
        assert {e.term for e in got} == {1}
        assert all(e.type == int(EntryType.NORMAL) and len(e.data) == 50 for e in got[1:])
        assert [e.index for e in got] == list(range(1, last + 1))
    finally:
        log.close()
    # Sealing wrote the sidecar indexes of every segment but the last.
    names = os.listdir(d)
    assert sum(n.endswith(".idx") for n in names) == info["segments"] - 1


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_memory_bench_smoke(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pyjraft.bench.memory", "--log-bytes", "1MiB", "--batch", "10"]
    cmd += ["--concurrency", "20", "--seconds", "1", "--timeout", "90"]
    cmd += ["--data-root", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["goal_rss_mib"] == GOAL_RSS_MIB
    assert isinstance(out["ok"], bool)
    assert out["max_rss_mib"] > 0
    assert out["writes"] > 0 and out["write_errors"] == {}
    assert len(out["nodes"]) == 3
    for n in out["nodes"]:
        for k in ("open_s", "caught_up_s", "rss_after_recovery_mib", "load_peak_mib"):
            assert n[k] > 0, k
    assert out["open_alone"]["last_index"] == out["entries"]
    assert os.listdir(tmp_path) == [], "temp data dirs left behind"
    for pid in out["node_pids"]:
        assert not _pid_alive(pid), f"node process {pid} outlived the tool"
