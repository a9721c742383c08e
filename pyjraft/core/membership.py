"""Membership changes, learners, leadership transfer and priority election: a
part of `pyjraft.core.raft.RaftCore`.

Theory of operation (thesis chapter 4; SOFAJRaft's and braft's way)
------------------------------------------------------------------
The configuration in force is always the latest one in the log, committed
or not (thesis 4.1): it takes effect the moment its entry is appended, on
the leader and on every follower, and a follower that truncates the entry
away goes back to the one before. The core keeps the configuration entries
of its log (`_conf_log`) on top of the snapshot's (`_base_conf`).

A change of voters (`change_conf`) goes through three stages, one change at
a time (a second request raises `ConfChangeBusyError`):

1. catch-up: voters joining the group are replicated to as non-voters until
   each is within ``catchup_margin`` entries of the leader (thesis 4.2.1), or
   the change is abandoned after ``catchup_timeout_ticks``;
2. joint: the leader appends the joint configuration (incoming and outgoing
   voters): from then on elections and commits need a majority of each;
3. final: once the joint entry commits, the leader appends the incoming
   configuration alone; once that commits the change is done, and a leader
   that is not among the incoming voters steps down.

A change of learners alone takes one configuration entry (learners vote on
nothing). A new leader that finds itself in a joint configuration finishes
the change (appends the final entry once the joint one commits).

Leadership transfer (thesis 3.10): the leader stops accepting proposals,
brings the target up to date, and sends it a timeout-now, after which the
target campaigns at once (its vote requests are marked as a transfer, which
followers honour despite their check-quorum lease). The transfer is
abandoned after an election timeout. Once a timeout-now was sent in a term,
lease reads stop for that term (the target may win before the lease ends).

Priority election (SOFAJRaft): voters may carry priorities. A voter whose
priority is below the highest among the voters waits: each election timeout
that passes without a leader lowers the bar by a fifth, so a group whose
high-priority voters are gone still elects. A leader hands leadership to a
caught-up voter of higher priority than its own. A voter of priority 0
campaigns only once the bar has passed below every positive priority, that
is when no other voter could be elected all that time: it may alone hold
the newest committed entries, and then nobody else can win (its vote, and
the log check, refuse them). It leads only until a voter of higher priority
has caught up, then hands over; without that, such a group would stay
leaderless for good.

Outcomes of a change (started, joint, done, abandoned) come out in
``Ready.conf_events``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from pyjraft.core import conf as confs
from pyjraft.core.core_base import CoreBase
from pyjraft.core.errors import ConfChangeBusyError, ConfigError, NotLeaderError
from pyjraft.core.messages import TimeoutNow
from pyjraft.core.progress import Progress
from pyjraft.core.types import ConfState, Entry, EntryType, NodeId, Role

_CONFIG = int(EntryType.CONFIG)
_TYPE = operator.itemgetter(2)


@dataclass(frozen=True, slots=True)
class ConfEvent:
    """A step of a configuration change or transfer, for the runtime."""

    kind: str
    """``started``, ``joint``, ``done``, ``aborted``, ``transfer_started``,
    ``transfer_aborted`` (the leader stays), ``transfer_stepped_down`` (the
    leader stepped down with a transfer under way: whether the target took
    over is seen when a leader is known), ``reset``."""
    conf: ConfState
    """The target configuration (the target's id alone, for a transfer)."""
    detail: str = ""


@dataclass(slots=True)
class _Change:
    target: ConfState
    """The configuration the change ends in."""
    catching_up: tuple[NodeId, ...]
    deadline: int
    """Tick by which the new voters must have caught up."""
    joint_appended: bool = False


@dataclass(slots=True)
class _Transfer:
    target: NodeId
    deadline: int
    sent: bool = False


class Membership(CoreBase):
    """The configuration rules of a raft core (see the module docstring)."""

    _base_conf: ConfState
    _conf_log: list[tuple[int, int, ConfState]]
    _change: _Change | None
    _transfer: _Transfer | None
    _lease_off_term: int
    _target_priority: int
    _conf_events: list[ConfEvent]
    _reset_pending: ConfState | None

    # -- the configuration in force ------------------------------------------

    def _init_membership(self, base: ConfState) -> None:
        self._base_conf = base
        self._conf_log = []
        self._change = None
        self._transfer = None
        self._lease_off_term = -1
        self._conf_events = []
        self._reset_pending = None
        log = self.log
        # Configuration entries of the log beyond the snapshot. Bounded by what
        # compaction keeps (a runtime without snapshots reads its whole log once).
        lo, hi = log.first_index(), log.last_index() + 1
        while lo < hi:
            batch = log.entries(lo, hi, 4 << 20)
            if _CONFIG in map(_TYPE, batch):
                for e in batch:
                    if e.type == _CONFIG:
                        self._conf_log.append((e.index, e.term, confs.decode(e.data)))
            lo += len(batch)
        self._use_conf(self._conf_log[-1][2] if self._conf_log else base)
        self._target_priority = self._max_priority()

    def _use_conf(self, conf: ConfState) -> None:
        self.conf = conf
        self.voters = conf.voters
        self.outgoing = conf.voters_outgoing
        self.learners = conf.learners
        members = confs.members(conf)
        if self._change is not None:
            members = members | set(self._change.catching_up)
        self._members = frozenset(members)
        if self.role is Role.LEADER:
            self._sync_progress()
        elif self.role is Role.LEARNER and self.promotable:
            self.role = Role.FOLLOWER  # promoted: it votes (and may campaign) now
        elif self.role is Role.FOLLOWER and not self.promotable:
            self.role = Role.LEARNER

    def _sync_progress(self) -> None:
        """The leader tracks exactly the members (and peers catching up)."""
        cfg = self.config
        nxt = self.log.last_index() + 1
        for peer in sorted(self._members):
            if peer not in self.progress:
                self.progress[peer] = Progress(
                    nxt, cfg.max_inflight_msgs, cfg.max_inflight_bytes, peer in self.learners
                )
        for peer in [p for p in self.progress if p not in self._members and p != self.id]:
            del self.progress[peer]
        for peer, pr in self.progress.items():
            pr.is_learner = peer not in self.voters and peer not in self.outgoing

    def _confs_appended(self, entries: list[Entry]) -> None:
        """Entries were appended (or replaced an uncommitted tail): keep the
        configuration in force the latest in the log."""
        changed = False
        log = self.log
        clog = self._conf_log
        # Entries truncated away take their configurations with them. (Compacted
        # ones were committed, so never truncated: they stand.)
        while (
            clog
            and clog[-1][0] >= log.first_index()
            and log.term_or_none(clog[-1][0]) != clog[-1][1]
        ):
            clog.pop()
            changed = True
        if entries and _CONFIG in map(_TYPE, entries):
            known = {(i, t) for i, t, _ in clog}
            for e in entries:
                if e.type == _CONFIG and (e.index, e.term) not in known:
                    if clog and clog[-1][0] > e.index:
                        continue  # an older entry re-sent: already superseded
                    clog.append((e.index, e.term, confs.decode(e.data)))
                    changed = True
        if changed:
            self._use_conf(clog[-1][2] if clog else self._base_conf)

    def _confs_restored(self, base: ConfState) -> None:
        """A snapshot replaced the log: its configuration is the base."""
        self._base_conf = base
        self._conf_log = []
        self._use_conf(base)

    def _conf_committed(self) -> None:
        """The commit index moved: drop the history no truncation can reach, and
        let a leader take its change to the next stage."""
        committed = self.log.committed
        clog = self._conf_log
        while len(clog) > 1 and clog[1][0] <= committed:
            self._base_conf = clog.pop(0)[2]
        if self.role is Role.LEADER:
            self._advance_change()

    @property
    def promotable(self) -> bool:
        """Whether this member may campaign: a voter of the configuration in
        force; or, while that configuration is not committed, a voter of the
        committed one (a voter being removed must still be able to lead the
        change to its end when the new voters are behind: thesis 4.2.2)."""
        if self.id in self.voters or self.id in self.outgoing:
            return True
        if self.conf_committed():
            return False
        committed = self.conf_at(self.log.committed)
        return self.id in committed.voters or self.id in committed.voters_outgoing

    def conf_at(self, index: int) -> ConfState:
        """The configuration in force at ``index`` (for a snapshot taken there)."""
        conf = self._base_conf
        for i, _, c in self._conf_log:
            if i > index:
                break
            conf = c
        return conf

    def conf_committed(self) -> bool:
        """Whether the configuration in force is committed."""
        return not self._conf_log or self._conf_log[-1][0] <= self.log.committed

    # -- changes -------------------------------------------------------------

    def change_conf(
        self,
        voters: tuple[NodeId, ...],
        learners: tuple[NodeId, ...] = (),
        priorities: tuple[tuple[NodeId, int], ...] | None = None,
    ) -> None:
        """Begin changing the configuration to ``voters`` and ``learners`` (and
        ``priorities``, or keep the current ones). See the module docstring.

        Raises `NotLeaderError`, `ConfChangeBusyError` (a change, or an
        uncommitted configuration, is in progress), `ConfigError` (invalid).
        """
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if self._change is not None or self.outgoing or not self.conf_committed():
            raise ConfChangeBusyError("a configuration change is already in progress")
        prios = self.conf.priorities if priorities is None else priorities
        target = ConfState(tuple(voters), tuple(learners), (), ())
        keep = confs.members(target)
        target = ConfState(
            target.voters, target.learners, (), tuple(sorted(p for p in prios if p[0] in keep))
        )
        problem = confs.check(target)
        if problem is not None:
            raise ConfigError(f"invalid configuration: {problem}")
        if set(target.voters) == set(self.voters):
            # Learners or priorities only: one entry, nothing votes differently.
            self._append_conf(target)
            self._conf_events.append(ConfEvent("started", target))
            self._change = _Change(target, (), self.ticks, joint_appended=True)
            return
        joining = tuple(v for v in target.voters if v not in self.voters)
        self._change = _Change(target, joining, self.ticks + self.config.catchup_timeout_ticks)
        self._conf_events.append(ConfEvent("started", target))
        self._use_conf(self.conf)  # track the joining peers
        for peer in joining:
            self._send_append(peer)
        self._advance_change()

    def _append_conf(self, conf: ConfState) -> None:
        index = self.log.last_index() + 1
        entry = Entry(self.term, index, _CONFIG, confs.encode(conf))
        self.log.append([entry])
        self._confs_appended([entry])
        self._broadcast_append()

    def _advance_change(self) -> None:
        """Move the leader's change (or a joint configuration it inherited) on."""
        change = self._change
        if self.outgoing:
            # Joint: once committed, leave it (whoever started the change).
            if self.conf_committed():
                final = confs.leave_joint(self.conf)
                self._append_conf(final)
                self._conf_events.append(ConfEvent("joint", final))
            return
        if change is None:
            return
        if not change.joint_appended:
            last = self.log.last_index()
            margin = self.config.catchup_margin
            # Caught up: it answered (match > 0: an empty log that never did is
            # not caught up, however short ours is) and is within the margin.
            waiting = tuple(
                p
                for p in change.catching_up
                if (pr := self.progress.get(p)) is None
                or pr.match + margin < last
                or (pr.match == 0 and last > 0)
            )
            if waiting:
                if self.ticks >= change.deadline:
                    self._abort_change(f"{', '.join(waiting)} did not catch up in time")
                return
            change.catching_up = ()
            change.joint_appended = True
            joint = confs.joint(self.conf, change.target.voters, change.target.learners)
            joint = ConfState(
                joint.voters, joint.learners, joint.voters_outgoing, change.target.priorities
            )
            self._append_conf(joint)
            return
        if self.conf_committed() and self.conf == change.target:
            self._change = None
            self._conf_events.append(ConfEvent("done", change.target))
            if not self.promotable:
                self._become_follower(self.term, "")  # removed: step down

    def _abort_change(self, why: str) -> None:
        change = self._change
        if change is None:
            return
        self._change = None
        self._conf_events.append(ConfEvent("aborted", change.target, why))
        self._use_conf(self.conf)  # stop tracking the joining peers

    def _tick_membership(self) -> None:
        if self._change is not None:
            self._advance_change()
        tr = self._transfer
        if tr is not None and self.ticks >= tr.deadline:
            self._transfer = None
            self._conf_events.append(
                ConfEvent("transfer_aborted", ConfState((tr.target,)), "timed out")
            )

    def _membership_reset(self) -> None:
        """Leadership ended (or began): a change or transfer in flight is over."""
        if self._change is not None:
            self._abort_change("leadership changed")
        if self._transfer is not None:
            target = self._transfer.target
            self._transfer = None
            self._conf_events.append(
                ConfEvent("transfer_stepped_down", ConfState((target,)), "leadership changed")
            )

    def reset_conf(self, voters: tuple[NodeId, ...]) -> None:
        """UNSAFE: replace the configuration in force with ``voters`` without
        consensus, for a group whose majority is lost for good (their disks are
        gone). Once this node leads (it may campaign at once), it appends the
        configuration so that it is replicated and survives restarts; until then
        a restart forgets it. Every surviving node must be reset to the same set,
        and the lost ones must never come back with their old data: otherwise
        two groups may each believe they are the one. Raises `ConfigError`."""
        conf = ConfState(tuple(voters))
        problem = confs.check(conf)
        if problem is not None:
            raise ConfigError(f"invalid configuration: {problem}")
        self._change = None
        self._base_conf = conf
        self._conf_log = []
        self._use_conf(conf)
        self._reset_pending = conf
        self._conf_events.append(ConfEvent("reset", conf))

    def _after_elected(self) -> None:
        """A new leader: make a reset configuration part of the log."""
        pending = self._reset_pending
        if pending is not None:
            self._reset_pending = None
            self._append_conf(pending)

    # -- leadership transfer -------------------------------------------------

    def transfer_leadership(self, target: NodeId | None = None) -> NodeId:
        """Hand leadership to ``target`` (a voter), or to the most up-to-date
        voter; returns the target. Raises `NotLeaderError`, `ConfigError`."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if target is None:
            others = [v for v in self._all_voters() if v != self.id]
            if not others:
                raise ConfigError("no other voter to hand leadership to")
            target = max(
                others,
                key=lambda v: (self.progress[v].match, confs.priority(self.conf, v), v),
            )
        if target == self.id:
            return target
        if target not in self.voters:
            raise ConfigError(f"{target} is not a voter of the configuration in force")
        self._transfer = _Transfer(target, self.ticks + self.config.election_ticks)
        self._conf_events.append(ConfEvent("transfer_started", ConfState((target,))))
        self._maybe_send_timeout_now()
        if self._transfer is not None and not self._transfer.sent:
            self._send_append(target)
        return target

    def _maybe_send_timeout_now(self) -> None:
        tr = self._transfer
        if tr is None or tr.sent:
            return
        pr = self.progress.get(tr.target)
        if pr is not None and pr.match == self.log.last_index():
            tr.sent = True
            self._lease_off_term = self.term
            self._send(TimeoutNow(self.group, self.term, self.id, tr.target))

    @property
    def transferring(self) -> bool:
        """Whether a leadership transfer is in progress (proposals are refused)."""
        return self._transfer is not None

    # -- priority election ---------------------------------------------------

    def _max_priority(self) -> int:
        return max((confs.priority(self.conf, v) for v in self._all_voters()), default=1)

    def _may_campaign(self) -> bool:
        """Priority election: whether this voter campaigns now. Each election
        timeout that passes without a leader lowers the bar for lower priorities."""
        mine = confs.priority(self.conf, self.id)
        # Priority 0 too, once the bar has decayed to 0: no voter of positive
        # priority got elected at any level (it may alone hold the newest
        # committed entries, refusing them its vote); as leader it hands over
        # to the first of them that catches up (`_hand_over_to_priority`).
        if mine >= self._target_priority:
            return True
        self._target_priority = max(
            mine, self._target_priority - max(1, self._target_priority // 5)
        )
        return False

    def _leader_heard(self) -> None:
        self._target_priority = self._max_priority()

    def _hand_over_to_priority(self) -> None:
        if not self.conf.priorities or self.role is not Role.LEADER or self._transfer:
            return
        mine = confs.priority(self.conf, self.id)
        last = self.log.last_index()
        # A leader of priority 0 leads only for want of another: it hands over
        # to one close enough for the transfer to finish the catch-up, not only
        # to one exactly caught up (under steady writes, rarely the case).
        behind = self.config.catchup_margin if mine <= 0 else 0
        better = [
            v
            for v in self.voters
            if v != self.id
            and confs.priority(self.conf, v) > mine
            and (pr := self.progress.get(v)) is not None
            and pr.recent_active
            and pr.match + behind >= last
        ]
        if better:
            best = max(better, key=lambda v: (confs.priority(self.conf, v), v))
            self.transfer_leadership(best)
