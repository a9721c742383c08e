"""A tiny deterministic in-memory network of `RaftCore`s (after etcd-raft's
``raft_test.go`` network): each member has its own `MemoryLogStorage`,
`MemoryMetaStorage` and seeded `random.Random`; `Network.stabilize` drains
every `Ready` (honouring the durability contract) and delivers messages in
FIFO order until the network is quiet. Links can be cut, members isolated,
and messages dropped by predicate. Every message sent is recorded in
``Network.sent`` so tests can count them.

The harness also checks two contract invariants on every `Ready` it takes:
terms never decrease, and only a leader's AppendEntries/Heartbeat/TimeoutNow
are ever eager (sendable before persistence).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyjraft.core import (
    AppendEntries,
    CoreConfig,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    Message,
    NodeId,
    RaftCore,
    Ready,
    Role,
    TimeoutNow,
)
from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage

DropRule = Callable[[Message], bool]


def ents(*terms: int, start: int = 1, data: bytes = b"") -> list[Entry]:
    """Normal entries with the given terms at consecutive indexes from ``start``."""
    return [
        Entry(t, start + i, EntryType.NORMAL, data or f"{t}:{start + i}".encode())
        for i, t in enumerate(terms)
    ]


def persist(log: MemoryLogStorage, meta: MemoryMetaStorage, rd: Ready) -> None:
    """Step 2 of the `Ready` contract: make hard state and entries durable."""
    if rd.snapshot is not None:
        log.reset(rd.snapshot.index + 1, rd.snapshot.term)
    if rd.hard_state is not None:
        meta.save(rd.hard_state)
    if rd.entries:
        first = rd.entries[0].index
        if first <= log.last_index():
            log.truncate_suffix(first - 1)
        log.append(rd.entries)


@dataclass
class Member:
    """One simulated process: its core and its durable state."""

    config: CoreConfig
    log: MemoryLogStorage
    meta: MemoryMetaStorage
    rng: random.Random
    core: RaftCore
    applied: list[Entry] = field(default_factory=list)
    readies: list[Ready] = field(default_factory=list)
    max_term: int = 0


class Network:
    """Cores wired together through a FIFO queue of messages."""

    def __init__(
        self,
        ids: Sequence[NodeId],
        *,
        seed: int = 0,
        logs: dict[NodeId, list[Entry]] | None = None,
        hard_states: dict[NodeId, HardState] | None = None,
        overrides: dict[NodeId, dict[str, Any]] | None = None,
        voters: Sequence[NodeId] | None = None,
        **config: Any,
    ) -> None:
        """``voters``: the bootstrap configuration (default: every id); the
        other ids start with no configuration, as nodes about to be added do."""
        self.ids = tuple(ids)
        self.voters = tuple(voters) if voters is not None else self.ids
        self.seed = seed
        self.config = config
        self.overrides = overrides or {}
        self.members: dict[NodeId, Member] = {}
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []
        self.dropped: list[Message] = []
        self.drop_rules: list[DropRule] = []
        self.cut_links: set[tuple[NodeId, NodeId]] = set()
        self.down: set[NodeId] = set()
        for n, nid in enumerate(self.ids):
            log = MemoryLogStorage()
            log.append((logs or {}).get(nid, []))
            meta = MemoryMetaStorage((hard_states or {}).get(nid, HardState()))
            rng = random.Random(seed * 1000 + n)
            cfg = self._config(nid)
            core = RaftCore(cfg, log, meta.load(), rng)
            self.members[nid] = Member(cfg, log, meta, rng, core, max_term=core.term)

    def _config(self, nid: NodeId) -> CoreConfig:
        kw = {**self.config, **self.overrides.get(nid, {})}
        if nid not in self.voters:
            kw.pop("learners", None)
        return CoreConfig(id=nid, voters=self.voters if nid in self.voters else (), **kw)

    # -- access --------------------------------------------------------------

    def __getitem__(self, nid: NodeId) -> RaftCore:
        return self.members[nid].core

    def log_of(self, nid: NodeId) -> list[tuple[int, int]]:
        """(index, term) of every durable entry of ``nid``."""
        log = self.members[nid].log
        return [(e.index, e.term) for e in log.entries(log.first_index(), log.last_index() + 1)]

    def entries_of(self, nid: NodeId) -> list[Entry]:
        log = self.members[nid].log
        return log.entries(log.first_index(), log.last_index() + 1)

    def leaders(self) -> list[NodeId]:
        return [
            n for n, m in self.members.items() if n not in self.down and m.core.role is Role.LEADER
        ]

    # -- faults --------------------------------------------------------------

    def cut(self, a: NodeId, b: NodeId) -> None:
        """Drop every message between ``a`` and ``b`` (both ways)."""
        self.cut_links |= {(a, b), (b, a)}

    def isolate(self, nid: NodeId) -> None:
        for other in self.ids:
            if other != nid:
                self.cut(nid, other)

    def heal(self) -> None:
        """Restore every link and forget every drop rule."""
        self.cut_links.clear()
        self.drop_rules.clear()

    def drop(self, rule: DropRule) -> None:
        self.drop_rules.append(rule)

    def crash(self, nid: NodeId) -> None:
        """Stop ``nid``: messages to it are lost; its durable state stays."""
        self.down.add(nid)

    def restart(self, nid: NodeId, **overrides: Any) -> RaftCore:
        """Rebuild ``nid``'s core from its durable log and hard state."""
        m = self.members[nid]
        if overrides:
            self.overrides[nid] = {**self.overrides.get(nid, {}), **overrides}
        m.config = self._config(nid)
        m.core = RaftCore(m.config, m.log, m.meta.load(), m.rng)
        m.applied = []
        self.down.discard(nid)
        return m.core

    def _blocked(self, msg: Message) -> bool:
        return (
            msg.dst in self.down
            or msg.src in self.down
            or (msg.src, msg.dst) in self.cut_links
            or any(rule(msg) for rule in self.drop_rules)
        )

    # -- driving -------------------------------------------------------------

    def process_ready(self, nid: NodeId) -> list[Message]:
        """Take ``nid``'s `Ready`, do what it says, advance; return what to send."""
        m = self.members[nid]
        core = m.core
        rd = core.ready()
        m.readies.append(rd)
        assert core.term >= m.max_term, f"{nid}: term went back {m.max_term} -> {core.term}"
        m.max_term = core.term
        for msg in rd.eager_messages:
            assert isinstance(msg, (AppendEntries, Heartbeat, TimeoutNow)), (
                f"{nid}: {type(msg).__name__} must wait for persistence"
            )
        persist(m.log, m.meta, rd)
        m.applied.extend(rd.committed_entries)
        core.advance(rd)
        return [*rd.eager_messages, *rd.messages]

    def send(self, msgs: Iterable[Message]) -> None:
        for msg in msgs:
            self.sent.append(msg)
            if self._blocked(msg):
                self.dropped.append(msg)
            else:
                self.queue.append(msg)

    def flush(self) -> None:
        """Process every pending `Ready` (without delivering anything)."""
        for nid in self.ids:
            if nid not in self.down and self[nid].has_ready():
                self.send(self.process_ready(nid))

    def stabilize(self, limit: int = 1_000_000) -> int:
        """Deliver messages until nothing is pending; returns how many were delivered."""
        delivered = 0
        while True:
            self.flush()
            if not self.queue:
                if any(n not in self.down and self[n].has_ready() for n in self.ids):
                    continue
                return delivered
            msg = self.queue.popleft()
            if self._blocked(msg):  # a fault injected while it was in flight
                self.dropped.append(msg)
                continue
            self[msg.dst].step(msg)
            delivered += 1
            assert delivered < limit, f"seed {self.seed}: network never went quiet"

    def tick(self, nids: Iterable[NodeId] | None = None, n: int = 1) -> None:
        """Tick ``nids`` (default: every live member) ``n`` times, stabilizing after each."""
        targets = list(self.ids if nids is None else nids)
        for _ in range(n):
            for nid in targets:
                if nid not in self.down:
                    self[nid].tick()
            self.stabilize()

    def elect(self, nid: NodeId) -> RaftCore:
        """Make ``nid`` campaign and stabilize; asserts it won."""
        self[nid].campaign()
        self.stabilize()
        assert self[nid].role is Role.LEADER, f"seed {self.seed}: {self[nid]!r} did not win"
        return self[nid]

    def sent_since(self, mark: int) -> list[Message]:
        return self.sent[mark:]
