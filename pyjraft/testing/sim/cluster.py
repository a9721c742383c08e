"""A deterministic, event-driven simulation of a raft cluster of pure cores.

Theory of operation
-------------------
One `random.Random(seed)` decides everything. The seed first draws a
`Profile` (`pyjraft.testing.sim.options`): a fault regime, pre-vote and
check-quorum on, off or mixed across nodes, message loss, duplication,
reordering and delay tails, per-node disk latency, pipelined leader writes,
flow-control windows. Events (ticks, deliveries, proposals, faults, writes
completing) sit in a heap keyed by time, so a run with the same seed replays
exactly.

Each node owns a `SimDisk`: durable log and term/vote that survive a crash,
and the writes in flight that do not (the oldest may land partly). After
every event the touched node's `Ready`s are handled as `pyjraft.node.Node`
handles them: eager messages at once; the write issued, taking the node's
disk latency while the core keeps stepping; then messages, apply, advance.
A pipelined leader (`NodeOptions.leader_write_thread`) hands each write over
and goes on, applying what a majority made durable, its messages and
advance following each write in order. Crashes land anywhere: between taking
a `Ready` and writing it, in the middle of a write, after the write and
before its messages. Elections are also forced without waiting for a clock
(a timeout-now as from a leadership transfer), so leaders churn.

After every event the `SafetyChecker` checks the Figure 3 properties and the
`ContractChecker` the `Ready` contract's promises, so the first event that
breaks a rule is the one reported. An exception from a core, or a core whose
`has_ready` keeps promising an empty `Ready`, is a violation too. After the
chaos phase every fault heals and the run must converge: a leader within a
bound, and every acknowledged proposal applied on every node.
"""

from __future__ import annotations

import heapq
import random
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pyjraft.core import conf as confs
from pyjraft.core.config import CoreConfig
from pyjraft.core.errors import NotLeaderError, ProposalDroppedError
from pyjraft.core.messages import Message, VoteResponse
from pyjraft.core.raft import RaftCore
from pyjraft.core.ready import Ready
from pyjraft.core.types import ConfState, Entry, EntryType, NodeId, Role, SnapshotMeta
from pyjraft.testing.sim.adversary import Adversary
from pyjraft.testing.sim.checker import SafetyChecker, SafetyViolation, Violation
from pyjraft.testing.sim.contract import ContractChecker
from pyjraft.testing.sim.disk import SimDisk, Write
from pyjraft.testing.sim.membership import ConfInForceCheck, MembershipDriver
from pyjraft.testing.sim.network import SimNetwork
from pyjraft.testing.sim.options import TICK, SimOptions, SimResult, draw_profile
from pyjraft.testing.sim.reads import ReadDriver
from pyjraft.testing.sim.snapshots import SnapshotDriver, chain

__all__ = ["TICK", "SimOptions", "SimResult", "Simulation", "run_seed"]

(
    _TICK,
    _DELIVER,
    _PROPOSE,
    _FAULT,
    _HEAL,
    _WRITTEN,
    _KILL,
    _RESUME,
    _SNAP,
    _NUDGE,
    _READ,
    _READ_RPC,
    _READ_REPLY,
    _CONF,
) = range(14)
_NORMAL = int(EntryType.NORMAL)


@dataclass(slots=True)
class _Node:
    nid: NodeId
    pos: int
    disk: SimDisk = field(default_factory=SimDisk)
    core: RaftCore | None = None
    incarnation: int = 0
    applied: int = 0
    sm_hash: int = 0
    """The state machine: a hash chain of the entries applied (see `snapshots`)."""
    received: tuple[SnapshotMeta, int] | None = None
    """A snapshot received from the leader, waiting for its Ready to install it."""
    commit_seen: int = 0
    led_term: int = 0
    last_tick: int = 0
    paused_until: int = 0
    """A paused process (a long GC, SIGSTOP) runs nothing until then: its timer,
    inbound messages and write completions wait, and what it had decided to
    send before pausing leaves when it resumes."""
    blocked: tuple[Ready, Write] | None = None
    """An inline Ready waiting for its write; no other Ready is taken meanwhile."""
    pipeline: deque[tuple[Ready, Write]] = field(default_factory=deque)
    """A pipelined leader's Readies whose writes are in flight, oldest first."""


