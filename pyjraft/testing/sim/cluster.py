"""A deterministic, event-driven simulation of a raft cluster of pure cores.

Theory of operation
-------------------
One `random.Random(seed)` decides everything: fault intensities for the
run, tick jitter, message delay, loss, duplication and reordering,
partitions (symmetric and one-way), crashes and restarts, and when clients
propose. Events (ticks, deliveries, proposals, faults) sit in a heap keyed by
time, so a run with the same seed replays exactly.

Each node owns in-memory durable state (log and term/vote) that survives a
crash; everything else (the core, its unstable tail, its applied state) is
lost. After every event the touched node's `Ready` is handled exactly as a
runtime must (eager messages, persist, messages, apply, advance), with
optional crashes between those steps, and the `SafetyChecker` checks the
Figure 3 properties. After the chaos phase every fault heals and the run
must converge: a leader within a bound, and every acknowledged proposal
applied on every node.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from pyjraft.core.config import CoreConfig
from pyjraft.core.errors import NotLeaderError
from pyjraft.core.messages import Message
from pyjraft.core.raft import RaftCore
from pyjraft.core.ready import Ready
from pyjraft.core.types import Entry, EntryType, NodeId, Role
from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage
from pyjraft.testing.sim.checker import SafetyChecker, SafetyViolation, Violation

TICK = 100
"""Simulated time units per nominal tick; message delays are in these units."""

_TICK, _DELIVER, _PROPOSE, _FAULT, _HEAL, _WRITTEN, _KILL = range(7)

_FAULTS_MIXED = ("partition", "oneway", "isolate", "crash", "crash_leader", "restart", "heal")
_FAULTS_CHURN = ("crash_leader", "restart", "restart", "isolate", "heal", "partition")


@dataclass(slots=True)
class SimOptions:
    """Shape of one simulated run; fault intensities are drawn per seed on top."""

    nodes: int = 3
    chaos_ticks: int = 300
    """How long faults are injected."""
    election_bound_ticks: int = 150
    """After healing, a leader must exist within this many ticks."""
    converge_bound_ticks: int = 600
    """After healing, every acknowledged proposal must be applied everywhere within
    this, or else be getting there: see ``progress_bound_ticks``."""
    progress_bound_ticks: int = 150
    """Past ``converge_bound_ticks``, a run that has not converged must still apply
    something somewhere at least this often (a follower catching up thousands of
    entries one per message, one message in flight, is slow, not stuck), and
    converge within ``converge_cap_ticks`` of healing in any case."""
    converge_cap_ticks: int = 6000
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    faults: bool = True
    regime: str | None = None
    """Force a fault regime ("mixed" or "churn"); None lets the seed choose."""
    core_factory: Any = None
    """Builds a core from (config, log, hard_state, rng); lets tests inject broken cores."""


@dataclass(slots=True)
class SimResult:
    """What a run did, and the first violation if any."""

    seed: int
    violation: Violation | None = None
    entries_committed: int = 0
    proposals_acked: int = 0
    messages: int = 0
    elections: int = 0
    ticks: int = 0
    events: int = 0


@dataclass(slots=True)
class _Node:
    nid: NodeId
    log: MemoryLogStorage = field(default_factory=MemoryLogStorage)
    meta: MemoryMetaStorage = field(default_factory=MemoryMetaStorage)
    core: RaftCore | None = None
    incarnation: int = 0
    applied: int = 0
    writing: Ready | None = None


class Simulation:
    """One seeded run. `run()` returns a `SimResult`; it never raises for a violation."""

    def __init__(self, seed: int, options: SimOptions | None = None) -> None:
        self.seed = seed
        self.opt = options or SimOptions()
        self.rng = random.Random(seed)
        rng = self.rng
        ids = [f"n{i + 1}" for i in range(self.opt.nodes)]
        self.ids = ids
        self.nodes = {nid: _Node(nid) for nid in ids}
        self.checker = SafetyChecker()
        self.now = 0
        self._seq = 0
        self._events: list[tuple[int, int, int, Any]] = []
        self.cut: set[tuple[NodeId, NodeId]] = set()
        faults = self.opt.faults
        # Per-seed fault intensities: different seeds explore different regimes.
        self.drop = rng.choice([0.0, 0.01, 0.05, 0.2]) if faults else 0.0
        self.dup = rng.choice([0.0, 0.02, 0.1]) if faults else 0.0
        self.max_delay = rng.choice([5, 30, 150]) if faults else 5
        # Links are FIFO like a TCP stream, except for this share of messages,
        # which may overtake others (reconnects, retransmission across paths).
        self.reorder = rng.choice([0.0, 0.01, 0.1]) if faults else 0.0
        self._link_clock: dict[tuple[NodeId, NodeId], int] = {}
        self.fault_every = rng.choice([3, 10, 30, 100]) * TICK
        # Some seeds churn leaders hard: the schedules that break commit rules
        # (paper Figure 8) need leaders to die between two of their messages.
        self.fault_actions = rng.choice([_FAULTS_MIXED, _FAULTS_CHURN])
        if self.opt.regime is not None:
            self.fault_actions = _FAULTS_CHURN if self.opt.regime == "churn" else _FAULTS_MIXED
        # In the churn regime new leaders often die young: a few message delays
        # after winning, often mid-way through repairing followers' logs.
        self.kill_new_leaders = 0.0
        if self.fault_actions is _FAULTS_CHURN:
            self.fault_every = rng.choice([1, 2, 4]) * TICK
            self.kill_new_leaders = rng.choice([0.2, 0.5])
        self.crash_mid_ready = rng.choice([0.0, 0.002, 0.01]) if faults else 0.0
        self.propose_every = rng.choice([2, 10, 40]) * TICK // 10
        self.healed = False
        # Half the seeds run Readies the way `pyjraft.node.Node` does: the write
        # takes time, the core keeps stepping meanwhile, and a leader's appends go
        # out between Readies. The other half handle each Ready atomically.
        self.write_delay = rng.choice([0, 0, 3, 20])
        self.pending: dict[tuple[NodeId, int, int], bytes] = {}
        self.acked: dict[bytes, int] = {}
        self._proposal_no = 0
        self.result = SimResult(seed)
        for nid in ids:
            self._start(nid)
            self._schedule(rng.randrange(TICK), _TICK, (nid, 1))
        self._schedule(self.propose_every, _PROPOSE, None)
        if faults:
            self._schedule(self.fault_every, _FAULT, None)
        self._schedule(self.opt.chaos_ticks * TICK, _HEAL, None)

    # -- events --------------------------------------------------------------

    def _schedule(self, delay: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + delay, self._seq, kind, payload))

    def _start(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        cfg = CoreConfig(
            id=nid,
            voters=tuple(self.ids),
            election_ticks=self.opt.election_ticks,
            heartbeat_ticks=self.opt.heartbeat_ticks,
            max_inflight_msgs=self.rng.choice([1, 4, 256]),
            max_entries_per_msg=1 if self.kill_new_leaders else self.rng.choice([1, 8, 4096]),
        )
        core_rng = random.Random(self.rng.getrandbits(64))
        factory = self.opt.core_factory or RaftCore
        node.core = factory(cfg, node.log, node.meta.load(), core_rng)
        node.incarnation += 1
        node.applied = 0

    def _crash(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        node.core = None
        node.writing = None  # a write in flight when the process died is lost

    def run(self) -> SimResult:
        """Run the chaos phase, heal, and check convergence."""
        try:
            self._run()
        except SafetyViolation as exc:
            self.result.violation = exc.violation
        self.result.entries_committed = len(self.checker.committed)
        self.result.proposals_acked = len(self.acked)
        self.result.ticks = self.now // TICK
        return self.result

    def _run(self) -> None:
        opt = self.opt
        heal_at = opt.chaos_ticks * TICK
        leader_deadline = heal_at + opt.election_bound_ticks * TICK
        converge_deadline = heal_at + opt.converge_bound_ticks * TICK
        converge_cap = heal_at + opt.converge_cap_ticks * TICK
        leader_seen = False
        applied_sum = -1
        progress_at = 0
        while self._events:
            t, _, kind, payload = heapq.heappop(self._events)
            self.now = t
            self.result.events += 1
            touched = self._dispatch(kind, payload)
            if touched is not None:
                self._drain(touched)
                core = self.nodes[touched].core
                if core is not None:
                    self.checker.check_role(touched, core)
            if self.healed:
                if not leader_seen:
                    leader_seen = self._leader() is not None
                    if not leader_seen and t > leader_deadline:
                        self._liveness(f"no leader {opt.election_bound_ticks} ticks after healing")
                if leader_seen and self._converged():
                    return
                if t > converge_deadline:
                    now_sum = sum(node.applied for node in self.nodes.values())
                    if now_sum != applied_sum:
                        applied_sum, progress_at = now_sum, t
                    stalled = t - progress_at > opt.progress_bound_ticks * TICK
                    if stalled or t > converge_cap:
                        self._liveness(self._convergence_report(stalled))

    def _liveness(self, detail: str) -> None:
        raise SafetyViolation(Violation("liveness", "-", detail))

    def _dispatch(self, kind: int, payload: Any) -> NodeId | None:
        if kind == _TICK:
            nid: NodeId = payload[0]
            core = self.nodes[nid].core
            # Clocks drift: each node's tick length varies a little.
            self._schedule(TICK + self.rng.randrange(-5, 6), _TICK, payload)
            if core is None:
                return None
            core.tick()
            return nid
        if kind == _DELIVER:
            msg: Message = payload
            core = self.nodes[msg.dst].core
            if core is None or (msg.src, msg.dst) in self.cut:
                return None
            core.step(msg)
            return msg.dst
        if kind == _PROPOSE:
            if self.healed:
                return None  # convergence is judged on what was proposed during chaos
            self._schedule(self.propose_every, _PROPOSE, None)
            return self._propose()
        if kind == _FAULT:
            self._schedule(self.fault_every + self.rng.randrange(self.fault_every), _FAULT, None)
            if not self.healed:
                self._fault()
            return None
        if kind == _HEAL:
            self._heal()
            return None
        if kind == _KILL:
            node = self.nodes[payload[0]]
            if node.core is not None and node.incarnation == payload[1] and not self.healed:
                self._crash(node.nid)
            return None
        if kind == _WRITTEN:
            nid, incarnation = payload[0], payload[1]
            rd: Ready = payload[2]
            node = self.nodes[nid]
            if node.core is None or node.incarnation != incarnation or node.writing is not rd:
                return None
            node.writing = None
            self._finish_ready(node, node.core, rd)
            return nid
        raise AssertionError(kind)

    def _propose(self) -> NodeId | None:
        leaders = [n for n in self.ids if (c := self.nodes[n].core) and c.role is Role.LEADER]
        if not leaders:
            return None
        nid = self.rng.choice(leaders)
        node = self.nodes[nid]
        assert node.core is not None
        if node.core.log.last_index() - node.core.log.committed > 1000:
            return None  # overloaded: a runtime's bounded queue refuses here
        n = self.rng.choice([1, 1, 1, 5, 20])
        datas = []
        for _ in range(n):
            self._proposal_no += 1
            datas.append(f"{self.seed}:{self._proposal_no}".encode())
        try:
            last = node.core.propose_batch(datas)
        except NotLeaderError:
            return None
        first = last - len(datas) + 1
        for i, d in enumerate(datas):
            self.pending[(nid, node.incarnation, first + i)] = d
        return nid

    def _fault(self) -> None:
        rng = self.rng
        ids = self.ids
        action = rng.choice(self.fault_actions)
        if action == "partition":
            side = set(rng.sample(ids, rng.randrange(1, len(ids))))
            self.cut = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
        elif action == "oneway":
            a, b = rng.sample(ids, 2)
            self.cut.add((a, b))
        elif action == "isolate":
            a = rng.choice(ids)
            self.cut = {(x, y) for x in ids for y in ids if a in (x, y) and x != y}
        elif action == "crash":
            alive = [n for n in ids if self.nodes[n].core is not None]
            if alive:
                self._crash(rng.choice(alive))
        elif action == "crash_leader":
            leaders = [n for n in ids if (c := self.nodes[n].core) and c.role is Role.LEADER]
            if leaders:
                self._crash(rng.choice(leaders))
        elif action == "restart":
            dead = [n for n in ids if self.nodes[n].core is None]
            if dead:
                self._start(rng.choice(dead))
        else:
            self.cut = set()

    def _heal(self) -> None:
        self.healed = True
        self.cut = set()
        self.drop = self.dup = self.reorder = 0.0
        self.crash_mid_ready = 0.0
        self.max_delay = 5
        for nid in self.ids:
            if self.nodes[nid].core is None:
                self._start(nid)

    # -- the runtime's side of Ready -----------------------------------------

    def _send(self, msgs: list[Message]) -> None:
        rng = self.rng
        for m in msgs:
            self.result.messages += 1
            if self.drop and rng.random() < self.drop:
                continue
            copies = 2 if self.dup and rng.random() < self.dup else 1
            link = (m.src, m.dst)
            for _ in range(copies):
                at = self.now + 1 + rng.randrange(self.max_delay)
                if not (self.reorder and rng.random() < self.reorder):
                    at = max(at, self._link_clock.get(link, 0))
                    self._link_clock[link] = at
                self._schedule(at - self.now, _DELIVER, m)

    def _drain(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        rng = self.rng
        if node.core is not None and self.write_delay:
            self._send(node.core.take_eager_messages())
        while (core := node.core) is not None and node.writing is None and core.has_ready():
            rd = core.ready()
            if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
                self.result.elections += 1
                if not self.healed and rng.random() < self.kill_new_leaders:
                    self._schedule(
                        1 + rng.randrange(4 * self.max_delay), _KILL, (nid, node.incarnation)
                    )
            # Log matching is judged on what the core hands out to be written.
            self.checker.check_append(nid, core, rd.entries)
            self._send(rd.eager_messages)
            if self.crash_mid_ready and rng.random() < self.crash_mid_ready:
                self._crash(nid)  # before anything of this Ready is durable
                return
            if self.write_delay and rd.must_sync:
                node.writing = rd
                delay = 1 + rng.randrange(self.write_delay)
                self._schedule(delay, _WRITTEN, (nid, node.incarnation, rd))
                return
            self._finish_ready(node, core, rd)

    def _finish_ready(self, node: _Node, core: RaftCore, rd: Ready) -> None:
        """Persist, send, apply and advance one Ready."""
        nid = node.nid
        rng = self.rng
        if rd.hard_state is not None:
            node.meta.save(rd.hard_state)
        if rd.entries:
            first = rd.entries[0].index
            if first <= node.log.last_index():
                node.log.truncate_suffix(first - 1)
            node.log.append(rd.entries)
        if self.crash_mid_ready and rng.random() < self.crash_mid_ready:
            self._crash(nid)  # durable, but nothing sent or applied
            return
        self._send(rd.messages)
        self.checker.check_commit(nid, core)
        self._apply(node, rd.committed_entries)
        core.advance(rd)
        if self.write_delay:
            self._send(core.take_eager_messages())

    def _apply(self, node: _Node, entries: list[Entry]) -> None:
        if not entries:
            return
        if entries[0].index != node.applied + 1:
            raise SafetyViolation(
                Violation(
                    "apply order", node.nid, f"applied {node.applied}, next {entries[0].index}"
                )
            )
        self.checker.check_apply(node.nid, entries)
        node.applied = entries[-1].index
        for e in entries:
            if e.type != EntryType.NORMAL:
                continue
            data = self.pending.pop((node.nid, node.incarnation, e.index), None)
            if data is not None and data == e.data:
                # The proposer applied its own entry: the client gets its answer.
                self.acked[data] = e.index

    # -- convergence ---------------------------------------------------------

    def _live_cores(self) -> dict[NodeId, RaftCore]:
        return {n: c for n in self.ids if (c := self.nodes[n].core) is not None}

    def _leader(self) -> RaftCore | None:
        for c in self._live_cores().values():
            if c.role is Role.LEADER:
                return c
        return None

    def _converged(self) -> bool:
        leader = self._leader()
        if leader is None:
            return False
        need = max(self.acked.values(), default=0)
        commit = leader.log.committed
        if commit < need or leader.log.term_or_none(commit) != leader.term:
            return False
        return all(self.nodes[n].applied >= commit for n in self.ids)

    def _convergence_report(self, stalled: bool) -> str:
        parts = [repr(self.nodes[n].core) + f" applied={self.nodes[n].applied}" for n in self.ids]
        need = max(self.acked.values(), default=0)
        why = (
            f"nothing applied for {self.opt.progress_bound_ticks} ticks"
            if stalled
            else f"still applying at the {self.opt.converge_cap_ticks}-tick cap"
        )
        return (
            f"not converged {(self.now - self.opt.chaos_ticks * TICK) // TICK} ticks after "
            f"healing, {why} (highest acked index {need}): " + "; ".join(parts)
        )

    def verify_acked(self) -> None:
        """Every acknowledged proposal is applied, at its index, as committed."""
        for data, index in self.acked.items():
            if (
                index > len(self.checker.committed)
                or self.checker.committed[index - 1].data != data
            ):
                self._liveness(f"acknowledged proposal {data!r} at {index} is not committed there")


def run_seed(seed: int, options: SimOptions | None = None) -> SimResult:
    """Run one seed and verify every acknowledged write survived."""
    sim = Simulation(seed, options)
    result = sim.run()
    if result.violation is None:
        try:
            sim.verify_acked()
        except SafetyViolation as exc:
            result.violation = exc.violation
    return result
