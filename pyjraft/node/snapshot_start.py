"""Where a node starts from: its storage, its newest valid snapshot, its log,
and what its state machine already holds durably.

Theory of operation
-------------------
`open_storage` opens the log, the term/vote file and the snapshots of the
group (under ``data_dir/<group>``, or in memory without a ``data_dir``),
then `recover` runs, once, before the node's core is built:

1. The state machine says what it holds durably (`StateMachine.last_applied_index`,
   0 for a machine that keeps its state in memory).
2. The newest snapshot that passes verification is opened
   (`SnapshotStorage.load_newest_valid`: a damaged newer one is set aside,
   naming the file at fault, and the one before it is tried).
3. The log must be consistent with that snapshot before the core reads it.
   If the log ends before the snapshot (a pipelined leader applies, and may
   snapshot, what its followers made durable before its own write lands; a
   crash then leaves its log behind its snapshot), or holds another term at
   the snapshot's index (a follower that crashed after publishing its
   leader's snapshot and before resetting its log: that entry and all after
   it were never committed), the log is reset to start just after the
   snapshot. If the log starts after the snapshot (its newer snapshot was
   damaged, and the log was compacted up to that one), entries between them
   are gone from this replica: it refuses to start (`SnapshotRecoveryError`),
   unless the machine's own durable state covers the gap.
4. The snapshot is loaded into the machine (`StateMachine.on_snapshot_load`)
   only if it is newer than what the machine holds.

The core then starts with the snapshot's metadata and everything up to
``applied`` counted as applied, and replays only the log after it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from dataclasses import dataclass

from pyjraft.core.log_reader import LogUnavailableError
from pyjraft.core.types import SnapshotMeta
from pyjraft.node.options import NodeOptions
from pyjraft.node.startup import open_storage as open_log_storage
from pyjraft.node.state_machine import SnapshotReader, StateMachine
from pyjraft.storage.api import LogStorage, MetaStorage, StorageError
from pyjraft.storage.snapshot import SnapshotStorage
from pyjraft.storage.snapshot_manifest import SnapshotManifest


class SnapshotRecoveryError(StorageError):
    """The node cannot start consistently from its snapshots and log (named in
    the message): an operator must restore this member's data or replace it."""


@dataclass(frozen=True, slots=True)
class Recovered:
    """Where the node's core starts: its storage, its newest snapshot and its
    applied index."""

    log: LogStorage
    """The log, consistent with `snapshot`."""
    meta: MetaStorage
    """Term and vote."""
    snapshots: SnapshotStorage | None
    """The group's snapshots (None: the node takes none)."""
    snapshot: SnapshotManifest | None
    """The newest valid snapshot (None if there is none)."""
    applied: int
    """Entries up to here are in the state machine (loaded or durable already)."""
    loaded: bool
    """Whether the snapshot was loaded into the machine (False: it held more)."""
    log_reset: bool
    """Whether the log was reset to start after the snapshot."""

    @property
    def core_snapshot(self) -> SnapshotMeta | None:
        """The snapshot as the core knows it."""
        return None if self.snapshot is None else self.snapshot.core_meta


async def open_storage(
    options: NodeOptions,
    machine: StateMachine,
    log_storage: LogStorage | None,
    meta: MetaStorage | None,
    snapshots: SnapshotStorage | None,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> Recovered:
    """Open what is not given (see the module docstring), then `recover`."""
    if log_storage is None or meta is None:
        log_storage, meta = await open_log_storage(options)
    assert log_storage is not None and meta is not None
    if snapshots is None and options.data_dir is not None:
        snapshots = await asyncio.to_thread(open_snapshot_storage, options)
    try:
        return await recover(machine, log_storage, meta, snapshots, log)
    except BaseException:
        log_storage.close()
        if snapshots is not None:
            snapshots.close()
        raise


def open_snapshot_storage(options: NodeOptions) -> SnapshotStorage:
    """The group's `SnapshotStorage`, ``data_dir/<group>/snapshot`` (blocking)."""
    assert options.data_dir is not None
    path = os.path.join(options.data_dir, options.group, "snapshot")
    return SnapshotStorage(path, keep=options.snapshot_keep)


def reader_for(manifest: SnapshotManifest, directory: str) -> SnapshotReader:
    """What `StateMachine.on_snapshot_load` gets for the snapshot ``manifest``."""
    return SnapshotReader(
        manifest.index, manifest.term, manifest.conf, directory, manifest.user_meta
    )


def _durable_index(machine: StateMachine) -> int:
    value = machine.last_applied_index()
    if type(value) is not int or value < 0:
        raise TypeError(f"last_applied_index() returned {value!r}, not an index")
    return value


async def recover(
    machine: StateMachine,
    log_storage: LogStorage,
    meta: MetaStorage,
    storage: SnapshotStorage | None,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> Recovered:
    """Bring the log and the machine in line with the newest valid snapshot
    (see the module docstring); `SnapshotRecoveryError` if they cannot be."""
    durable = _durable_index(machine)
    first = log_storage.first_index()
    reader = None if storage is None else await asyncio.to_thread(storage.load_newest_valid)
    if reader is None:
        if first - 1 > durable:
            raise SnapshotRecoveryError(
                f"the log starts at index {first}, but no valid snapshot holds the entries "
                f"before it (the state machine holds {durable}); this replica cannot be "
                "restored from its own data"
            )
        return Recovered(log_storage, meta, storage, None, durable, False, False)
    try:
        snap = reader.meta
        if snap.index < first - 1 and durable < first - 1:
            raise SnapshotRecoveryError(
                f"the newest valid snapshot is at index {snap.index} (a newer one was "
                f"damaged and set aside, see above), but the log starts at {first}: "
                f"entries {snap.index + 1} to {first - 1} are gone from this replica "
                "(keep snapshot_log_margin at least snapshot_every_entries to survive "
                "this); restore this member's data from another replica or replace it"
            )
        reset = _log_disagrees(log_storage, snap)
        if reset:
            await asyncio.to_thread(log_storage.reset, snap.index + 1, snap.term)
            log.warning(
                "log reset to start after the snapshot at index %d (term %d): it ended "
                "before the snapshot or disagreed with it",
                snap.index,
                snap.term,
            )
        if durable >= snap.index:
            return Recovered(log_storage, meta, storage, snap, durable, False, reset)
        result = machine.on_snapshot_load(reader_for(snap, reader.directory))
        if inspect.isawaitable(result):
            await result
        log.info(
            "state machine loaded from the snapshot at index %d (term %d, %d bytes)",
            snap.index,
            snap.term,
            snap.total_size,
        )
        return Recovered(log_storage, meta, storage, snap, snap.index, True, reset)
    finally:
        await asyncio.to_thread(reader.close)


def _log_disagrees(log_storage: LogStorage, snap: SnapshotManifest) -> bool:
    """Whether the log ends before ``snap`` or holds another term at its index."""
    if log_storage.last_index() < snap.index:
        return True
    if snap.index < log_storage.first_index() - 1:
        return False  # the log starts after it (the machine's durable state covers it)
    try:
        return log_storage.term(snap.index) != snap.term
    except LogUnavailableError:
        return True