class Simulation:
    """One seeded run. `run()` returns a `SimResult`; it never raises for a violation."""

    def __init__(self, seed: int, options: SimOptions | None = None) -> None:
        self.seed = seed
        self.opt = options or SimOptions()
        self.rng = random.Random(seed)
        self.profile = draw_profile(self.rng, self.opt, random.Random(f"{seed}:more"))
        ids = [f"n{i + 1}" for i in range(self.opt.nodes + self.profile.spares)]
        self.ids = ids
        self.initial_voters = tuple(ids[: self.opt.nodes])
        learners_end = self.opt.nodes + self.profile.initial_learners
        self.initial_learners = tuple(ids[self.opt.nodes : learners_end])
        self.initial_members = frozenset(ids[:learners_end])
        self.nodes = {nid: _Node(nid, i) for i, nid in enumerate(ids)}
        self.net = SimNetwork(self.rng, self.profile, ids)
        self.checker = SafetyChecker()
        self.conf_check = ConfInForceCheck()
        self.contract = ContractChecker(
            {n: node.disk for n, node in self.nodes.items()}, lambda n: self.nodes[n].core
        )
        self.disk_latency = list(self.profile.disk_latency)
        self.crash_mid_ready = self.profile.crash_mid_ready
        self.now = 0
        self._seq = 0
        self._events: list[tuple[int, int, int, Any]] = []
        self.current: NodeId = "-"
        self.confs_before: dict[NodeId, ConfState] = {}
        self.healed = False
        self.pending: dict[tuple[NodeId, int, int], bytes] = {}
        self.acked: dict[bytes, int] = {}
        self._proposal_no = 0
        self.result = SimResult(seed, regime=self.profile.regime)
        self.adversary = Adversary(self)
        self.snapshots = SnapshotDriver(self)
        self.reads = ReadDriver(self)
        self.membership = MembershipDriver(self)
        for nid in ids:
            self.start(nid)
            self._schedule(self.rng.randrange(TICK), _TICK, nid)
        self._schedule(self.profile.propose_every, _PROPOSE, None)
        if self.profile.read_every:
            self._schedule(self.profile.read_every, _READ, None)
        if self.profile.conf_change_every:
            self._schedule(self.profile.conf_change_every, _CONF, None)
        if self.opt.faults:
            self._schedule(self.profile.fault_every, _FAULT, None)
        self._schedule(self.opt.chaos_ticks * TICK, _HEAL, None)

    # -- events --------------------------------------------------------------

    def _schedule(self, delay: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + delay, self._seq, kind, payload))

    def start(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        p = self.profile
        i = node.pos
        cfg = CoreConfig(
            id=nid,
            # Spares start with no configuration, and join when a change adds them;
            # or as learners of the initial configuration.
            voters=self.initial_voters if nid in self.initial_members else (),
            learners=self.initial_learners if nid in self.initial_members else (),
            election_ticks=self.opt.election_ticks,
            heartbeat_ticks=self.opt.heartbeat_ticks,
            pre_vote=p.pre_vote[i],
            check_quorum=p.check_quorum[i],
            max_inflight_msgs=p.max_inflight_msgs,
            max_inflight_bytes=p.max_inflight_bytes,
            max_entries_per_msg=p.max_entries_per_msg,
            max_bytes_per_msg=p.max_bytes_per_msg,
        )
        core_rng = random.Random(self.rng.getrandbits(64))
        factory = self.opt.core_factory or RaftCore
        snap = node.disk.snapshot
        if snap is not None and snap[0].index > node.disk.log.last_index():
            # A pipelined leader applies (and may snapshot) what its followers made
            # durable before its own write lands; a crash can then leave its log
            # behind its snapshot. The snapshot holds those entries: start after it.
            node.disk.log.reset(snap[0].index + 1, snap[0].term)
        node.core = factory(
            cfg,
            node.disk.log,
            node.disk.meta.load(),
            core_rng,
            snapshot=snap[0] if snap else None,
            applied=snap[0].index if snap else 0,
        )
        node.incarnation += 1
        self.conf_check.started(
            # (A snapshot that records no voters records no configuration.)
            nid,
            node.core,
            snap[0].conf if snap and snap[0].conf.voters else ConfState(cfg.voters, cfg.learners),
        )
        # The state machine is loaded from the newest snapshot, then replays.
        node.applied = snap[0].index if snap else 0
        node.sm_hash = snap[1] if snap else 0
        node.received = None
        node.commit_seen = node.core.log.committed

    def crash(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        if node.core is None:
            return
        node.core = None
        node.paused_until = 0
        node.disk.crash(self.rng)  # the oldest write in flight may land in part
        node.blocked = None
        node.pipeline.clear()
        self.result.crashes += 1

    def run(self) -> SimResult:
        """Run the chaos phase, heal, and check convergence."""
        try:
            self._run()
        except SafetyViolation as exc:
            self.result.violation = exc.violation
        except Exception as exc:
            self.result.violation = Violation("exception", self.current, _describe(exc))
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
            if self.result.events > opt.max_events:
                self._liveness(
                    f"a message storm: {opt.max_events} events by tick {t // TICK}, "
                    f"{self.result.messages} messages sent"
                )
            self.current = "-"
            self.confs_before = {
                n: node.core.conf for n, node in self.nodes.items() if node.core is not None
            }
            touched = self._dispatch(kind, payload)
            if touched is not None:
                self.current = touched
                if self.adversary.dies_now(touched):
                    continue
                self._drain(touched)
                self.check_node(touched)
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

    def check_node(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        core = node.core
        if core is None:
            return
        before = self.confs_before.get(nid)
        if before is not None and core.conf != before and core.role is Role.LEADER:
            self.adversary.conf_appended(nid, core, before)
        self.checker.check_role(nid, core)
        commit = core.log.committed
        if commit < node.commit_seen:
            raise SafetyViolation(
                Violation(
                    "state machine safety",
                    nid,
                    f"commit index went back from {node.commit_seen} to {commit}",
                )
            )
        if commit > node.commit_seen:
            node.commit_seen = commit
            if core.role is Role.LEADER:
                # The leader decides; a follower only learns (under a configuration
                # that may be newer than the one its leader decided under).
                self.contract.on_commit(nid, core, commit, self.confs_before.get(nid))
            self.checker.check_commit(nid, core)

    def _liveness(self, detail: str) -> None:
        raise SafetyViolation(Violation("liveness", "-", detail))

    def _target(self, kind: int, payload: Any) -> NodeId | None:
        if kind == _TICK:
            return payload  # type: ignore[no-any-return]
        if kind == _DELIVER:
            return payload.dst  # type: ignore[no-any-return]
        if kind in (_WRITTEN, _NUDGE, _READ_RPC, _READ_REPLY):
            return payload[0]  # type: ignore[no-any-return]
        return None

    def schedule_read_rpc(self, leader: NodeId, ctx: bytes) -> None:
        """A follower's read index request travels to ``leader``."""
        follower = self.reads._reads[ctx].server
        delay = 1 + self.rng.randrange(self.net.max_delay)
        self._schedule(delay, _READ_RPC, (leader, follower, ctx))

    def schedule_read_reply(self, server: NodeId, ctx: bytes, lost: bool) -> None:
        """The leader's read index travels back to the follower ``server``."""
        delay = 1 + self.rng.randrange(self.net.max_delay)
        self._schedule(delay, _READ_REPLY, (server, ctx, lost))

    def schedule_snapshot(self, delay: int, payload: Any) -> None:
        """A snapshot transfer that ends after ``delay`` (see `SnapshotDriver.arrive`)."""
        self._schedule(delay, _SNAP, payload)

    def nudge(self, nid: NodeId) -> None:
        """Handle ``nid``'s Readies as soon as possible (its core was fed from outside)."""
        self._schedule(0, _NUDGE, (nid, self.nodes[nid].incarnation))

    def pause(self, nid: NodeId, ticks: int) -> None:
        """Pause ``nid``'s process for ``ticks`` (see `_Node.paused_until`)."""
        node = self.nodes[nid]
        node.paused_until = max(node.paused_until, self.now + ticks * TICK)
        self._schedule(node.paused_until - self.now, _RESUME, (nid, node.incarnation))

    def _dispatch(self, kind: int, payload: Any) -> NodeId | None:
        target = self._target(kind, payload)
        if target is not None and self.nodes[target].paused_until > self.now:
            # Everything for a paused process waits, in order, until it resumes.
            self._schedule(self.nodes[target].paused_until - self.now, kind, payload)
            return None
        if kind == _RESUME:
            node = self.nodes[payload[0]]
            if node.core is None or node.incarnation != payload[1]:
                return None
            return node.nid  # drains what it had decided before pausing
        if kind == _TICK:
            nid: NodeId = payload
            node = self.nodes[nid]
            core = node.core
            # Clocks drift: each node's clock has its own rate, and jitters.
            rate = self.profile.clock_rate[node.pos]
            self._schedule(rate + self.rng.randrange(-3, 4), _TICK, nid)
            # A process that was paused gets every tick that passed meanwhile, in
            # one go, as the runtime's timer catches up: its lease must not
            # outlive the time that really passed.
            ticks = max(1, round((self.now - node.last_tick) / rate)) if node.last_tick else 1
            node.last_tick = self.now
            if core is None:
                return None
            self.current = nid
            core.tick(ticks)
            self.adversary.ticked(nid, core)
            return nid
        if kind == _CONF:
            if self.healed:
                return None
            every = self.profile.conf_change_every
            self._schedule(every + self.rng.randrange(every), _CONF, None)
            return self.membership.act()
        if kind == _READ:
            if self.healed:
                return None
            self._schedule(self.profile.read_every, _READ, None)
            return self.reads.begin()
        if kind == _READ_RPC:
            if payload[1] != payload[0] and self.net.is_cut_between(payload[1], payload[0]):
                return None
            return self.reads.at_leader(payload[0], payload[2])
        if kind == _READ_REPLY:
            return self.reads.reply(payload[1], payload[2])
        if kind == _DELIVER:
            msg: Message = payload
            core = self.nodes[msg.dst].core
            if core is None or self.net.is_cut(msg):
                return None
            if msg.term < core.term:
                self.result.stale_deliveries[type(msg).__name__] += 1
            self.current = msg.dst
            if self.profile.garble and not self.healed and self.rng.random() < self.profile.garble:
                self.adversary.deliver_garbled(core, msg)
            core.step(msg)
            return msg.dst
        if kind == _PROPOSE:
            if self.healed:
                return None  # convergence is judged on what was proposed during chaos
            self._schedule(self.profile.propose_every, _PROPOSE, None)
            return self._propose()
        if kind == _FAULT:
            every = self.profile.fault_every
            self._schedule(every + self.rng.randrange(every), _FAULT, None)
            if not self.healed:
                return self.adversary.fault()
            return None
        if kind == _HEAL:
            self._heal()
            return None
        if kind == _KILL:
            node = self.nodes[payload[0]]
            if node.core is not None and node.incarnation == payload[1] and not self.healed:
                self.crash(node.nid)
            return None
        if kind == _WRITTEN:
            return self._written(payload[0], payload[1], payload[2])
        if kind == _SNAP:
            return self.snapshots.arrive(*payload)
        if kind == _NUDGE:
            node = self.nodes[payload[0]]
            return node.nid if node.core is not None and node.incarnation == payload[1] else None
        raise AssertionError(kind)

    def _propose(self) -> NodeId | None:
        leaders = [
            n
            for n in self.ids
            if (c := self.nodes[n].core)
            and c.role is Role.LEADER
            and self.nodes[n].paused_until <= self.now
        ]
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
        self.current = nid
        try:
            last = node.core.propose_batch(datas)
        except (NotLeaderError, ProposalDroppedError):
            return None  # a leadership transfer refuses proposals
        first = last - len(datas) + 1
        for i, d in enumerate(datas):
            self.pending[(nid, node.incarnation, first + i)] = d
        if (
            self.profile.pause_after_propose
            and self.rng.random() < self.profile.pause_after_propose
        ):
            # Paused between accepting the proposal and sending it: its appends
            # leave when it resumes, stale, after the others elected anew.
            self.pause(nid, self.opt.election_ticks * self.rng.choice([3, 5]))
            return None
        return nid

    def _heal(self) -> None:
        self.healed = True
        self.net.heal()
        self.crash_mid_ready = 0.0
        self.disk_latency = [min(latency, TICK // 2) for latency in self.disk_latency]
        for nid in self.ids:
            if self.nodes[nid].core is None:
                self.start(nid)

    # -- the runtime's side of Ready -----------------------------------------

    def _send(self, msgs: list[Message]) -> None:
        if not msgs:
            return
        check = self.contract.on_send
        for m in msgs:
            check(m)
            if type(m) is VoteResponse and m.granted:
                self.checker.record_vote(m.src, m.term, m.dst)
        self.result.messages += len(msgs)
        for at, m in self.net.deliveries(self.now, msgs):
            self._schedule(at - self.now, _DELIVER, m)

    def _drain(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        rng = self.rng
        p = self.profile
        core = node.core
        if core is None:
            return
        if node.blocked is not None or node.pipeline:
            # A write is in flight: the core keeps stepping, and a leader's new
            # appends go out meanwhile.
            self._send(core.take_eager_messages())
        while (core := node.core) is not None and node.blocked is None and core.has_ready():
            rd = core.ready()
            self.result.bad_messages += len(rd.bad_messages)
            if _is_empty(rd) and core.has_ready():
                raise SafetyViolation(
                    Violation("spin", nid, f"has_ready() stays true with nothing ready: {core!r}")
                )
            if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
                self.result.elections += 1
                if not self.healed and rng.random() < p.kill_new_leaders:
                    delay = 1 + rng.randrange(4 * p.max_delay)
                    self._schedule(delay, _KILL, (nid, node.incarnation))
            # Log matching is judged on what the core hands out to be written.
            self.checker.check_append(nid, core, rd.entries)
            if rd.snapshot is not None:
                self.conf_check.restored(nid, rd.snapshot)
            self.conf_check.appended(nid, rd.entries)
            self.contract.on_write(nid, core, rd.entries)
            self._send(rd.eager_messages)
            if rd.snapshots_to_send:
                self.snapshots.send(nid, rd.snapshots_to_send)
            if rd.read_states:
                self.reads.confirmed(nid, rd.read_states)
            for ev in rd.conf_events:
                if ev.kind == "done":
                    self.result.conf_changes_done += 1
            if self.crash_mid_ready and rng.random() < self.crash_mid_ready:
                self.crash(nid)  # before anything of this Ready is durable
                return
            snap = self.snapshots.install(nid, rd.snapshot) if rd.snapshot else None
            if not rd.must_sync:
                self._finish_ready(node, core, rd)
                continue
            latency = self.disk_latency[node.pos]
            if p.pipelined and rd.hard_state is None and core.role is Role.LEADER:
                # Handed to the writer; this Ready goes on without waiting.
                w = self._issue(node, rd, latency)
                node.pipeline.append((rd, w))
                self._apply(node, rd.committed_entries, check_durable=False)
                continue
            if latency == 0 and not node.disk.inflight:
                if self.crash_mid_ready and rng.random() < self.crash_mid_ready:
                    node.disk.crash_during(rd.hard_state, rd.entries, snap, rng)
                    self.crash(nid)
                    return
                node.disk.write_now(rd.hard_state, rd.entries, snap)
                self._after_write(node, core, rd)
                continue
            node.blocked = (rd, self._issue(node, rd, latency, snap))
        if (core := node.core) is not None and node.blocked is None:
            # Every entry the core appended has been handed out: its log is known.
            self.conf_check.check(nid, core)

    def _issue(
        self, node: _Node, rd: Ready, latency: int, snap: tuple[SnapshotMeta, int] | None = None
    ) -> Write:
        done_at = self.now + latency // 2 + self.rng.randrange(latency // 2 + 1)
        inflight = node.disk.inflight
        if inflight:
            done_at = max(done_at, inflight[-1].done_at)  # one disk, in order
        w = Write(rd.hard_state, rd.entries, done_at, snap)
        inflight.append(w)
        self._schedule(done_at - self.now, _WRITTEN, (node.nid, node.incarnation, w))
        return w

    def _written(self, nid: NodeId, incarnation: int, w: Write) -> NodeId | None:
        node = self.nodes[nid]
        core = node.core
        if core is None or node.incarnation != incarnation or w not in node.disk.inflight:
            return None  # lost in a crash
        self.current = nid
        node.disk.complete(w)
        if node.pipeline and node.pipeline[0][1] is w:
            rd, _ = node.pipeline.popleft()
            self._send(rd.messages)
            core.advance(rd)
            self._send(core.take_eager_messages())
        elif node.blocked is not None and node.blocked[1] is w:
            rd, _ = node.blocked
            node.blocked = None
            self._after_write(node, core, rd)
        return nid

    def _after_write(self, node: _Node, core: RaftCore, rd: Ready) -> None:
        if self.crash_mid_ready and self.rng.random() < self.crash_mid_ready:
            self.crash(node.nid)  # durable, but nothing sent or applied
            return
        self._finish_ready(node, core, rd)

    def _finish_ready(self, node: _Node, core: RaftCore, rd: Ready) -> None:
        """Send, apply and advance one Ready whose write is durable."""
        if rd.snapshot is not None:
            # The state machine is loaded from the installed snapshot.
            snap = node.disk.snapshot
            assert snap is not None and snap[0] == rd.snapshot
            node.applied, node.sm_hash = rd.snapshot.index, snap[1]
            self.reads.maybe_complete(node.nid)
        self._send(rd.messages)
        # With pipelined writes in flight, what a majority made durable may not
        # be durable here yet: the node applies it anyway (it is committed).
        self._apply(node, rd.committed_entries, check_durable=not node.pipeline)
        core.advance(rd)
        if node.blocked is not None or node.pipeline:
            self._send(core.take_eager_messages())

    def _apply(self, node: _Node, entries: list[Entry], *, check_durable: bool) -> None:
        if not entries:
            return
        if entries[0].index != node.applied + 1:
            raise SafetyViolation(
                Violation(
                    "apply order", node.nid, f"applied {node.applied}, next {entries[0].index}"
                )
            )
        if check_durable:
            self.contract.on_apply(node.nid, entries)
        core = node.core
        if core is not None:
            self.checker.check_commit(node.nid, core)  # so the prefix states are known
        self.checker.check_apply(node.nid, entries)
        node.applied = entries[-1].index
        node.sm_hash = chain(node.sm_hash, entries)
        self.snapshots.after_apply(node.nid)
        self.reads.maybe_complete(node.nid)
        pending = self.pending
        if not pending:
            return
        key = (node.nid, node.incarnation)
        for e in entries:
            if e.type != _NORMAL:
                continue
            data = pending.pop((*key, e.index), None)
            if data is not None and data == e.data:
                # The proposer applied its own entry: the client gets its answer.
                self.acked[data] = e.index
                self.reads.written(e.index)

    # -- convergence ---------------------------------------------------------

    def _leader(self) -> RaftCore | None:
        for n in self.ids:
            c = self.nodes[n].core
            if c is not None and c.role is Role.LEADER:
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
        # Every member of the configuration in force at the commit index.
        members = confs.members(leader.conf_at(commit))
        return all(self.nodes[n].applied >= commit for n in self.ids if n in members)

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
        """Every acknowledged proposal is applied, at its index, as committed; and
        every replica's state machine holds the committed prefix it applied."""
        for nid in self.ids:
            node = self.nodes[nid]
            self.snapshots.check_state(nid, node.applied, node.sm_hash, "ended")
        for data, index in self.acked.items():
            if (
                index > len(self.checker.committed)
                or self.checker.committed[index - 1].data != data
            ):
                self._liveness(f"acknowledged proposal {data!r} at {index} is not committed there")


def _is_empty(rd: Ready) -> bool:
    return not (
        rd.soft_state
        or rd.hard_state
        or rd.entries
        or rd.committed_entries
        or rd.eager_messages
        or rd.messages
        or rd.bad_messages
    )


def _describe(exc: BaseException) -> str:
    """The exception and where in pyjraft it was raised, in one line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "pyjraft" in f.filename]
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_seed(seed: int, options: SimOptions | None = None) -> SimResult:
    """Run one seed and verify every acknowledged write survived; never raises
    for anything the cores do (an exception is reported as a violation)."""
    try:
        sim = Simulation(seed, options)
    except Exception as exc:
        return SimResult(seed, violation=Violation("exception", "-", _describe(exc)))
    result = sim.run()
    if result.violation is None:
        try:
            sim.verify_acked()
        except SafetyViolation as exc:
            result.violation = exc.violation
    return result
