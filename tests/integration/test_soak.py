"""A short fault soak (`pyjraft.testing.soak`): real KV replica processes,
SIGKILL/SIGSTOP/restarts, every client history checked for linearizability.
The long run is ``python -m pyjraft.testing.soak --duration 1800``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyjraft.testing.soak import SoakOptions, main, run_soak

SEED = 7


def test_a_short_soak_keeps_every_history_linearizable(tmp_path: Path) -> None:
    opts = SoakOptions(
        duration=12.0,
        seed=SEED,
        clients=6,
        keys=6,
        snapshot_every=200,
        fault_gap=(0.3, 1.5),
        base=tmp_path,
    )
    rep = asyncio.run(run_soak(opts))
    summary = rep.as_dict()
    assert rep.ok, f"seed={SEED}: {summary} (history in {tmp_path / 'history.jsonl'})"
    assert sum(rep.faults.values()) >= 3, summary
    assert rep.operations["put"] > 100 and rep.operations["get"] > 100, summary
    assert rep.keys_checked == 6 and rep.applied_index > 0, summary


def test_the_soak_command_refuses_unknown_fault_kinds() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--faults", "meteor"])
    assert exit_info.value.code == 2
