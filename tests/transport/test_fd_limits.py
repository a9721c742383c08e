"""File-descriptor exhaustion, in a child process with RLIMIT_NOFILE lowered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def child(scenario: str, limit: int) -> tuple[dict[str, Any], str]:
    res = subprocess.run(
        [sys.executable, "-m", "tests.transport.fd_limit_child", scenario, str(limit)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1]), res.stderr


@pytest.mark.parametrize("loop_kind", ["subprocess"], indirect=False)
def test_the_server_keeps_a_reserve_of_descriptors(loop_kind: str) -> None:
    out, log = child("reserve", 200)
    assert out["stats"]["accept_pauses"] >= 1
    assert out["paused_at_fds"] <= 200 - 40 + 2, out
    assert out["files_opened_in_reserve"] == 30
    assert out["served_while_paused"] and out["answered_after_resume"]
    assert out["stats"]["fd_exhausted"] == 0  # never reached the limit
    assert "not accepting connections while fewer than the reserve of 40" in log
    assert "accepting connections again" in log


@pytest.mark.parametrize("loop_kind", ["subprocess"], indirect=False)
def test_emfile_on_accept_is_logged_and_survived(loop_kind: str) -> None:
    out, log = child("emfile", 100)
    assert out["stats"]["fd_exhausted"] >= 1
    assert out["served_meanwhile"] and out["answered_after"]
    assert "cannot accept a connection: EMFILE" in log
    assert "open connections are still served" in log
    assert "Too many open files" in out["connect_error"], out
    assert out["client_fd_exhausted"] == 1
    assert "out of file descriptors" in log
