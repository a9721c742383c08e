"""Smoke test of ``python -m pyjraft.bench``: tiny numbers, checks the JSON line only.

Never asserts timings: it only proves the harness starts a cluster, drives
writes to completion (or sits idle), reports, and cleans up its processes.
The ``--compare`` run needs PySyncObj (the ``bench`` extra) and is skipped
without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyjraft.bench import driver, floor

KEYS = ("ops_per_s", "p50_ms", "p99_ms", "p999_ms", "sync", "placement", "concurrency", "payload")
SMALL = ("--ops", "200", "--concurrency", "8", "--payload", "64")
"""A tiny closed-loop workload."""
DISK_KEYS = (
    "raw_sync_bw_mb_s",
    "raw_syncs_per_s",
    "raw_sync_batch_bytes",
    "leader_log_mb_s",
    "leader_log_mb_s_framed",
    "disk_bw_ratio",
    "disk_bw_ratio_framed",
    "raw_sync_bw_shared_mb_s",
    "disk_bw_ratio_shared",
    "disk_bw_ratio_shared_framed",
)


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


def _run_bench(
    args: list[str], command: tuple[str, ...] = ("-m", "pyjraft.bench")
) -> dict[str, Any]:
    cmd = [sys.executable, *command, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=40, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    for pid in out.get("node_pids", []):
        assert not _pid_alive(pid), f"node process {pid} outlived the driver"
    return out


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _check_goal(g: dict[str, Any]) -> None:
    assert _number(g["value"]), g
    assert isinstance(g["met"], bool), g
    assert isinstance(g["applies"], bool), g
    assert g["goal"].split()[0] in ("<=", ">="), g


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("placement", "api"), [("leader", "apply"), ("leader", "submit"), ("client", "apply")]
)
def test_bench_smoke(placement: str, api: str) -> None:
    argv = [*SMALL, "--timeout", "25", "--disk-bw-seconds", "0.2", "--placement", placement]
    if placement == "leader":
        argv += ["--api", api]
    out = _run_bench(argv)
    for k in KEYS:
        assert k in out, k
    assert out["ops_per_s"] > 0
    assert out["ok"] == 200
    assert out["sync"] is True
    assert out["placement"] == placement
    assert out["concurrency"] == 8
    assert out["payload"] == 64
    # Durable: the raw disk bandwidth at the leader's bytes per sync, and the goals.
    for k in DISK_KEYS:
        assert _number(out[k]), (k, out.get(k))
    assert out["raw_sync_bw_mb_s"] > 0
    assert out["raw_sync_batch_bytes"] >= 64
    assert out["disk_bw"]["raw"]["batch_bytes"] == out["raw_sync_batch_bytes"]
    assert set(out["goals"]) == {"p50_vs_floor", "disk_bw_ratio"}
    for g in out["goals"].values():
        _check_goal(g)
    assert out["goals"]["p50_vs_floor"]["applies"] is False  # concurrency 8, not 1
    assert out["goals"]["disk_bw_ratio"]["applies"] is False  # 64 B, not 4 KiB


@pytest.mark.timeout(60)
def test_the_pyjraft_command_runs_the_bench() -> None:
    out = _run_bench([*SMALL, "--timeout", "25"], command=("-m", "pyjraft.cli", "bench"))
    assert out["ok"] == 200
    assert out["impl"] == "pyjraft"
    help_text = subprocess.run(
        [sys.executable, "-m", "pyjraft.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert help_text.startswith("usage: pyjraft bench"), help_text[:200]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("placement", "api"), [("leader", "apply"), ("leader", "submit"), ("client", "apply")]
)
def test_bench_measures_for_a_duration(placement: str, api: str) -> None:
    argv = ["--duration", "0.5", "--concurrency", "8", "--payload", "64", "--warmup", "20"]
    out = _run_bench([*argv, "--placement", placement, "--api", api, "--timeout", "25"])
    assert out["duration_s"] == 0.5
    assert out["ops"] is None
    assert out["ok"] > 0
    assert out["errors"] == 0
    assert out["elapsed_s"] >= 0.5, "no write may stop before the duration"


@pytest.mark.timeout(60)
def test_bench_compare_for_a_duration() -> None:
    pytest.importorskip("pysyncobj")
    argv = ["--duration", "0.5", "--concurrency", "8", "--payload", "64", "--warmup", "20"]
    out = _run_bench([*argv, "--no-sync", "--compare", "--pysyncobj-configs", "unbatched"])
    pso = out["pysyncobj_unbatched"]
    assert "error" not in pso, pso
    assert pso["ok"] > 0
    assert pso["elapsed_s"] >= 0.5
    assert _number(out["ratio"])


def test_duration_is_checked() -> None:
    for bad in (["--duration", "0"], ["--duration", "30", "--timeout", "20"]):
        with pytest.raises(SystemExit):
            _args(*bad)
    with pytest.raises(SystemExit):
        _args("--duration", "5", "--idle", "5")
    assert _args("--duration", "2.5").duration == 2.5
    assert _args().duration is None


@pytest.mark.timeout(60)
def test_bench_idle_smoke() -> None:
    out = _run_bench(["--idle", "1", "--timeout", "25"])
    assert out["mode"] == "idle"
    assert out["sync"] is True
    assert _number(out["idle_cpu_pct_of_core"])
    assert out["idle_s"] >= 1.0
    assert len(out["idle_cpu_pct_per_node"]) == 3
    assert all(_number(x) for x in out["idle_cpu_pct_per_node"])
    assert len(out["rss_kib_per_node"]) == 3
    assert all(isinstance(x, int) and x > 0 for x in out["rss_kib_per_node"])
    assert len(out["node_pids"]) == 3
    _check_goal(out["goals"]["idle_cpu_pct_of_core"])
    assert "pysyncobj_tuned_idle" not in out


@pytest.mark.timeout(60)
def test_bench_compare_smoke() -> None:
    pytest.importorskip("pysyncobj")
    argv = [*SMALL, "--no-sync", "--compare", "--pysyncobj-configs", "tuned,unbatched"]
    out = _run_bench([*argv, "--timeout", "30"])
    assert out["pysyncobj_configs"] == ["tuned", "unbatched"]
    assert "pysyncobj_default" not in out
    for tag in ("tuned", "unbatched"):
        assert out[f"pysyncobj_{tag}"]["ok"] == 200
        for k in ("ops_per_s", "p50_ms", "p99_ms"):
            assert _number(out[f"pysyncobj_{tag}_{k}"]), (tag, k)
    assert out["pysyncobj_unbatched"]["sync_obj_conf"]["appendEntriesUseBatch"] is False
    assert out["pysyncobj_best"] in ("tuned", "unbatched")
    assert out["pysyncobj_ops_per_s"] == max(
        out["pysyncobj_tuned_ops_per_s"], out["pysyncobj_unbatched_ops_per_s"]
    )
    assert out["pysyncobj_best_p50_ms"] == min(
        out["pysyncobj_tuned_p50_ms"], out["pysyncobj_unbatched_p50_ms"]
    )
    assert set(out["goals"]) == {"p50_vs_pysyncobj", "ratio"}
    for g in out["goals"].values():
        _check_goal(g)
    assert out["goals"]["ratio"]["goal"] == ">= 2"  # sync off


def _args(*argv: str) -> argparse.Namespace:
    return driver.parse_args(list(argv))


def test_compare_picks_best_throughput_and_lowest_p50_separately() -> None:
    out: dict[str, Any] = {
        "ops_per_s": 3000.0,
        "p50_ms": 0.5,
        "floor_ms": 0.25,
        "shared_floor_ms": 0.4,
        "pysyncobj_default": {"error": "run timed out"},
        "pysyncobj_tuned": {"ok": 10, "ops_per_s": 2000.0, "p50_ms": 4.0, "p99_ms": 6.0},
        "pysyncobj_unbatched": {"ok": 10, "ops_per_s": 1000.0, "p50_ms": 0.4, "p99_ms": 1.0},
    }
    driver._compare(out)
    assert out["pysyncobj_default_ops_per_s"] is None
    assert out["pysyncobj_best"] == "tuned"
    assert out["pysyncobj_ops_per_s"] == 2000.0
    assert out["ratio"] == 1.5
    assert out["pysyncobj_best_p50_ms"] == 0.4
    assert out["pysyncobj_best_p50_config"] == "unbatched"
    assert out["pysyncobj_unbatched_p99_ms"] == 1.0

    durable = driver.compute_goals(_args("--concurrency", "1"), out)
    assert durable["p50_vs_floor"]["value"] == 2.0
    assert durable["p50_vs_floor"]["met"] is True
    assert durable["p50_vs_floor"]["applies"] is True
    assert durable["p50_vs_floor"]["p50_vs_shared_floor"] == 1.25  # informational only
    assert durable["ratio"]["met"] is True  # >= 1.5 durable
    assert "p50_vs_pysyncobj" not in durable

    nosync = driver.compute_goals(_args("--concurrency", "1", "--no-sync"), out)
    assert nosync["p50_vs_pysyncobj"]["value"] == 1.25
    assert nosync["p50_vs_pysyncobj"]["met"] is False
    assert nosync["ratio"]["met"] is False  # < 2 with sync off
    assert "p50_vs_floor" not in nosync


def test_pysyncobj_configs_option() -> None:
    with pytest.raises(SystemExit):
        _args("--pysyncobj-configs", "tuned")  # needs --compare
    assert _args().pysyncobj_configs == ("default", "tuned", "unbatched")
    assert _args("--idle", "1").pysyncobj_configs == ("tuned",)
    pytest.importorskip("pysyncobj")
    with pytest.raises(SystemExit):
        _args("--compare", "--pysyncobj-configs", "tuned,fast")
    assert _args("--compare", "--pysyncobj-configs", "unbatched, tuned").pysyncobj_configs == (
        "unbatched",
        "tuned",
    )


@pytest.mark.parametrize("writers", [1, 3])
def test_raw_sync_bandwidth(tmp_path: Path, writers: int) -> None:
    r = floor.raw_sync_bandwidth(str(tmp_path), 4096, seconds=0.05, writers=writers)
    assert r["batch_bytes"] == 4096
    assert r["writers"] == writers
    assert r["rounds"] >= writers  # each writer syncs at least once
    assert r["mb_per_s"] > 0 and r["syncs_per_s"] > 0
    assert list(tmp_path.iterdir()) == []


def test_raw_sync_bandwidth_reports_a_writer_failure(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        floor.raw_sync_bandwidth(str(tmp_path / "missing"), 4096, seconds=0.05, writers=2)


@pytest.mark.parametrize("writers", [1, 3])
def test_fdatasync_floor_times_every_sync_of_every_writer(tmp_path: Path, writers: int) -> None:
    us = floor.fdatasync_us(str(tmp_path), n=5, size=10, writers=writers)
    assert len(us) == 5 * writers
    assert all(u >= 0 for u in us)
    assert list(tmp_path.iterdir()) == []


def test_fdatasync_floor_reports_a_writer_failure(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        floor.fdatasync_us(str(tmp_path / "missing"), n=5, writers=3)
    with pytest.raises(ValueError, match="writers"):
        floor.fdatasync_us(str(tmp_path), writers=0)


@pytest.mark.timeout(60)
def test_bench_node_data_roots_and_preferred_leader(tmp_path: Path) -> None:
    roots = [tmp_path / f"disk{i}" for i in range(3)]
    for r in roots:
        r.mkdir()
    argv = [*SMALL, "--timeout", "25", "--disk-bw-seconds", "0.2"]
    argv += ["--node-data-roots", ",".join(map(str, roots)), "--leader-node", "2"]
    out = _run_bench(argv)
    assert out["ok"] == 200
    assert out["node_data_roots"] == [str(r) for r in roots]
    assert out["nodes_share_disk"] is True  # one filesystem here
    assert out["leader_node_preferred"] == 2
    # Its election timeout fires at 1-2 s, the others' at 5-10 s.
    assert out["leader_node"] == 2
    assert _number(out["shared_floor_ms"]) and _number(out["raw_sync_bw_mb_s"])
    for r in roots:
        assert list(r.iterdir()) == [], f"{r} not cleaned up"


def test_node_data_roots_and_leader_node_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _args("--node-data-roots", f"{tmp_path},{tmp_path}")  # two, not three
    with pytest.raises(SystemExit):
        _args("--node-data-roots", f"{tmp_path},{tmp_path},{tmp_path / 'missing'}")
    with pytest.raises(SystemExit):
        _args("--leader-node", "3")
    ok = _args("--node-data-roots", f"{tmp_path}, {tmp_path},{tmp_path}", "--leader-node", "0")
    assert ok.node_data_roots == (str(tmp_path),) * 3
    assert ok.leader_node == 0


@pytest.mark.timeout(60)
def test_bench_with_metrics_scrapes_every_node() -> None:
    argv = ["--duration", "1.5", "--concurrency", "8", "--payload", "64", "--warmup", "20"]
    out = _run_bench([*argv, "--metrics", "--metrics-scrape-s", "0.2", "--timeout", "25"])
    assert out["metrics"] is True
    scrapes = out["metrics_scrapes"]
    assert scrapes["failures"] == 0
    assert scrapes["scrapes"] >= 3  # at least one round over the three nodes
    assert scrapes["bytes_per_scrape"] > 1000
