"""The deterministic cluster simulator: seeded faults, Figure 3 safety checks.

``python -m pyjraft.testing.sim --seeds N`` runs many seeds; `run_seed`
runs one and returns a `SimResult` whose ``violation`` says what broke.
"""

from pyjraft.testing.sim.checker import SafetyChecker, SafetyViolation, Violation
from pyjraft.testing.sim.cluster import SimOptions, SimResult, Simulation, run_seed

__all__ = [
    "SafetyChecker",
    "SafetyViolation",
    "SimOptions",
    "SimResult",
    "Simulation",
    "Violation",
    "run_seed",
]
