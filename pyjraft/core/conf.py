"""Configurations: what a configuration entry holds, and the rules of a change.

A configuration (`ConfState`) names the voters, the learners (non-voting
members that receive the log), and during a joint change the outgoing voters
(thesis 4.3: a joint configuration needs a majority of each of the incoming
and outgoing voters to elect and to commit). Each voter may carry a priority
(SOFAJRaft's priority election): higher-priority peers are preferred, and 0
leads only when no other voter can (`pyjraft.core.membership`); without
priorities every voter counts as 1.

Configuration entries carry one `ConfState`, encoded here as compact JSON
(the core's one on-disk and on-wire format of its own: it must decode the
same on every replica, forever). Decoding never trusts its input: anything
that is not a valid configuration raises `ValueError`, and the core treats
an append that carries one as a bad message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from pyjraft.core.types import ConfState, NodeId

MAX_MEMBERS = 1000
"""A configuration larger than this is refused (no real group comes close)."""

MAX_PRIORITY = 1 << 16


def encode(conf: ConfState) -> bytes:
    """The data of a configuration entry."""
    obj: dict[str, object] = {"v": list(conf.voters)}
    if conf.learners:
        obj["l"] = list(conf.learners)
    if conf.voters_outgoing:
        obj["o"] = list(conf.voters_outgoing)
    if conf.priorities:
        obj["p"] = [list(p) for p in conf.priorities]
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes) -> ConfState:
    """The configuration `encode` produced; `ValueError` for anything else."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"configuration entry is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not set(obj) <= {"v", "l", "o", "p"} or "v" not in obj:
        raise ValueError("configuration entry: expected a map with v, l, o, p")
    prios = obj.get("p", [])
    if not isinstance(prios, list) or len(prios) > MAX_MEMBERS:
        raise ValueError("configuration entry: bad priorities")
    pairs = []
    for p in prios:
        if (
            not isinstance(p, list)
            or len(p) != 2
            or not _is_id(p[0])
            or type(p[1]) is not int
            or not 0 <= p[1] <= MAX_PRIORITY
        ):
            raise ValueError(f"configuration entry: bad priority {p!r:.80}")
        pairs.append((p[0], p[1]))
    conf = ConfState(
        voters=_ids(obj["v"], "voters"),
        learners=_ids(obj.get("l", []), "learners"),
        voters_outgoing=_ids(obj.get("o", []), "outgoing voters"),
        priorities=tuple(sorted(pairs)),
    )
    problem = check(conf)
    if problem is not None:
        raise ValueError(f"configuration entry: {problem}")
    return conf


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 256


def _ids(value: object, what: str) -> tuple[NodeId, ...]:
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise ValueError(f"configuration entry: {what} must be a list")
    if not all(_is_id(v) for v in value):
        raise ValueError(f"configuration entry: {what} must be node ids")
    return tuple(value)


def check(conf: ConfState) -> str | None:
    """Why ``conf`` is not a valid configuration, or None."""
    for name, ids in (
        ("voters", conf.voters),
        ("learners", conf.learners),
        ("outgoing voters", conf.voters_outgoing),
    ):
        if len(set(ids)) != len(ids):
            return f"duplicate {name}"
    if not conf.voters:
        return "no voters"
    if set(conf.learners) & set(conf.voters):
        # (An outgoing voter may already be a learner: it is being demoted.)
        return "a learner is also a voter"
    named = {p for p, _ in conf.priorities}
    if len(named) != len(conf.priorities):
        return "a priority given twice"
    if not named <= set(conf.voters) | set(conf.voters_outgoing) | set(conf.learners):
        return "a priority for a non-member"
    return None


def members(conf: ConfState) -> frozenset[NodeId]:
    """Everyone a configuration names."""
    return frozenset((*conf.voters, *conf.voters_outgoing, *conf.learners))


def priority(conf: ConfState, peer: NodeId) -> int:
    """``peer``'s priority (1 unless given)."""
    for p, prio in conf.priorities:
        if p == peer:
            return prio
    return 1


def joint(
    old: ConfState, new_voters: Iterable[NodeId], new_learners: Iterable[NodeId]
) -> ConfState:
    """The joint configuration entering ``new_voters`` from ``old``."""
    voters = tuple(new_voters)
    learners = tuple(n for n in new_learners if n not in voters)
    return ConfState(voters, learners, old.voters, _keep_priorities(old, voters, learners))


def leave_joint(conf: ConfState) -> ConfState:
    """The configuration a joint one ends in: its incoming voters alone."""
    return ConfState(
        conf.voters,
        conf.learners,
        (),
        _keep_priorities(conf, conf.voters, conf.learners),
    )


def _keep_priorities(
    conf: ConfState, voters: tuple[NodeId, ...], learners: tuple[NodeId, ...]
) -> tuple[tuple[NodeId, int], ...]:
    keep = set(voters) | set(learners) | set(conf.voters)
    return tuple(p for p in conf.priorities if p[0] in keep)
