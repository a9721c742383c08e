"""`describe_node`: the whole of one node's state as one structured value.

SOFAJRaft's ``Node#describe`` (printed on SIGUSR2): what `Node.status` says,
plus what an operator needs when a node misbehaves -- the depths of its
queues (proposals not yet proposed, entries awaiting apply, leader writes in
flight), its timers (tick interval, when the next tick is due, how far the
election clock has run), its options, its recent events and histograms, and
its transport's counters. It reads the node's private fields, which is why
it lives in the node package; everything outside uses `Node.describe`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pyjraft.core.types import Role
from pyjraft.node.membership import describe_conf

if TYPE_CHECKING:
    from pyjraft.node.node import Node


def leader_contact_ms(node: Node) -> float | None:
    """Milliseconds since this node last heard from its leader (0 when it leads),
    or None when it knows no leader. A follower's election clock is advanced
    lazily (`Node` gives it the ticks that passed when it wakes up), so the
    ticks not yet given are added: accurate to a tick."""
    core = node._core
    if core.leader == "":
        return None
    if core.leader == node.id:
        return 0.0
    pending = max(0.0, node._loop.time() - node._tick_base)
    return round(core.election_elapsed * node._tick_s * 1000 + pending * 1000, 3)


def peer_progress(node: Node) -> dict[str, dict[str, Any]]:
    """A leader's view of each other member: match and next index, progress
    state, lag (its last index minus the match), messages and bytes in flight,
    and whether it was heard from within the election timeout."""
    core = node._core
    last = core.log.last_index()
    return {
        p: {
            "match": pr.match,
            "next": pr.next,
            "state": pr.state.value,
            "lag": last - pr.match,
            "inflight": pr.inflights.count,
            "inflight_bytes": pr.inflights.bytes,
            "active": pr.recent_active,
        }
        for p, pr in core.progress.items()
        if p != node.id
    }


def status_of(node: Node) -> dict[str, Any]:
    """`Node.status`: role, term, leader, indexes, queue, timers' health,
    registration, counters and (on a leader) each peer's progress."""
    from pyjraft.node.lifecycle import NodeState

    core = node._core
    st: dict[str, Any] = {
        "id": node.id,
        "group": node.group,
        "state": node.state.value,
        # A failed node no longer takes part, whatever its core last was.
        "role": "error" if node.state is NodeState.ERROR else core.role.value,
        "term": core.term,
        "leader": core.leader,
        "vote": core.vote,
        "commit_index": core.commit_index,
        "applied_index": node.applied_index,
        "last_index": core.log.last_index(),
        "first_index": core.log.first_index(),
        "pending": len(node._queue) + len(node._waiting),
        "leader_contact_ms": leader_contact_ms(node),
        "heartbeat_gap": node.heartbeat_gaps.summary(),
        "storage_stalled_ms": node._storage_retry.stalled_ms(),
        "registration": None if node.registration is None else node.registration.summary(),
        "voters": list(core.voters),
        "learners": list(core.learners),
        "configuration": describe_conf(core.conf),
        "stats": dict(node.stats),
        "snapshot": node._snapshots.status(),
    }
    if core.role is Role.LEADER:
        st["peers"] = peer_progress(node)
    if node.error is not None:
        st["error"] = repr(node.error)
    return st


def describe_node(node: Node) -> dict[str, Any]:
    """A JSON-able dump of ``node``; see the module docstring."""
    core = node._core
    loop = node._loop
    out = node.status()
    handle = node._tick_handle
    out["queues"] = {
        "proposals_queued": len(node._queue),
        "awaiting_apply": len(node._waiting),
        "leader_unwritten_entries": node._unwritten,
        "leader_writes_in_flight": len(node._writes),
        "handling_ready": node._handling is not None,
        "drive_scheduled": node._drive_scheduled,
        "max_pending_proposals": node.options.max_pending_proposals,
        "oldest_proposal_ms": round(node._queue_delay.oldest_age(loop.time()) * 1000, 3),
        "shedding": node._queue_delay.shedding,
    }
    out["timers"] = {
        "heartbeat_ms": node.options.heartbeat_ms,
        "election_timeout_ms": node.options.election_timeout_ms,
        "next_tick_in_ms": (
            None if handle is None else round((handle.when() - loop.time()) * 1000, 3)
        ),
        "election_elapsed_ticks": core.election_elapsed,
        "election_timeout_ticks": core.randomized_election_ticks,
        "heartbeat_elapsed_ticks": core.heartbeat_elapsed,
        "busy_poll_us": node.options.busy_poll_us,
    }
    out["state_machine"] = {
        "class": type(node._fsm.machine).__qualname__,
        "applied_index": node._fsm.applied_index,
        "leader_started": node._leader_started,
    }
    out["events"] = {"counters": dict(node.events.counters), "recent": list(node.events.recent)}
    if node.metrics is not None:
        out["histograms"] = node.metrics.as_dict()
    out["options"] = dataclasses.asdict(node.options)
    out["storage"] = {"log": type(node._log).__qualname__, "meta": type(node._meta).__qualname__}
    transport = node.transport
    out["transport"] = {
        "class": type(transport).__qualname__,
        "address": transport.address,
        "stats": transport.stats.as_dict(),
    }
    peer_queues = getattr(transport, "peer_queues", None)
    if callable(peer_queues):
        out["transport"]["peers"] = peer_queues()
    return out
