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

import operator
from typing import TYPE_CHECKING

from pyjraft.core import conf as confs
from pyjraft.core.errors import ConfChangeBusyError, ConfigError, NotLeaderError
from pyjraft.core.raft import RaftCore
from pyjraft.core.types import ConfState, Entry, EntryType, NodeId, Role, SnapshotMeta
from pyjraft.testing.sim.checker import SafetyViolation, Violation

if TYPE_CHECKING:
    from pyjraft.testing.sim.cluster import Simulation

_CONFIG = int(EntryType.CONFIG)
_TYPE = operator.itemgetter(2)


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


def _is_quorum(conf: ConfState, nodes: frozenset[NodeId]) -> bool:
    """Whether ``nodes`` can elect and commit under ``conf`` (a majority of its
    voters, and of its outgoing voters when joint)."""
    return all(
        len(nodes.intersection(group)) * 2 > len(group)
        for group in (conf.voters, conf.voters_outgoing)
        if group
    )


def _check_quorums_overlap(nid: NodeId, index: int, before: ConfState, after: ConfState) -> None:
    """Thesis 4.1 and 4.3: a configuration may take over from the one before it
    in the log only if every quorum of one overlaps every quorum of the other
    (a single voter added or removed, or a step into or out of a joint
    configuration); otherwise the two could each elect a leader in one term, or
    commit different entries at one index, while both are in force somewhere."""
    same_voters = set(before.voters) == set(after.voters)
    if not before.voters or (
        same_voters and set(before.voters_outgoing) == set(after.voters_outgoing)
    ):
        return  # a node outside the group joining it; or learners and priorities only
    everyone = sorted(
        {*before.voters, *before.voters_outgoing, *after.voters, *after.voters_outgoing}
    )
    for mask in range(1 << len(everyone)):
        side = frozenset(n for i, n in enumerate(everyone) if mask >> i & 1)
        if _is_quorum(before, side) and _is_quorum(after, frozenset(everyone) - side):
            raise SafetyViolation(
                Violation(
                    "configuration overlap",
                    nid,
                    f"entry {index} changes the configuration from {before} to {after}: "
                    f"{sorted(side)} is a quorum of the first and the others of the second",
                )
            )


class ConfInForceCheck:
    """Thesis 4.1, checked directly: the configuration a node uses is always the
    latest in its log, committed or not (or, with none in the log, the one its
    snapshot or its start-up configuration holds); and each configuration in
    the log shares a quorum with the one before it (`_check_quorums_overlap`).

    The safety checks see a configuration taken into force late (only once
    committed, say) only when a schedule turns it into two leaders or a lost
    commit; this looks at the rule itself. The log is followed from outside
    the core: the configuration entries of each node's log are rebuilt from its
    disk when it starts, and kept up to date from what each `Ready` hands out
    to be written (entries from index i replace everything from i on) and the
    snapshots it installs. Checked whenever every entry the core appended has
    been handed out (no write is blocking its next `Ready`)."""

    def __init__(self) -> None:
        # node -> (the configuration below its log's configuration entries,
        #          [(index, configuration) of each such entry, in log order])
        self._logs: dict[NodeId, tuple[ConfState, list[tuple[int, ConfState]]]] = {}

    def started(self, nid: NodeId, core: RaftCore, base: ConfState) -> None:
        """``nid`` (re)started with ``core``, from its disk; ``base`` is the
        configuration of the snapshot it started from, or else the one it was
        configured with."""
        log = core.log
        found: list[tuple[int, ConfState]] = []
        lo, hi = log.first_index(), log.last_index() + 1
        while lo < hi:
            batch = log.entries(lo, hi, 4 << 20)
            found.extend((e.index, confs.decode(e.data)) for e in batch if e.type == _CONFIG)
            lo += len(batch)
        self._logs[nid] = (base, found)

    def restored(self, nid: NodeId, snap: SnapshotMeta) -> None:
        """``nid`` installs ``snap``: its log now starts after it. A snapshot that
        records no voters records no configuration: the one in force stays."""
        base, found = self._logs[nid]
        self._logs[nid] = (snap.conf if snap.conf.voters else found[-1][1] if found else base, [])

    def appended(self, nid: NodeId, entries: list[Entry]) -> None:
        """``nid``'s core handed ``entries`` out to be written."""
        if not entries:
            return
        _, found = self._logs[nid]
        first = entries[0].index
        while found and found[-1][0] >= first:
            found.pop()  # truncated away, with its entry
        if _CONFIG in map(_TYPE, entries):
            base = self._logs[nid][0]
            for e in entries:
                if e.type == _CONFIG:
                    conf = confs.decode(e.data)
                    before = found[-1][1] if found else base
                    _check_quorums_overlap(nid, e.index, before, conf)
                    found.append((e.index, conf))

    def check(self, nid: NodeId, core: RaftCore) -> None:
        """``nid``'s core must be using its log's latest configuration."""
        base, found = self._logs[nid]
        latest = found[-1][1] if found else base
        if core.conf != latest:
            where = f"entry {found[-1][0]}" if found else "its snapshot or start-up"
            raise SafetyViolation(
                Violation(
                    "configuration in force",
                    nid,
                    f"uses {core.conf} while the latest configuration in its log "
                    f"({where}) is {latest}",
                )
            )
