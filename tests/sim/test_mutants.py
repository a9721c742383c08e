"""The simulator catches every planted bug of `pyjraft.testing.sim.mutants`.

Each mutant, with 3 and with 5 nodes, must be caught within the first 100
seeds (the long run, ``python -m pyjraft.testing.sim --mutants --seeds 2000``,
also checks that at least 5% of seeds catch it). Seeds are the first 100,
fixed, so a failure names the mutant and reproduces exactly.
"""

from __future__ import annotations

import pytest

from pyjraft.testing.sim import SimOptions, run_seed
from pyjraft.testing.sim.mutants import MUTANTS
from pyjraft.testing.sim.runner import score_mutant

SEED_BUDGET = 100


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("name", [m.name for m in MUTANTS])
def test_planted_bug_is_caught_within_the_seed_budget(name: str, nodes: int) -> None:
    score = score_mutant(name, nodes, range(SEED_BUDGET), stop_at_first=True)
    assert score.caught, (
        f"mutant {name} with {nodes} nodes survived seeds 0..{SEED_BUDGET - 1}: the simulator "
        "no longer finds this bug"
    )


def test_every_mutant_breaks_something() -> None:
    # A mutant that overrides nothing of the core is the real core: its test
    # would then fail by design, but say why here.
    from pyjraft.core.raft import RaftCore

    for m in MUTANTS:
        assert m.factory is not RaftCore
        own = set(vars(m.factory)) - {"__module__", "__doc__", "__qualname__", "__firstlineno__"}
        assert own - {"__static_attributes__"}, f"{m.name} overrides nothing"


def test_the_correct_core_passes_the_specialist_regimes() -> None:
    for regime in ("figure8", "stale", "churn"):
        for seed in range(15):
            for nodes in (3, 5):
                res = run_seed(seed, SimOptions(nodes=nodes, regime=regime))
                assert res.violation is None, f"seed={seed} nodes={nodes} {regime}: {res.violation}"
