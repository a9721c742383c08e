"""Membership changes and leadership transfers in the simulation.

At random times the leader is asked to change the configuration: grow,
shrink or replace voters (spare nodes start outside the group, with no
configuration, and join through a change), add, remove or promote learners,
or change priorities; or to hand leadership over (to a named voter or the
most up-to-date one). The core does the rest (catch-up, joint configuration,
final configuration), and every fault goes on meanwhile. The checks hold
across configurations: one leader per term in any configuration, commits and
elections need a majority of every half of a joint configuration, and every
replica of the final configuration ends with the same state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyjraft.core.errors import ConfChangeBusyError, ConfigError, NotLeaderError
from pyjraft.core.types import NodeId, Role

if TYPE_CHECKING:
    from pyjraft.testing.sim.cluster import Simulation


class MembershipDriver:
    """Asks leaders for configuration changes and transfers."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def act(self) -> NodeId | None:
        """Ask the leader (if any) for a change or a transfer; returns it."""
        sim = self.sim
        rng = sim.rng
        leaders = [
            n
            for n in sim.ids
            if (c := sim.nodes[n].core) is not None
            and c.role is Role.LEADER
            and sim.nodes[n].paused_until <= sim.now
        ]
        if not leaders:
            return None
        nid = rng.choice(leaders)
        core = sim.nodes[nid].core
        assert core is not None
        sim.current = nid
        everyone = list(sim.ids)
        try:
            if rng.random() < 0.3:
                target = rng.choice([None, *core.voters])
                core.transfer_leadership(target)
                sim.result.transfers += 1
                return nid
            size = rng.choice([1, 2, 3, 3, 3, 4, 5, 5] if len(everyone) >= 5 else [1, 2, 3, 3])
            size = min(size, len(everyone))
            # Mostly small steps from the current voters, sometimes a jump (in the
            # members regime, mostly jumps: several voters change at once).
            leap = 0.8 if sim.profile.regime == "members" else 0.3
            if rng.random() >= leap:
                voters = list(core.voters)
                if len(voters) < size or (rng.random() < 0.5 and len(voters) < len(everyone)):
                    voters.append(rng.choice([n for n in everyone if n not in voters]))
                elif len(voters) > 1 and rng.random() < 0.5:
                    voters.remove(rng.choice(voters))
            else:
                voters = rng.sample(everyone, size)
            rest = [n for n in everyone if n not in voters]
            learners = [n for n in rest if rng.random() < 0.3]
            prios = None
            if rng.random() < 0.2:
                prios = tuple((v, rng.choice([0, 1, 2, 5])) for v in voters if rng.random() < 0.5)
                if all(p == 0 for _, p in prios) and len(prios) == len(voters):
                    prios = None  # someone must be able to lead
            core.change_conf(tuple(voters), tuple(learners), prios)
            sim.result.conf_changes += 1
        except (ConfChangeBusyError, NotLeaderError, ConfigError):
            return nid
        return nid
