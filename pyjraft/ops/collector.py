"""`RaftCollector`: Prometheus metrics of a process's nodes, read at scrape time.

Theory of operation
-------------------
Nothing here runs on the write path. The node keeps plain integer counters
(`Node.stats`), its status (`Node.status`: term, role, indexes, per-peer
progress), its events' counters (`Node.events`) and, with
``NodeOptions.metrics``, a few histograms recorded once per batch
(`pyjraft.node.metrics`). A scrape calls `RaftCollector.collect`, which reads
all of that and builds metric families on the spot, the way a custom
``prometheus_client`` collector is meant to: no prometheus object is touched
per proposal.

Names follow SOFAJRaft's metric set in Prometheus style: ``pyjraft_`` prefix,
``_total`` counters, ``_seconds`` histograms, ``group`` and ``node`` labels on
every node metric, ``peer`` on replication progress, ``endpoint`` on the
transport's. Snapshot metrics (saves, installs and transfers with their
failures, bytes, durations, the newest snapshot's index) come from the
``snapshot`` part of `Node.status` and the node's event counters. Reads
are counted in `Node.stats` (``reads``, ``lease_reads``, ...) and timed by
the ``read_index_seconds`` histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from pyjraft.node.metrics import Histogram, NodeMetrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pyjraft.node import Node
    from pyjraft.ops.loop_lag import LoopLagMonitor
    from pyjraft.transport.base import Transport

ROLES = ("follower", "pre_candidate", "candidate", "leader", "learner", "error")
"""The values of the ``role`` label of ``pyjraft_role``."""

_NODE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    # (Node.stats key, metric name, help)
    ("proposals", "pyjraft_proposals", "Entries proposed by this node as leader."),
    ("batches", "pyjraft_proposal_batches", "Proposal batches (one log write each)."),
    ("overloaded", "pyjraft_overload_rejections", "Proposals refused with OverloadedError."),
    ("syncs", "pyjraft_log_syncs", "Durable log writes (one fdatasync each)."),
    ("applied", "pyjraft_applied_entries", "User entries applied to the state machine."),
    ("readies", "pyjraft_readies", "Ready batches handled."),
    ("timer_wakeups", "pyjraft_timer_wakeups", "Tick timer firings."),
    ("reads", "pyjraft_reads", "Linearizable reads asked of this node (read_index calls)."),
    ("lease_reads", "pyjraft_lease_reads", "Of those, lease reads."),
    ("follower_reads", "pyjraft_follower_reads", "Of those, asked of the leader by this follower."),
    ("read_errors", "pyjraft_follower_read_errors", "Follower reads the leader did not confirm."),
    (
        "storage_retries",
        "pyjraft_storage_retries",
        "Storage writes retried after failing for want of a file descriptor.",
    ),
    (
        "storage_stalls",
        "pyjraft_storage_stalls",
        "Storage writes that had to be retried at least once (file descriptors ran out).",
    ),
)

_EVENT_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("pre_votes_started", "pyjraft_pre_votes_started", "Pre-vote rounds started."),
    ("elections_started", "pyjraft_elections_started", "Elections started (term bumped)."),
    ("elections_won", "pyjraft_elections_won", "Elections won."),
    ("elections_lost", "pyjraft_elections_lost", "Elections lost or timed out."),
    ("votes_granted", "pyjraft_votes_granted", "Votes cast for another member."),
    ("role_changes", "pyjraft_role_changes", "Role changes."),
    ("term_changes", "pyjraft_term_changes", "Term changes."),
    ("leader_changes", "pyjraft_leader_changes", "Changes of the known leader."),
)

_SNAPSHOT_EVENT_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("snapshots_saved", "pyjraft_snapshot_saves", "Snapshots taken and published."),
    ("snapshot_save_failures", "pyjraft_snapshot_save_failures", "Snapshots that failed."),
    ("snapshot_installs", "pyjraft_snapshot_installs", "Leader snapshots installed here."),
    (
        "snapshot_install_failures",
        "pyjraft_snapshot_install_failures",
        "Snapshot installs abandoned here (failed, timed out, leader changed).",
    ),
    ("snapshot_sends", "pyjraft_snapshot_sends", "Leader: snapshot transfers completed."),
    ("snapshot_send_failures", "pyjraft_snapshot_send_failures", "Leader: transfers that failed."),
)

_SNAPSHOT_COUNTERS: tuple[tuple[str, str, str], ...] = (
    # (Node.status()["snapshot"] key, metric name, help)
    ("bytes_sent", "pyjraft_snapshot_sent_bytes", "Leader: snapshot bytes served to followers."),
    ("bytes_received", "pyjraft_snapshot_received_bytes", "Snapshot bytes received."),
    ("save_seconds", "pyjraft_snapshot_save_seconds", "Time taking snapshots, capture to publish."),
    (
        "save_pause_seconds",
        "pyjraft_snapshot_save_pause_seconds",
        "Time applies were paused while state machines captured their state.",
    ),
    ("install_seconds", "pyjraft_snapshot_install_seconds", "Time receiving and installing."),
    ("compactions", "pyjraft_log_compactions", "Log compactions after snapshots."),
)

_NODE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("term", "pyjraft_term", "Current term."),
    ("commit_index", "pyjraft_commit_index", "Highest log index known committed."),
    ("applied_index", "pyjraft_applied_index", "Highest log index applied here."),
    ("first_index", "pyjraft_first_log_index", "First index in the log."),
    ("last_index", "pyjraft_last_log_index", "Last index in the log."),
    ("pending", "pyjraft_pending_proposals", "Proposals queued or awaiting apply."),
)

_HISTOGRAMS: dict[str, str] = {
    "proposal_batch_size": "Entries per proposal batch.",
    "replicate_seconds": "Leader: from a batch's proposal until it is known committed.",
    "log_append_seconds": "One log append, its write and fdatasync together.",
    "meta_save_seconds": "One durable save of term and vote.",
    "apply_seconds": "One StateMachine.on_apply call.",
    "read_index_seconds": "One successful read_index (ReadIndex, lease or follower read), "
    "from the call until this node applied up to the confirmed index.",
}

_PEER_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("match", "pyjraft_peer_match_index", "Leader: highest index known replicated on the peer."),
    ("next", "pyjraft_peer_next_index", "Leader: next index to send to the peer."),
    ("lag", "pyjraft_peer_lag_entries", "Leader: its last index minus the peer's match."),
    ("inflight", "pyjraft_peer_inflight_messages", "Leader: unacknowledged AppendEntries."),
    ("inflight_bytes", "pyjraft_peer_inflight_bytes", "Leader: unacknowledged entry bytes."),
)

_TRANSPORT_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("frames_in", "pyjraft_transport_frames_received", "Valid frames received."),
    ("frames_out", "pyjraft_transport_frames_sent", "Frames written."),
    ("bytes_in", "pyjraft_transport_received_bytes", "Bytes of valid frames received."),
    ("bytes_out", "pyjraft_transport_sent_bytes", "Bytes written."),
    ("messages_in", "pyjraft_transport_messages_received", "Raft messages delivered to groups."),
    ("messages_out", "pyjraft_transport_messages_sent", "Raft messages written."),
    ("dropped_sends", "pyjraft_transport_dropped_sends", "Raft messages dropped when sending."),
    ("unknown_group", "pyjraft_transport_unknown_group", "Messages for an unregistered group."),
    ("handler_errors", "pyjraft_transport_handler_errors", "Raft handlers that raised."),
    ("reconnects", "pyjraft_transport_reconnects", "Outbound connections re-established."),
    ("connect_failures", "pyjraft_transport_connect_failures", "Failed connection attempts."),
    ("requests_in", "pyjraft_rpc_requests", "RPC requests received."),
    ("request_errors", "pyjraft_rpc_request_errors", "RPC requests answered with an error."),
)


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if b == float("inf") else repr(b), float(n)) for b, n in h.cumulative()]


class RaftCollector(Collector):
    """Collects every node, transport and the loop lag a provider returns."""

    def __init__(
        self,
        nodes: Callable[[], Sequence[Node]],
        transports: Callable[[], Sequence[Transport]],
        loop_lag: LoopLagMonitor | None = None,
    ) -> None:
        self._nodes = nodes
        self._transports = transports
        self._loop_lag = loop_lag

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the metrics depend on the nodes present at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Build every family from the nodes' current counters and status."""
        nodes = list(self._nodes())
        yield from self._node_families(nodes)
        yield from self._transport_families(list(self._transports()))
        if self._loop_lag is not None:
            yield from self._loop_lag_families(self._loop_lag)

    def _node_families(self, nodes: list[Node]) -> Iterator[Metric]:
        labels = ["group", "node"]
        statuses: list[tuple[list[str], Node, dict[str, Any]]] = [
            ([n.group, n.id], n, n.status()) for n in nodes
        ]
        for key, name, doc in _NODE_COUNTERS:
            c = CounterMetricFamily(name, doc, labels=labels)
            for lv, n, _ in statuses:
                c.add_metric(lv, n.stats.get(key, 0))
            yield c
        for key, name, doc in _EVENT_COUNTERS:
            c = CounterMetricFamily(name, doc, labels=labels)
            for lv, n, _ in statuses:
                c.add_metric(lv, n.events.counters.get(key, 0))
            yield c
        for key, name, doc in _NODE_GAUGES:
            g = GaugeMetricFamily(name, doc, labels=labels)
            for lv, _, st in statuses:
                g.add_metric(lv, st.get(key, 0))
            yield g
        stalled = GaugeMetricFamily(
            "pyjraft_storage_stalled_seconds",
            "How long the storage write being retried has been failing (0: none is).",
            labels=labels,
        )
        for lv, _, st in statuses:
            stalled.add_metric(lv, st.get("storage_stalled_ms", 0.0) / 1000)
        yield stalled
        role = GaugeMetricFamily(
            "pyjraft_role",
            "1 for the node's current role (error: the node failed).",
            labels=[*labels, "role"],
        )
        leader = GaugeMetricFamily("pyjraft_is_leader", "1 while this node leads.", labels=labels)
        has_leader = GaugeMetricFamily(
            "pyjraft_has_leader", "1 while this node knows a leader.", labels=labels
        )
        for lv, _, st in statuses:
            for r in ROLES:
                role.add_metric([*lv, r], 1.0 if st["role"] == r else 0.0)
            leader.add_metric(lv, 1.0 if st["role"] == "leader" else 0.0)
            has_leader.add_metric(lv, 1.0 if st.get("leader") else 0.0)
        yield role
        yield leader
        yield has_leader
        for attr in NodeMetrics.HISTOGRAMS:
            h = HistogramMetricFamily(f"pyjraft_{attr}", _HISTOGRAMS[attr], labels=labels)
            for lv, n, _ in statuses:
                if n.metrics is not None:
                    hist: Histogram = getattr(n.metrics, attr)
                    h.add_metric(lv, _buckets(hist), hist.sum)
            yield h
        gaps = HistogramMetricFamily(
            "pyjraft_heartbeat_gap_seconds",
            "Follower: time between two heartbeats of its leader (same term) as received; "
            "an election starts when it reaches the election timeout.",
            labels=labels,
        )
        for lv, n, _ in statuses:
            gap_hist = n.heartbeat_gaps.histogram
            gaps.add_metric(lv, _buckets(gap_hist), gap_hist.sum)
        yield gaps
        peer_labels = [*labels, "peer"]
        for key, name, doc in _PEER_GAUGES:
            g = GaugeMetricFamily(name, doc, labels=peer_labels)
            for lv, _, st in statuses:
                for peer, pr in sorted(st.get("peers", {}).items()):
                    g.add_metric([*lv, peer], pr.get(key, 0))
            yield g
        yield from self._snapshot_families(statuses)

    @staticmethod
    def _snapshot_families(
        statuses: list[tuple[list[str], Node, dict[str, Any]]],
    ) -> Iterator[Metric]:
        labels = ["group", "node"]
        for key, name, doc in _SNAPSHOT_EVENT_COUNTERS:
            c = CounterMetricFamily(name, doc, labels=labels)
            for lv, n, _ in statuses:
                c.add_metric(lv, n.events.counters.get(key, 0))
            yield c
        for key, name, doc in _SNAPSHOT_COUNTERS:
            c = CounterMetricFamily(name, doc, labels=labels)
            for lv, _, st in statuses:
                c.add_metric(lv, st.get("snapshot", {}).get(key, 0))
            yield c
        index = GaugeMetricFamily(
            "pyjraft_snapshot_index", "Index of the newest snapshot here.", labels=labels
        )
        saving = GaugeMetricFamily(
            "pyjraft_snapshot_saving", "1 while a snapshot is being written.", labels=labels
        )
        installing = GaugeMetricFamily(
            "pyjraft_snapshot_installing", "1 while a leader's snapshot is received.", labels=labels
        )
        sending = GaugeMetricFamily(
            "pyjraft_snapshot_transfers", "Leader: snapshot transfers under way.", labels=labels
        )
        for lv, _, st in statuses:
            snap = st.get("snapshot", {})
            index.add_metric(lv, snap.get("index", 0))
            saving.add_metric(lv, 1.0 if snap.get("saving") else 0.0)
            installing.add_metric(lv, 1.0 if snap.get("installing") else 0.0)
            sending.add_metric(lv, len(snap.get("sending") or {}))
        yield index
        yield saving
        yield installing
        yield sending

    def _transport_families(self, transports: list[Transport]) -> Iterator[Metric]:
        labels = ["endpoint"]
        for key, name, doc in _TRANSPORT_COUNTERS:
            c = CounterMetricFamily(name, doc, labels=labels)
            for t in transports:
                c.add_metric([t.address], getattr(t.stats, key))
            yield c
        bad = CounterMetricFamily(
            "pyjraft_transport_bad_frames",
            "Connections closed for bytes that were not a valid frame or message, by reason.",
            labels=[*labels, "reason"],
        )
        conn = CounterMetricFamily(
            "pyjraft_transport_connection_errors",
            "Failed or lost connections, by kind (connect, lost, ...) and error.",
            labels=[*labels, "kind", "error"],
        )
        queued = GaugeMetricFamily(
            "pyjraft_transport_peer_queued_messages",
            "Raft messages queued for a peer's connection.",
            labels=[*labels, "peer"],
        )
        for t in transports:
            for key, count in sorted(t.stats.errors.items()):
                kind, _, reason = key.partition(":")
                if kind == "bad_frame":
                    bad.add_metric([t.address, reason], count)
                else:
                    conn.add_metric([t.address, kind, reason or "unknown"], count)
            peer_queues = getattr(t, "peer_queues", None)
            if callable(peer_queues):
                for peer, q in sorted(peer_queues().items()):
                    queued.add_metric([t.address, peer], q["queued"])
        yield bad
        yield conn
        yield queued

    @staticmethod
    def _loop_lag_families(mon: LoopLagMonitor) -> Iterator[Metric]:
        h = HistogramMetricFamily(
            "pyjraft_event_loop_lag_seconds",
            "How late the event loop ran a timer: time its other work held it.",
        )
        h.add_metric([], _buckets(mon.histogram), mon.histogram.sum)
        yield h
        g = GaugeMetricFamily(
            "pyjraft_event_loop_lag_max_seconds",
            "The longest event-loop lag seen in the last window.",
        )
        g.add_metric([], mon.recent_max())
        yield g
