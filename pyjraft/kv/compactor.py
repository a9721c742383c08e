"""`HistoryCompactor`: keeps the event history bounded, by replicated compactions.

Compaction must happen at the same point of the log on every replica, so it
is a command like any other (``compact``). The leader checks the history
every ``interval`` seconds and proposes one when it holds more than
``retain_revisions`` revisions (with 10 % slack, so compactions are batched)
or more than ``max_history_bytes``; a follower does nothing. A watch from a
compacted revision gets `pyjraft.kv.CompactedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

from pyjraft.core.errors import RaftError
from pyjraft.kv.protocol import FORMAT, pack_command
from pyjraft.kv.store import KvStore
from pyjraft.node import Node

log = logging.getLogger("pyjraft.kv")

_REVISION = struct.Struct(">Q")


class HistoryCompactor:
    """Proposes ``compact`` commands on the leader (see the module doc).

    ``retain_revisions`` or ``max_history_bytes`` of 0 turns that bound off.
    """

    def __init__(
        self,
        node: Node,
        store: KvStore,
        *,
        retain_revisions: int = 100_000,
        max_history_bytes: int = 1 << 30,
        interval: float = 1.0,
        max_scanned: int = 1_000_000,
    ) -> None:
        if retain_revisions < 0 or max_history_bytes < 0 or interval <= 0:
            raise ValueError("bounds must be >= 0 and the interval positive")
        self.node = node
        self.store = store
        self.retain_revisions = retain_revisions
        self.max_history_bytes = max_history_bytes
        self.interval = interval
        self.max_scanned = max_scanned
        self.compactions = 0
        """Compactions this compactor proposed that were applied."""
        self._task: asyncio.Task[None] | None = None

    def target(self) -> int:
        """The revision to compact at now, or 0 for none."""
        s = self.store
        target = 0
        keep = self.retain_revisions
        if keep and s.revision - s.compact_revision > keep + keep // 10:
            target = s.revision - keep
        limit = self.max_history_bytes
        if limit and s.history_bytes > limit:
            # Drop the oldest events until 10 % below the limit.
            need = s.history_bytes - limit + limit // 10
            removed = 0
            with s.read() as txn, txn.cursor(s.events_db) as cur:
                for scanned, (k, v) in enumerate(cur):
                    removed += len(k) + len(v)
                    if removed >= need or scanned >= self.max_scanned:
                        target = max(target, _REVISION.unpack_from(k)[0] + 1)
                        break
        target = min(target, s.revision)
        return target if target > s.compact_revision else 0

    async def run_once(self) -> int:
        """On the leader, propose the compaction `target` calls for; return the
        revision compacted at (0: none, or not leader, or it failed)."""
        if not self.node.is_leader:
            return 0
        target = self.target()
        if not target:
            return 0
        try:
            await self.node.apply(pack_command((FORMAT, "compact", target)))
        except RaftError as e:
            log.debug("history compaction at %d not applied: %s", target, e)
            return 0
        self.compactions += 1
        log.info("history compacted at revision %d", target)
        return target

    def start(self) -> None:
        """Check every ``interval`` seconds until `stop`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("history compactor failed; trying again later")

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


__all__ = ["HistoryCompactor"]
