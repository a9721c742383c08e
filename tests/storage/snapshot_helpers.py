"""Shared helpers for the snapshot tests: deterministic snapshot contents."""

from __future__ import annotations

import os
import random
from pathlib import Path

from pyjraft.core.types import ConfState
from pyjraft.storage import SnapshotManifest, SnapshotStorage

CONF = ConfState(voters=("n1", "n2", "n3"), learners=("n4",))


def contents(index: int) -> dict[str, bytes]:
    """The files of the snapshot at ``index``: derived from the index alone, of
    several sizes (an empty one, one of a few pages, one over a MiB)."""
    rng = random.Random(index)
    return {
        "state.db": rng.randbytes(1_200_000 + index),
        "index.bin": rng.randbytes(9000),
        "empty": b"",
    }


def write_snapshot(
    storage: SnapshotStorage, index: int, term: int = 3, user_meta: bytes = b"um"
) -> SnapshotManifest:
    """Write and commit the snapshot at ``index``."""
    session = storage.begin(index, term, CONF)
    for name, data in contents(index).items():
        Path(session.directory, name).write_bytes(data)
    return session.commit(user_meta)


def files_of(directory: str) -> dict[str, bytes]:
    """Every file in ``directory`` and its bytes."""
    return {name: Path(directory, name).read_bytes() for name in sorted(os.listdir(directory))}


def snapshot_dirs(root: Path) -> list[str]:
    """Names of the entries of the snapshot root, but the lock, sorted."""
    return sorted(n for n in os.listdir(root) if n != "snapshot.lock")
