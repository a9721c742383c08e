"""``python -m pyjraft.bench kv``: a tiny run end to end (with etcd when it is on
the PATH, else the clear skip message), and the report's arithmetic."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from pyjraft.bench.kv import aggregate, parse_args, verdict

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_reports_each_workload_and_the_read_path() -> None:
    cmd = [sys.executable, "-m", "pyjraft.bench", "kv", "--seconds", "0.3", "--warmup", "0"]
    cmd += ["--repeat", "1", "--concurrency", "2", "--keys", "20", "--compare", "etcd"]
    cmd += ["--workloads", "put,get-linearizable,get-log,get-serializable", "--timeout", "120"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    table = out["aggregate"]["table"]
    for w in ("put", "get-linearizable", "get-log", "get-serializable"):
        cell = table[f"pyjraft {w} c=2"]
        assert cell["ops_per_s"]["median"] > 0 and cell["errors"] == 0, cell
    # What each read cost in log entries is measured: a txn read is one entry,
    # a serializable read none.
    assert table["pyjraft get-log c=2"]["log_entries_per_read"] >= 0.99
    assert table["pyjraft get-serializable c=2"]["log_entries_per_read"] == 0
    assert table["pyjraft get-linearizable c=2"]["via"]
    if shutil.which("etcd"):
        assert table["etcd put c=2"]["ops_per_s"]["median"] > 0
        assert table["etcd get-linearizable c=2"]["ops_per_s"]["median"] > 0
        assert set(out["aggregate"]["ratios"]) >= {"put c=2", "get-linearizable c=2"}
        assert out["goals"]["c=2"]["put_ratio"] is not None
    else:
        assert "apt-get install etcd-server" in out["etcd_skipped"]
        assert "etcd comparison skipped" in proc.stdout


def _r(impl: str, workload: str, c: int, ops: float, rnd: int) -> dict[str, object]:
    return {
        "impl": impl,
        "workload": workload,
        "concurrency": c,
        "round": rnd,
        "ops_per_s": ops,
        "ok": 10,
        "errors": 0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "client_cpu_pct": 10.0,
    }


def test_medians_ranges_and_ratios() -> None:
    results = [_r("pyjraft", "put", 64, v, i) for i, v in enumerate((900.0, 1200.0, 1000.0))] + [
        _r("etcd", "put", 64, v, i) for i, v in enumerate((500.0, 400.0, 600.0))
    ]
    results += [
        _r("pyjraft", "get-lease", 64, 800.0, 0),
        _r("etcd", "get-linearizable", 64, 1000.0, 0),
    ]
    agg = aggregate(results)
    assert agg["table"]["pyjraft put c=64"]["ops_per_s"] == {
        "median": 1000,
        "min": 900,
        "max": 1200,
    }
    assert agg["ratios"]["put c=64"] == 2.0
    # Lease reads are compared with etcd's linearizable read (etcd has no lease reads).
    assert agg["ratios"]["get-lease c=64"] == 0.8
    v = verdict(agg, [64])["c=64"]
    assert v["put_goal_met"] is True and v["read_ratio"] is None


def test_without_etcd_on_the_path_the_comparison_is_skipped_with_the_install_hint(
    monkeypatch: object,
) -> None:
    from pyjraft.bench import etcd

    monkeypatch.setattr(etcd, "etcd_binary", lambda: None)  # type: ignore[attr-defined]
    args = parse_args(["--compare", "etcd"], "bench kv")
    assert args.compare is None
    assert "apt-get install etcd-server" in args.etcd_skipped
