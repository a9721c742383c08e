"""``pyjraft demo``: the quick key-value demo end to end, its Ctrl-C cleanup, its
loss check, --tls, and the counter walk-through (``--counter``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pyjraft.demo.kv_demo import check_replicas
from pyjraft.testing.kv_cluster import kv_serve_takes_tls

ROOT = Path(__file__).resolve().parents[2]


def _demo(*args: str, pid_file: Path | None = None, **kw: object) -> subprocess.Popen[str]:
    env = dict(os.environ)
    if pid_file is not None:
        env["PYJRAFT_DEMO_PID_FILE"] = str(pid_file)
    return subprocess.Popen(
        [sys.executable, "-m", "pyjraft.cli", "demo", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def _alive(pid: int) -> bool:
    # A zombie is not alive for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pids(pid_file: Path) -> list[int]:
    return [int(x) for x in pid_file.read_text().split()] if pid_file.exists() else []


def test_quick_demo_checks_every_acknowledged_write(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    proc = _demo("--quick", pid_file=pid_file)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["lost_acknowledged_writes"] == 0, out
    assert summary["stale_reads"] == 0, out
    assert summary["ops"] > 0 and summary["ops_per_s"] > 0
    assert summary["acknowledged_writes"] > 0 and summary["reads"] > 0
    assert summary["failover_ms"] is not None and summary["failover_ms"] > 0
    assert summary["replicas_identical"] is True
    assert "kill -9 the leader" in out and "caught up" in out
    # 3 replicas plus the killed leader's restart, all gone.
    pids = _pids(pid_file)
    assert len(pids) == 4
    assert not [p for p in pids if _alive(p)]


def test_sigint_stops_every_replica(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    proc = _demo("--quick", pid_file=pid_file)
    assert proc.stdout is not None
    data_dir = None
    lines = []
    # Wait for the load to run: the cluster is up and has a leader.
    for line in proc.stdout:
        lines.append(line)
        if "starting 3 KV replicas" in line:
            data_dir = Path(line.split("(data in ", 1)[1].split(")")[0])
        if "leader elected" in line:
            break
    assert data_dir is not None and data_dir.exists(), "".join(lines)
    assert len(_pids(pid_file)) == 3
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    assert not [p for p in _pids(pid_file) if _alive(p)]
    assert not data_dir.exists()


def test_the_check_finds_a_missing_or_changed_write() -> None:
    acked = {b"demo/00/1": b"a", b"demo/00/2": b"b", b"demo/01/1": b"c"}
    good = dict(acked)
    res = check_replicas(acked, {}, {"n1": good, "n2": dict(good), "n3": dict(good)})
    assert res["lost_acknowledged_writes"] == 0 and res["replicas_identical"]
    missing = {k: v for k, v in good.items() if k != b"demo/00/2"}
    changed = {**good, b"demo/01/1": b"other"}
    stores = {"n1": {**good, b"demo/02/1": b"u"}, "n2": missing, "n3": changed}
    res = check_replicas(acked, {b"demo/02/1": b"u"}, stores)
    assert res["lost_acknowledged_writes"] == 2
    assert res["lost_per_node"] == {"n1": 0, "n2": 1, "n3": 1}
    assert res["replicas_identical"] is False
    assert res["unknown_outcome_applied"] == 1


def test_tls_runs_over_mutual_tls_or_says_why_not() -> None:
    proc = _demo("--quick", "--tls")
    out, _ = proc.communicate(timeout=180)
    if kv_serve_takes_tls():
        assert proc.returncode == 0, out
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["tls"] is True and summary["lost_acknowledged_writes"] == 0
        assert "over mutual TLS" in out
    else:
        # Until `pyjraft kv serve` takes certificates, --tls refuses clearly.
        assert proc.returncode == 2, out
        assert "--tls-cert" in out and "pyjraft demo --counter --tls" in out


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_counter_walkthrough(tls: bool) -> None:
    proc = _demo("--counter", *(["--tls"] if tls else []))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "counter = 45 (expected 45): no acknowledged increment was lost" in out
    assert ("over mutual TLS" in out) == tls
