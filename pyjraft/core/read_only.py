"""Linearizable reads on the leader: ReadIndex rounds and the leader lease.

Theory of operation (thesis 6.4)
-------------------------------
A read is linearizable if it reflects every write committed before it
began. The leader knows its commit index, but must also know it is still
the leader when the read arrives (a deposed leader, cut off, would serve
stale data). Two ways:

- ReadIndex (safe): record the commit index, then hear from a majority in a
  heartbeat round that started after the read arrived; no newer leader can
  have existed at the moment the round started, so the recorded index is at
  least the cluster's commit index then. The read is served once the state
  machine has applied that far. Every heartbeat the leader broadcasts is a
  *round*, numbered, its number in the heartbeat's context (echoed by the
  response); a read waits for the first round sent after it, and all reads
  waiting for one round share it.
- Lease (opt-in): with check-quorum, a follower refuses to vote for anyone
  until an election timeout has passed since it last heard from its leader.
  So once a majority has answered a round sent at tick T, no other leader
  can be elected before T + election timeout, by the followers' clocks. The
  leader serves reads with no round trip until T + lease, where the lease is
  shorter than the election timeout by a margin for clock drift. It assumes
  that the nodes' clocks (their tick rates) differ by less than that margin
  over an election timeout, and that the runtime gives the leader every tick
  that passed, a paused process included (the runtime catches up elapsed
  ticks before a lease read).

A new leader serves neither until an entry of its own term is committed
(until then its commit index may be behind what earlier leaders committed).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from pyjraft.core import quorum
from pyjraft.core.types import NodeId

ROUND_BYTES = 8
"""A round number travels as the heartbeat's 8-byte big-endian context."""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read (identified by the caller's ``ctx``) is safe to serve once this
    node has applied ``index``."""

    index: int
    ctx: bytes


def round_context(n: int) -> bytes:
    """The heartbeat context of round ``n``."""
    return n.to_bytes(ROUND_BYTES, "big")


def context_round(ctx: bytes) -> int | None:
    """The round a heartbeat response answers, or None if it is not one of ours."""
    if len(ctx) != ROUND_BYTES:
        return None
    return int.from_bytes(ctx, "big")


class ReadOnly:
    """The leader's bookkeeping of rounds, waiting reads and the lease.

    Reset whenever the node becomes leader: rounds of an earlier leadership
    never count (their responses carry an older term, and are dropped anyway).
    """

    __slots__ = ("_acked", "_pending", "_round", "_sent", "self_id")

    def __init__(self, self_id: NodeId) -> None:
        self.self_id = self_id
        self._round = 0
        # (round, tick it was sent), oldest first; trimmed to what the lease needs.
        self._sent: deque[tuple[int, int]] = deque()
        self._acked: dict[NodeId, int] = {}
        # (round it waits for, read index, ctx), in round order.
        self._pending: deque[tuple[int, int, bytes]] = deque()

    @property
    def waiting(self) -> int:
        """Reads waiting for a round."""
        return len(self._pending)

    def new_round(self, now: int) -> int:
        """A heartbeat round starts at tick ``now``; returns its number."""
        self._round += 1
        self._sent.append((self._round, now))
        return self._round

    def add_read(self, index: int, ctx: bytes) -> None:
        """A read at ``index`` waits for the next round (the caller starts it)."""
        self._pending.append((self._round + 1, index, ctx))

    def ack(self, peer: NodeId, rnd: int) -> None:
        """``peer`` answered round ``rnd`` (answers to later rounds imply earlier)."""
        if rnd <= self._round and rnd > self._acked.get(peer, 0):
            self._acked[peer] = rnd

    def confirmed(self, voters: Collection[NodeId], outgoing: Collection[NodeId] = ()) -> int:
        """The latest round a majority of ``voters`` (and of ``outgoing``, in a joint
        configuration) answered; we answer every round ourselves."""
        acked = dict(self._acked)
        acked[self.self_id] = self._round
        return quorum.joint_index(voters, outgoing, acked)

    def release(
        self, voters: Collection[NodeId], outgoing: Collection[NodeId] = ()
    ) -> list[ReadState]:
        """The reads whose round a majority has answered."""
        pending = self._pending
        if not pending:
            return []
        done = self.confirmed(voters, outgoing)
        out = []
        while pending and pending[0][0] <= done:
            _, index, ctx = pending.popleft()
            out.append(ReadState(index, ctx))
        return out

    def lease_until(
        self, voters: Collection[NodeId], lease_ticks: int, outgoing: Collection[NodeId] = ()
    ) -> int:
        """The tick before which the lease holds (0: no lease)."""
        done = self.confirmed(voters, outgoing)
        sent = self._sent
        for rnd, tick in sent:
            if rnd == done:
                return tick + lease_ticks
        return 0

    def trim(self, now: int, lease_ticks: int) -> None:
        """Forget send ticks of rounds too old to give a lease, keeping the
        newest confirmed one."""
        sent = self._sent
        while len(sent) > 1 and sent[1][1] + lease_ticks <= now:
            sent.popleft()
