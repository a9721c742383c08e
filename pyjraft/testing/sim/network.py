"""The simulated network: when (and whether) each message arrives.

Links are FIFO, like a TCP stream, except for a share of messages that may
overtake others (a reconnect, a retransmission on another path). Delays are
usually short and uniform; a share of messages (the tail) and every message
on a slow link take much longer, so messages of terms long gone keep
arriving. Messages may be dropped or duplicated. Partitions cut links, in
one or both directions; a cut link loses what it carries at delivery time.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from pyjraft.core.messages import Message
from pyjraft.core.types import NodeId
from pyjraft.testing.sim.options import Profile


class SimNetwork:
    """Decides the delivery times of messages; the simulation schedules them."""

    def __init__(self, rng: random.Random, profile: Profile, ids: list[NodeId]) -> None:
        self.rng = rng
        self.drop = profile.drop
        self.dup = profile.dup
        self.reorder = profile.reorder
        self.max_delay = profile.max_delay
        self.tail = profile.tail
        self.tail_delay = profile.tail_delay
        self.slow = {(ids[a], ids[b]) for a, b in profile.slow_links}
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.lagging: dict[NodeId, tuple[int, int]] = {}
        """Nodes whose messages, until the time given, all arrive that much later."""
        self._link_clock: dict[tuple[NodeId, NodeId], int] = {}

    def heal(self) -> None:
        """No more faults: every link works, fast and in order."""
        self.cut = set()
        self.lagging = {}
        self.drop = self.dup = self.reorder = self.tail = 0.0
        self.slow = set()
        self.max_delay = 5

    def is_cut_between(self, src: NodeId, dst: NodeId) -> bool:
        """Whether what ``src`` sends ``dst`` is lost now."""
        return (src, dst) in self.cut

    def is_cut(self, m: Message) -> bool:
        """Whether ``m``'s link is cut now."""
        return (m.src, m.dst) in self.cut

    def deliveries(self, now: int, msgs: Iterable[Message]) -> list[tuple[int, Message]]:
        """When each copy of each message arrives (dropped ones never do)."""
        rng = self.rng
        out: list[tuple[int, Message]] = []
        for m in msgs:
            if self.drop and rng.random() < self.drop:
                continue
            copies = 2 if self.dup and rng.random() < self.dup else 1
            link = (m.src, m.dst)
            for _ in range(copies):
                at = now + 1 + rng.randrange(self.max_delay)
                if link in self.slow or (self.tail and rng.random() < self.tail):
                    at += rng.randrange(self.tail_delay)
                lag = self.lagging.get(m.src)
                if lag is not None and lag[0] >= now:
                    at += lag[1]
                if not (self.reorder and rng.random() < self.reorder):
                    at = max(at, self._link_clock.get(link, 0))
                    self._link_clock[link] = at
                out.append((at, m))
        return out

    def partition(self, ids: list[NodeId]) -> None:
        """Split the nodes in two random sides."""
        side = set(self.rng.sample(ids, self.rng.randrange(1, len(ids))))
        self.cut = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}

    def split(self, ids: list[NodeId], side: set[NodeId]) -> None:
        """Cut ``side`` off from the other nodes, both ways."""
        self.cut = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}

    def isolate(self, ids: list[NodeId], a: NodeId) -> None:
        """Cut ``a`` off from everyone, both ways."""
        self.cut = {(x, y) for x in ids for y in ids if a in (x, y) and x != y}

    def lag(self, a: NodeId, now: int, duration: int, delay: int) -> None:
        """Everything ``a`` sends for ``duration`` arrives ``delay`` later, in
        order (a process paused with its sends queued, then resumed): it lands
        after the others gave up on it and moved on to newer terms."""
        self.lagging[a] = (now + duration, delay)

    def cut_one_way(self, a: NodeId, b: NodeId) -> None:
        """``a``'s messages to ``b`` are lost; ``b``'s to ``a`` still arrive."""
        self.cut.add((a, b))
