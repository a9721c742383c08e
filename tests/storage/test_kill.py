"""A real crash: SIGKILL a process appending with sync=True, then recover its log.

Every index the child acknowledged (printed after `append` returned) must be
present with identical bytes; anything after it must be a valid prefix too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyjraft.core.types import EntryType
from pyjraft.storage import SegmentLogStorage
from tests.storage.crash_writer import payload

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("crash_writer.py")
RUN_LIMIT_S = 20.0


def run_and_kill(directory: Path, seed: int, acks_wanted: int) -> int:
    """Start the writer, let it acknowledge ``acks_wanted`` batches, SIGKILL it;
    return the last acknowledged index."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    acked = 0
    deadline = time.monotonic() + RUN_LIMIT_S
    try:
        assert proc.stdout is not None
        for _ in range(acks_wanted):
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"seed={seed}: writer exited early: {err}")
            acked = int(line)
            if time.monotonic() > deadline:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    return acked


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_loses_no_acknowledged_entry(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    directory = tmp_path / "log"
    total_acked = 0
    # Two kill rounds per seed: the second one starts from a recovered log.
    for round_ in range(2):
        acked = run_and_kill(directory, seed * 10 + round_, rng.randint(20, 300))
        assert acked >= total_acked
        total_acked = acked
        log = SegmentLogStorage(directory)
        try:
            last = log.last_index()
            assert last >= acked, f"seed={seed} round={round_}: acked {acked}, recovered {last}"
            got = log.entries(1, last + 1)
            for e in got:
                assert (e.term, e.type, e.data) == (1, EntryType.NORMAL, payload(e.index)), (
                    f"seed={seed} round={round_} index={e.index}"
                )
            assert [e.index for e in got] == list(range(1, last + 1))
        finally:
            log.close()
