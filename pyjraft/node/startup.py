"""Opening what a node starts from: its log and term/vote storage, and its
data directory's identity and registration (`pyjraft.node.registration`).

Storage that finds no file descriptor left (`TransientStorageError`:
nothing changed, recovery is idempotent) is opened again after a backoff,
for up to ``NodeOptions.storage_retry_timeout_ms``, as a write is
(`pyjraft.node.storage_retry`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from pyjraft.node.errors import NodeStorageError
from pyjraft.node.events import NodeLogger
from pyjraft.node.options import NodeOptions
from pyjraft.node.registration import Registration, prepare
from pyjraft.node.storage_retry import FIRST_DELAY_S, MAX_DELAY_S, REMIND_EVERY_S
from pyjraft.storage.api import LogStorage, MetaStorage, TransientStorageError
from pyjraft.transport.base import Transport

log = logging.getLogger("pyjraft.node.storage")


def _open(options: NodeOptions) -> tuple[LogStorage, MetaStorage]:
    if options.data_dir is None:
        from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage

        return MemoryLogStorage(), MemoryMetaStorage()
    from pyjraft.storage.meta import FileMetaStorage
    from pyjraft.storage.segment_log import SegmentLogStorage

    base = os.path.join(options.data_dir, options.group)
    log_storage = SegmentLogStorage(
        os.path.join(base, "log"),
        sync=options.sync,
        segment_bytes=options.segment_bytes,
        cache_bytes=options.log_cache_bytes,
    )
    return log_storage, FileMetaStorage(base)


async def open_storage(options: NodeOptions) -> tuple[LogStorage, MetaStorage]:
    """`SegmentLogStorage` and `FileMetaStorage` under ``options.data_dir``
    (in-memory storage when that is None), opened off the loop."""
    delay = FIRST_DELAY_S
    started = reminded = time.monotonic()
    attempts = 0
    while True:
        try:
            return await asyncio.to_thread(_open, options)
        except TransientStorageError as exc:
            attempts += 1
            now = time.monotonic()
            if now - started >= options.storage_retry_timeout_ms / 1000:
                raise NodeStorageError(
                    f"cannot open storage for {now - started:.1f} s ({attempts} attempts) for "
                    f"want of a file descriptor: {exc}"
                ) from exc
            if attempts == 1 or now - reminded >= REMIND_EVERY_S:
                reminded = now
                log.warning("cannot open storage for want of a file descriptor (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)


async def open_registration(
    options: NodeOptions, transport: Transport, log_storage: LogStorage, meta: MetaStorage
) -> Registration | None:
    """Check (or create) the data directory's identity, serve the group on the
    transport's members service, and say whether the instance must register
    first (`Registration.state`); None without a data directory."""
    if options.data_dir is None:
        return None
    term = meta.load().term
    nlog = NodeLogger(logging.getLogger("pyjraft.node"), options.group, options.id, lambda: term)
    has_state = log_storage.last_index() > 0 or term > 0
    try:
        hosted, pending = await asyncio.to_thread(prepare, options, has_state, nlog)
    except BaseException:
        log_storage.close()  # a directory of another node, say: refused
        raise
    hosted.fresh = lambda: log_storage.last_index() == 0
    return Registration(options, hosted, transport, pending=pending, log=nlog)
