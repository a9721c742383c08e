"""The deterministic cluster simulator: seeded faults, Figure 3 safety checks,
the `Ready` contract checked directly, and planted bugs it must catch.

``python -m pyjraft.testing.sim --seeds N`` runs many seeds (``--mutants``
runs the planted bugs of `pyjraft.testing.sim.mutants`); `run_seed` runs one
and returns a `SimResult` whose ``violation`` says what broke.
"""

from pyjraft.testing.sim.checker import SafetyChecker, SafetyViolation, Violation
from pyjraft.testing.sim.cluster import Simulation, run_seed
from pyjraft.testing.sim.options import REGIMES, Profile, SimOptions, SimResult

__all__ = [
    "REGIMES",
    "Profile",
    "SafetyChecker",
    "SafetyViolation",
    "SimOptions",
    "SimResult",
    "Simulation",
    "Violation",
    "run_seed",
]
