"""Smoke test of ``python -m pyjraft.bench``: tiny numbers, checks the JSON line only.

Never asserts timings: it only proves the harness starts a cluster, drives
writes to completion, reports, and cleans up its processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

KEYS = ("ops_per_s", "p50_ms", "p99_ms", "p999_ms", "sync", "placement", "concurrency", "payload")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purpose; our children are reaped by the driver.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("placement", ["leader", "client"])
def test_bench_smoke(placement: str) -> None:
    cmd = [sys.executable, "-m", "pyjraft.bench", "--ops", "200", "--concurrency", "8"]
    cmd += ["--payload", "64", "--placement", placement, "--timeout", "25"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=40, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    out = json.loads(last)
    for k in KEYS:
        assert k in out, k
    assert out["ops_per_s"] > 0
    assert out["ok"] == 200
    assert out["sync"] is True
    assert out["placement"] == placement
    assert out["concurrency"] == 8
    assert out["payload"] == 64
    for pid in out["node_pids"]:
        assert not _pid_alive(pid), f"node process {pid} outlived the driver"
