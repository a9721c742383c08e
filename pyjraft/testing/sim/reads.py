"""Linearizable reads in the simulation, checked against the client history.

Clients read at random times from the leader (ReadIndex, or the lease where
every node runs check-quorum) or from a follower, which asks its leader for
a read index (a simulated RPC, with the network's delays) and serves once it
has applied that far, as `pyjraft.node.Node.read_index` does. A read returns
the state of the replica that served it: the committed prefix it had applied
(`pyjraft.testing.sim.snapshots` state machines are hash chains, so the
prefix length is the state).

The history check is linearizability for this state machine: a read must
see every write acknowledged to a client before the read began, and at least
as much as every read that completed before it began. A stale read (a
deposed leader answering from its old commit index, a follower serving
before it applied the read index) fails it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyjraft.core.errors import NotLeaderError
from pyjraft.core.read_only import ReadState
from pyjraft.core.types import NONE, NodeId, Role
from pyjraft.testing.sim.checker import SafetyViolation, Violation

if TYPE_CHECKING:
    from pyjraft.testing.sim.cluster import Simulation


@dataclass(slots=True)
class _Read:
    ctx: bytes
    server: NodeId
    """The replica that serves it (and waits until it has applied the index)."""
    incarnation: int
    floor: int
    """What it must see at least: the history when it began."""
    lease: bool
    began: int
    index: int = 0
    """The read index, once confirmed (0 until then)."""


class ReadDriver:
    """Issues reads, routes their read states, completes and checks them."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self._no = 0
        self._reads: dict[bytes, _Read] = {}
        # Confirmed reads by the replica that serves them, waiting for its apply.
        self._confirmed: dict[NodeId, list[_Read]] = {}
        self.floor = 0
        """The longest prefix any completed operation has shown a client."""

    def written(self, index: int) -> None:
        """A write at ``index`` was acknowledged to its client."""
        self.floor = max(self.floor, index)

    def begin(self) -> NodeId | None:
        """A client starts a read somewhere; returns the node whose core it touched."""
        sim = self.sim
        # Paused processes too: a request to one waits in its socket until it runs.
        alive = [n for n in sim.ids if sim.nodes[n].core is not None]
        if not alive:
            return None
        # Clients mostly send reads to whoever they think leads: a node that
        # still believes it leads gets them, deposed or not.
        leaders = [n for n in alive if sim.nodes[n].core.role is Role.LEADER]  # type: ignore[union-attr]
        if leaders and sim.rng.random() < 0.6:
            # A client whose idea of the leader is out of date asks the oldest.
            server = min(leaders, key=lambda n: sim.nodes[n].core.term)  # type: ignore[union-attr]
        else:
            server = sim.rng.choice(alive)
        core = sim.nodes[server].core
        assert core is not None
        self._no += 1
        ctx = f"r{self._no}".encode()
        lease = sim.profile.lease_reads and sim.rng.random() < 0.5
        read = _Read(ctx, server, sim.nodes[server].incarnation, self.floor, lease, sim.now)
        self._expire()
        if core.role is Role.LEADER:
            # The request travels to it (and waits there if it is paused).
            self._reads[ctx] = read
            sim.result.reads += 1
            sim.schedule_read_rpc(server, ctx)
            return None
        if core.leader == NONE or (server, core.leader) in sim.net.cut:
            return None  # a follower without a leader refuses at once
        # A follower read: ask the leader over the network.
        self._reads[ctx] = read
        sim.result.reads += 1
        sim.schedule_read_rpc(core.leader, ctx)
        return None

    def _expire(self) -> None:
        # A read nobody answered (its leader lost leadership, its request was
        # lost) is abandoned by its client after a while: forget it.
        if len(self._reads) < 256:
            return
        horizon = self.sim.now - 100 * self.sim.opt.election_ticks * 100
        for ctx in [c for c, r in self._reads.items() if r.began < horizon and not r.index]:
            del self._reads[ctx]

    def at_leader(self, leader: NodeId, ctx: bytes) -> NodeId | None:
        """A follower's read index request reaches ``leader``."""
        sim = self.sim
        node = sim.nodes[leader]
        read = self._reads.get(ctx)
        if read is None or node.core is None or node.paused_until > sim.now:
            self._reads.pop(ctx, None)
            return None
        try:
            sim.current = leader
            node.core.read_index(ctx, read.lease)
        except NotLeaderError:
            self._reads.pop(ctx, None)
            return None
        return leader

    def confirmed(self, nid: NodeId, states: list[ReadState]) -> None:
        """``nid``'s core confirmed these reads (it leads; they may be another's)."""
        sim = self.sim
        for st in states:
            read = self._reads.get(st.ctx)
            if read is None:
                continue
            read.index = st.index
            if read.server == nid:
                self._confirmed.setdefault(nid, []).append(read)
                self.maybe_complete(nid)
            else:
                sim.schedule_read_reply(read.server, st.ctx, (nid, read.server) in sim.net.cut)

    def reply(self, ctx: bytes, lost: bool) -> NodeId | None:
        """The leader's answer reaches the follower that asked."""
        read = self._reads.get(ctx)
        if read is None:
            return None
        if lost:
            del self._reads[ctx]
            return None
        self._confirmed.setdefault(read.server, []).append(read)
        self.maybe_complete(read.server)
        return None

    def maybe_complete(self, nid: NodeId) -> None:
        """Serve ``nid``'s confirmed reads that it has applied far enough for."""
        waiting = self._confirmed.get(nid)
        if not waiting:
            return
        sim = self.sim
        node = sim.nodes[nid]
        keep = []
        for read in waiting:
            if node.core is None or node.incarnation != read.incarnation:
                self._reads.pop(read.ctx, None)  # the server died: the read failed
            elif node.applied < read.index:
                keep.append(read)
            else:
                self._reads.pop(read.ctx, None)
                self._check(nid, read, node.applied)
        self._confirmed[nid] = keep

    def _check(self, nid: NodeId, read: _Read, result: int) -> None:
        if result < read.floor:
            raise SafetyViolation(
                Violation(
                    "linearizability",
                    nid,
                    f"{'lease ' if read.lease else ''}read {read.ctx.decode()} returned the "
                    f"prefix up to {result} (read index {read.index}), but a client had "
                    f"already seen up to {read.floor} before the read began",
                )
            )
        self.sim.result.reads_served += 1
        self.floor = max(self.floor, result)
