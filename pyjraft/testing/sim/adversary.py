"""The adversary: faults at random, and at the moments bugs hide.

Random faults (`Adversary.fault`) follow the seed's regime: partitions,
one-way cuts, isolation, crashes and restarts, paused processes, forced
elections. Targeted ones act on what the simulation observes: a leader cut
off or killed the moment it wins or its commit index moves, before its
runtime sends anything (`Adversary.dies_now`); garbled copies of real
messages (`Adversary.deliver_garbled`, see `pyjraft.testing.sim.garble`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyjraft.core.messages import Message, TimeoutNow
from pyjraft.core.raft import RaftCore
from pyjraft.core.types import NONE, ConfState, NodeId, Role
from pyjraft.testing.sim.checker import SafetyViolation, Violation
from pyjraft.testing.sim.garble import garble
from pyjraft.testing.sim.options import TICK

if TYPE_CHECKING:
    from pyjraft.testing.sim.cluster import Simulation


class Adversary:
    """Decides and injects faults for one `Simulation`."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.isolate_at_window: NodeId | None = None

    def conf_appended(self, nid: NodeId, core: RaftCore, before: ConfState) -> None:
        """Leader ``nid`` just put a new configuration in force: sometimes cut the
        cluster along the change, the joining voters with the leader on one
        side and the leaving ones with the rest on the other, so that each side
        holds a majority of one configuration (what joint consensus is for)."""
        sim = self.sim
        p = sim.profile.split_on_change
        if sim.healed or not p or sim.rng.random() >= p:
            return
        new = set(core.conf.voters)
        old = set(before.voters) | set(before.voters_outgoing)
        side = {nid} | (new - old)
        if len(side) == 1:
            side |= set(sim.rng.sample(sorted(new), max(0, len(new) // 2)))
        sim.net.split(sim.ids, side)
        sim.result.split_on_change += 1

    def ticked(self, nid: NodeId, core: RaftCore) -> None:
        """``nid``'s core just ticked."""
        sim = self.sim
        early = sim.profile.campaign_at_lease_end
        if (
            early
            and core.role in (Role.FOLLOWER, Role.PRE_CANDIDATE)
            and not core.conf.priorities  # (its timer defers to higher priorities)
            and 0 <= core.election_elapsed - sim.opt.election_ticks <= 1
            and not sim.healed
            and sim.rng.random() < early
        ):
            # Its randomized timeout drew the minimum: it campaigns the moment
            # check-quorum allows an election, when any lease must have ended;
            # and once more a tick later if the others, whose clocks tick a
            # little behind, were still in their check-quorum lease.
            core.campaign()
        if (
            nid == self.isolate_at_window
            and core.role is Role.LEADER
            and core.election_elapsed == 2
            and not self.sim.healed
        ):
            self.isolate_at_window = None
            self.sim.net.isolate(self.sim.ids, nid)

    def dies_now(self, nid: NodeId) -> bool:
        """Crash points right after the core stepped, before its runtime sends
        anything: a leader whose commit index just moved (the commit counts, the
        checker sees it, no one hears; or it is cut off instead), a candidate
        that just won (or it is cut off)."""
        sim = self.sim
        if sim.healed:
            return False
        node = sim.nodes[nid]
        core = node.core
        if core is None or core.role is not Role.LEADER:
            return False
        p = sim.profile
        isolate = 0.5
        if core.term != node.led_term:
            node.led_term = core.term
            if p.isolate_on_win and sim.rng.random() < p.isolate_on_win:
                sim.net.isolate(sim.ids, nid)
            elif p.lag_on_win and sim.rng.random() < p.lag_on_win:
                e = sim.opt.election_ticks * TICK
                sim.net.lag(nid, sim.now, e, e * sim.rng.choice([2, 3, 5]))
            chance = p.kill_on_win
        elif core.log.committed > node.commit_seen:
            chance = p.kill_on_commit
            # A leader whose commit index rests on an entry of an earlier term is
            # in a state Raft's commit rule never reaches: cut it off at once, so
            # that the others (whoever holds a newer entry there) elect without it.
            if chance and core.log.term_or_none(core.log.committed) != core.term:
                chance = isolate = 1.0
        else:
            return False
        if not chance or sim.rng.random() >= chance:
            return False
        sim.check_node(nid)
        if sim.rng.random() < isolate:
            sim.net.isolate(sim.ids, nid)  # cut off rather than dead
            return False
        sim.crash(nid)
        return True

    def deliver_garbled(self, core: RaftCore, msg: Message) -> None:
        sim = self.sim
        bad, must_report = garble(msg, sim.rng, lambda n: sim.nodes[n].core)
        if bad is None:
            return
        sim.result.garbled += 1
        before = (core.term, core.vote, core.role, core.leader, core.log.last_index())
        reported = len(core._bad)
        core.step(bad, from_node=bad.src != "stranger")
        after = (core.term, core.vote, core.role, core.leader, core.log.last_index())
        if after != before or (must_report and len(core._bad) != reported + 1):
            raise SafetyViolation(
                Violation(
                    "bad input",
                    core.id,
                    f"took {bad!r:.300} (no correct peer sends it) as valid: "
                    f"term/vote/role/leader/last {before} -> {after}",
                )
            )

    def fault(self) -> NodeId | None:
        sim = self.sim
        rng = sim.rng
        ids = sim.ids
        action = rng.choice(sim.profile.fault_actions)
        if action == "partition":
            sim.net.partition(ids)
        elif action == "oneway":
            a, b = rng.sample(ids, 2)
            sim.net.cut_one_way(a, b)
        elif action == "isolate_leader":
            leaders = [n for n in ids if (c := sim.nodes[n].core) and c.role is Role.LEADER]
            if leaders:
                if sim.profile.regime == "lease":
                    # Just inside its next check-quorum window, once the window
                    # has seen an answer: it then passes that window's check and
                    # goes on believing it leads for the longest it can.
                    self.isolate_at_window = rng.choice(leaders)
                else:
                    sim.net.isolate(ids, rng.choice(leaders))
        elif action == "isolate":
            sim.net.isolate(ids, rng.choice(ids))
        elif action == "crash":
            alive = [n for n in ids if sim.nodes[n].core is not None]
            if alive:
                sim.crash(rng.choice(alive))
        elif action == "crash_leader":
            leaders = [n for n in ids if (c := sim.nodes[n].core) and c.role is Role.LEADER]
            if leaders:
                sim.crash(rng.choice(leaders))
        elif action == "restart":
            dead = [n for n in ids if sim.nodes[n].core is None]
            if dead:
                sim.start(rng.choice(dead))
        elif action == "force_election":
            return self._force_election()
        elif action == "pause":
            alive = [
                n
                for n in ids
                if sim.nodes[n].core is not None and sim.nodes[n].paused_until <= sim.now
            ]
            leaders = [n for n in alive if sim.nodes[n].core.role is Role.LEADER]  # type: ignore[union-attr]
            # Mostly the leader: a paused leader is what makes stale messages.
            if sim.profile.regime == "stale":
                pick = leaders
            else:
                pick = leaders if leaders and rng.random() < 0.7 else alive
            if pick:
                sim.pause(rng.choice(pick), sim.opt.election_ticks * rng.choice([1, 2, 4]))
        else:
            sim.net.cut = set()
        return None

    def _force_election(self) -> NodeId | None:
        """A leader change without waiting for a clock: the leader hands over to
        a follower (timeout-now, as a leadership transfer does), or a node
        campaigns at once."""
        sim = self.sim
        alive = [
            n
            for n in sim.ids
            if (c := sim.nodes[n].core)
            and c.role is not Role.LEADER
            and sim.nodes[n].paused_until <= sim.now
        ]
        if not alive:
            return None
        nid = sim.rng.choice(alive)
        core = sim.nodes[nid].core
        assert core is not None
        sim.current = nid
        if core.leader != NONE and sim.rng.random() < 0.7:
            core.step(TimeoutNow(core.group, core.term, core.leader, nid))
        else:
            core.campaign()
        return nid
