"""The simulator's own machinery: it survives what cores throw at it, and its
checks are sound (no alarm for what Raft allows)."""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

from pyjraft.core import conf as confs
from pyjraft.core.config import CoreConfig
from pyjraft.core.messages import VoteResponse
from pyjraft.core.raft import RaftCore
from pyjraft.core.types import ConfState, Entry, EntryType, HardState, Role
from pyjraft.storage.memory import MemoryLogStorage
from pyjraft.testing.sim import SafetyChecker, SafetyViolation, SimOptions, run_seed
from pyjraft.testing.sim.contract import ContractChecker
from pyjraft.testing.sim.disk import SimDisk
from pyjraft.testing.sim.membership import ConfInForceCheck, _check_quorums_overlap


class ExplodingCore(RaftCore):
    """Raises from its tenth step: the runner must report it, not die."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self, m: Any) -> None:
        self.steps += 1
        if self.steps == 10:
            raise KeyError("planted")
        super().step(m)


class SpinningCore(RaftCore):
    """`has_ready` stays true once it has led, with nothing to hand out."""

    def has_ready(self) -> bool:
        return self.role is Role.LEADER or super().has_ready()


def test_an_exception_from_a_core_is_a_violation_with_its_seed() -> None:
    res = run_seed(5, SimOptions(nodes=3, core_factory=ExplodingCore))
    assert res.violation is not None
    assert res.violation.prop == "exception"
    assert "KeyError" in res.violation.detail and "planted" in res.violation.detail


def test_a_spinning_core_is_a_violation() -> None:
    res = run_seed(1, SimOptions(nodes=3, faults=False, chaos_ticks=50, core_factory=SpinningCore))
    assert res.violation is not None and res.violation.prop == "spin", res.violation


def test_the_command_line_scores_a_mutant_over_every_seed() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyjraft.testing.sim",
            "--mutants",
            "vote-before-durable",
            "--seeds",
            "3",
            "--nodes",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "vote-before-durable" in out.stdout and "caught 3/3" in out.stdout


def _core(nid: str, term: int, entries: list[Entry], role: Role) -> RaftCore:
    log = MemoryLogStorage()
    log.append(entries)
    core = RaftCore(
        CoreConfig(id=nid, voters=("a", "b", "c")), log, HardState(term), random.Random(1)
    )
    core.role = role
    return core


def test_leader_completeness_ignores_what_later_terms_committed() -> None:
    checker = SafetyChecker()
    # A leader of term 3 commits index 1 (an entry of term 3).
    l3 = _core("a", 3, [Entry(3, 1, 0, b"x")], Role.LEADER)
    l3.log.committed = 1
    checker.check_commit("a", l3)
    # A leader of term 2 elected late, from votes of that term, lacks it: allowed.
    checker.record_vote("c", 2, "b")
    late = _core("b", 2, [], Role.LEADER)
    checker.check_role("b", late)
    # A leader of term 4 lacking it breaks leader completeness.
    checker.record_vote("c", 4, "b")
    bad = _core("b", 4, [], Role.LEADER)
    try:
        checker.check_role("b", bad)
    except SafetyViolation as exc:
        assert exc.violation.prop == "leader completeness"
    else:
        raise AssertionError("a leader of a later term lacking a committed entry went unnoticed")


def test_a_vote_sent_after_the_voter_moved_to_a_later_term_is_sound() -> None:
    disks = {n: SimDisk() for n in "abc"}
    contract = ContractChecker(disks, lambda n: None)
    disks["a"].meta.save(HardState(3, "a"))
    # Granted in term 2, sent once term 3 is durable: it can never vote in 2 again.
    contract.on_send(VoteResponse("default", 2, "a", "b", True))
    disks["a"].meta.save(HardState(2, ""))
    try:
        contract.on_send(VoteResponse("default", 2, "a", "b", True))
    except SafetyViolation as exc:
        assert exc.violation.prop == "ready contract"
    else:
        raise AssertionError("a vote sent before it was durable went unnoticed")


def test_a_leader_elected_without_a_majority_of_votes_of_its_term_is_caught() -> None:
    checker = SafetyChecker()
    checker.record_vote("b", 4, "a")
    checker.check_role("a", _core("a", 4, [], Role.LEADER))  # a and b: a majority of 3
    try:
        checker.check_role("c", _core("c", 5, [], Role.LEADER))  # c alone
    except SafetyViolation as exc:
        assert exc.violation.prop == "election safety"
    else:
        raise AssertionError("a leader without votes went unnoticed")


def test_consecutive_configurations_must_share_a_quorum() -> None:
    old = ConfState(("n1", "n2", "n3"))
    # Sound steps: one voter added or removed; into and out of a joint configuration.
    for new in (
        ConfState(("n1", "n2", "n3", "n4")),
        ConfState(("n1", "n2")),
        ConfState(("n1", "n4", "n5"), (), ("n1", "n2", "n3")),
        ConfState(("n1", "n2", "n3"), ("n4",)),
    ):
        _check_quorums_overlap("n1", 7, old, new)
    _check_quorums_overlap(
        "n1",
        8,
        ConfState(("n1", "n4", "n5"), (), ("n1", "n2", "n3")),
        ConfState(("n1", "n4", "n5")),
    )
    # A leap without the joint step: {n2, n3} and {n4, n5} are quorums of each.
    try:
        _check_quorums_overlap("n1", 7, old, ConfState(("n1", "n4", "n5")))
    except SafetyViolation as exc:
        assert exc.violation.prop == "configuration overlap"
    else:
        raise AssertionError("a change of two voters at once passed the overlap check")


def test_a_node_using_an_older_configuration_than_its_log_is_caught() -> None:
    log = MemoryLogStorage()
    core = RaftCore(
        CoreConfig(id="n1", voters=("n1", "n2", "n3")), log, HardState(), random.Random(1)
    )
    check = ConfInForceCheck()
    check.started("n1", core, ConfState(("n1", "n2", "n3")))
    check.check("n1", core)
    newer = ConfState(("n1", "n2", "n3"), ("n4",))
    entry = Entry(1, 1, int(EntryType.CONFIG), confs.encode(newer))
    check.appended("n1", [entry])  # handed out, but the core never took it into force
    try:
        check.check("n1", core)
    except SafetyViolation as exc:
        assert exc.violation.prop == "configuration in force"
    else:
        raise AssertionError("a configuration left out of force passed the check")
    check.appended("n1", [Entry(2, 1, int(EntryType.NORMAL), b"x")])
    check.appended("n1", [Entry(2, 1, int(EntryType.NORMAL), b"y")])
    # Truncated away from index 1: the start-up configuration rules again.
    check.appended("n1", [Entry(1, 2, int(EntryType.NORMAL), b"z")])
    check.check("n1", core)
