"""The `StateMachine` API: what the user implements, with JRaft's callbacks.

Every callback runs on the node's event loop, serially, in log order, from
one place (`pyjraft.node.fsm_caller.FSMCaller`); a callback may be a plain
method or a coroutine function. Keep them quick: while one runs, this group
applies nothing else.

Snapshots
---------
A machine that implements `StateMachine.on_snapshot_save` and
`StateMachine.on_snapshot_load` lets the node snapshot it and drop the log
the snapshot covers (`NodeOptions.snapshot_every_entries`,
``snapshot_interval_s``, `Node.snapshot`), start from a snapshot instead
of replaying its whole history, and bring a follower that fell behind the
leader's compacted log up to date by sending it the leader's snapshot.
Saving never stops the apply pipeline for longer than the machine takes to
*capture* its state: the files are written off the event loop while later
entries keep applying. A machine without ``on_snapshot_save`` is never
snapshotted, and its log grows without bound::

    import os
    from pyjraft.node import SnapshotReader, SnapshotWriter, StateMachine

    class Counter(StateMachine):
        def __init__(self) -> None:
            self.value = 0

        def on_apply(self, entries):
            for e in entries:
                self.value += int(e.data)
            return None

        def on_snapshot_save(self, writer: SnapshotWriter):
            value = self.value            # captured now, on the loop, between applies
            path = os.path.join(writer.directory, "value")

            def write() -> None:          # runs on a worker thread; applies go on
                with open(path, "w") as f:
                    f.write(str(value))

            return write

        def on_snapshot_load(self, reader: SnapshotReader) -> None:
            with open(os.path.join(reader.directory, "value")) as f:
                self.value = int(f.read())

The node checksums, fsyncs and publishes the files afterwards (see
`pyjraft.storage.SnapshotStorage`); the machine only writes them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyjraft.core.types import ConfState, Entry, NodeId


class SnapshotWriter:
    """What `StateMachine.on_snapshot_save` writes a snapshot with.

    The machine has applied exactly the entries up to `index` when it is
    called. It writes its files (regular files, flat: no subdirectories)
    into `directory`, and may set `user_meta` (at most 1 MiB, stored in the
    snapshot's metadata and handed back to `on_snapshot_load`).
    """

    __slots__ = ("conf", "directory", "index", "term", "user_meta")

    def __init__(self, index: int, term: int, conf: ConfState, directory: str) -> None:
        self.index = index
        """The last log index the snapshot includes (what the machine has applied)."""
        self.term = term
        """The term of the entry at `index`."""
        self.conf = conf
        """The group's configuration at `index`."""
        self.directory = directory
        """Where the machine writes its files (empty at first; inside the node's
        snapshot directory, published only after the write completes)."""
        self.user_meta = b""
        """Opaque bytes of the machine's own, kept with the snapshot."""


class SnapshotReader:
    """What `StateMachine.on_snapshot_load` reads a snapshot from: a published
    snapshot whose every file was checked against its CRC32C."""

    __slots__ = ("conf", "directory", "index", "term", "user_meta")

    def __init__(
        self, index: int, term: int, conf: ConfState, directory: str, user_meta: bytes
    ) -> None:
        self.index = index
        """The last log index the snapshot includes."""
        self.term = term
        """The term of the entry at `index`."""
        self.conf = conf
        """The group's configuration at `index`."""
        self.directory = directory
        """The directory holding the snapshot's files (read them, never change them)."""
        self.user_meta = user_meta
        """The bytes the machine set in `SnapshotWriter.user_meta`."""


SaveResult = Callable[[], None] | Awaitable[Any] | None
"""What `StateMachine.on_snapshot_save` returns (see there)."""


@dataclass(frozen=True, slots=True)
class LeaderChangeContext:
    """Who leads (``""`` if unknown) and in which term, at a following start/stop."""

    leader: NodeId
    term: int


@dataclass(frozen=True, slots=True)
class Status:
    """Why something stopped: a short code and a human-readable reason."""

    code: str
    reason: str = ""


class StateMachine:
    """Subclass and override `on_apply`; the other callbacks default to doing nothing."""

    def on_apply(self, entries: Sequence[Entry]) -> Sequence[Any] | None:
        """Apply committed entries, in order; return one result per entry (or None
        for all None). The leader hands each result to the `Node.apply` caller
        that proposed the entry.

        Must be deterministic: every replica applies the same entries. Report an
        invalid command as a result, not an exception: an exception means the
        state machine is broken, and the node then stops applying, calls
        `on_error`, fails pending callers with `StateMachineError` and leaves
        the group (continuing would let replicas silently diverge).
        """
        raise NotImplementedError

    def on_leader_start(self, term: int) -> Any:
        """This node became leader of ``term``."""
        return None

    def on_leader_stop(self, status: Status) -> Any:
        """This node stopped leading."""
        return None

    def on_start_following(self, ctx: LeaderChangeContext) -> Any:
        """This node started following ``ctx.leader``."""
        return None

    def on_stop_following(self, ctx: LeaderChangeContext) -> Any:
        """This node stopped following ``ctx.leader`` (an election started, or it leads)."""
        return None

    def on_configuration_committed(self, conf: ConfState) -> Any:
        """A membership configuration was committed (and once at start)."""
        return None

    def on_error(self, error: BaseException) -> Any:
        """The node hit an unrecoverable error and stopped participating."""
        return None

    def on_shutdown(self) -> Any:
        """The node is shutting down; the last callback."""
        return None

    def on_snapshot_save(self, writer: SnapshotWriter) -> SaveResult:
        """Save the state as of `SnapshotWriter.index` into ``writer.directory``.

        Called on the event loop, between applies, when the machine has applied
        exactly the entries up to ``writer.index``; applies are paused only
        while this call runs, so capture the state quickly (a copy-on-write
        reference, a database read transaction, a copy of something small) and
        return one of:

        - a callable: the node runs it on a worker thread, where it writes the
          captured state into ``writer.directory`` while later entries keep
          applying on the loop;
        - None: the files are written already;
        - an awaitable (an ``async def`` method returns one): awaited with
          applies still paused; what it resolves to is then taken as above (a
          callable to run on a worker thread, or None).

        Then the node checksums and fsyncs the files, publishes the snapshot
        atomically, and drops the log entries it covers (minus
        `NodeOptions.snapshot_log_margin`). An exception (raised here, by the
        callable or by the awaitable) fails this snapshot only: it is logged,
        nothing is published, and the next trigger tries again.

        Not implemented by default: a machine without it is never snapshotted
        (and its log is never compacted).
        """
        raise NotImplementedError

    def on_snapshot_load(self, reader: SnapshotReader) -> Any:
        """Replace the whole state with the snapshot's, read from ``reader.directory``
        (``reader.index``, ``reader.term``, ``reader.user_meta`` describe it).

        Called at start-up (when the newest valid snapshot is newer than
        `last_applied_index`) and when a follower installs its leader's
        snapshot; every file was checked against its CRC32C before. May
        return an awaitable, which is awaited before anything else is applied.
        An exception is fatal, as in `on_apply`: the replica's state would be
        unknown.
        """
        raise NotImplementedError

    def last_applied_index(self) -> int:
        """The last log index whose effect the machine holds *durably* (0 by default).

        A machine that persists its own state (as `pyjraft.kv`'s LMDB machine
        does, recording the applied index in the same transaction as the data)
        returns it, and the node then starts applying after it instead of
        replaying from its snapshot, and loads a snapshot at start only if the
        snapshot is newer. Called once, when the node starts.
        """
        return 0
