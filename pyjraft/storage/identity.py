"""Who a data directory belongs to, and which incarnation of each member it has seen.

A group directory (``data_dir/<group>/``) holds two small files, each
replaced atomically (temp file, fsync, rename, fsync directory) and framed
like every other file of ours::

    magic 4s | crc I (CRC32C of every byte after it) | version B (1) | reserved 3x
    | body_len I | body (msgpack map)

``identity`` (magic ``PJID``) is written once, when the node bootstraps on
an empty directory: the cluster id, the group, the node id, a random
*instance id* (128 bits, hex) and the creation time. Every start loads it
and checks it against the node's configuration (`check_identity`): a
directory copied from another node, another group or another cluster is
refused with `IdentityMismatchError` naming the field, and a directory whose
identity is missing while it holds other state is the caller's to refuse
(`load_identity` returns None). The instance id changes only when a directory
is created anew: a member restarted on a wiped directory comes back as a new
instance, which its peers can tell apart from the one that voted and
acknowledged before (issue 13, section 5).

``members`` (magic ``PJMR``) is the `MemberRegistry`: member id -> the
instance id this node last accepted for it. It backs the protocol in which a
node starting on an empty directory registers its new instance id with a
majority of its peers before taking part, so that a wiped member is detected
instead of silently voting twice. This module only stores it; no networking.
"""

from __future__ import annotations

import os
import re
import secrets
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import crc32c
import msgpack  # type: ignore[import-untyped]

from pyjraft.storage._fileutil import atomic_replace, make_dirs_durable, open_fd
from pyjraft.storage.api import StorageError

__all__ = [
    "IDENTITY_FILE",
    "MEMBERS_FILE",
    "DataDirIdentity",
    "IdentityMismatchError",
    "MemberRegistry",
    "bootstrap_identity",
    "check_identity",
    "load_identity",
    "new_instance_id",
]

IDENTITY_FILE = "identity"
"""File name of the identity inside a group directory."""
MEMBERS_FILE = "members"
"""File name of the member registry inside a group directory."""
_VERSION = 1
_HEADER = struct.Struct("<4sIB3xI")
_ID_MAGIC = b"PJID"
_REG_MAGIC = b"PJMR"
_MAX_NAME_BYTES = 1024
_MAX_MEMBERS = 10_000
_MAX_FILE = 4 << 20
_INSTANCE_RE = re.compile(r"^[0-9a-f]{32}$")
_ID_FIELDS = ("cluster_id", "group", "node_id", "instance_id", "created_at")


class IdentityMismatchError(StorageError):
    """The data directory belongs to another cluster, group or node than the one
    starting on it. Fatal: never start on someone else's state."""


def new_instance_id() -> str:
    """A fresh random instance id (128 bits, lowercase hex)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class DataDirIdentity:
    """Whose state a group directory holds, and which incarnation of it."""

    cluster_id: str
    group: str
    node_id: str
    instance_id: str
    """Random, chosen when the directory was bootstrapped."""
    created_at: float
    """When it was bootstrapped (seconds since the epoch)."""


def _frame(magic: bytes, body: object) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    head = _HEADER.pack(magic, 0, _VERSION, len(packed))
    crc = crc32c.crc32c(packed, crc32c.crc32c(head[8:]))
    return head[:4] + struct.pack("<I", crc) + head[8:] + packed


def _read_framed(path: str, magic: bytes) -> Any | None:
    """The msgpack body of the framed file at ``path``, None if there is none;
    `StorageError` naming the file if it is damaged or of another version."""
    try:
        with os.fdopen(open_fd(path, os.O_RDONLY), "rb") as f:
            raw = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"{path}: cannot read: {exc}") from exc
    if len(raw) < _HEADER.size:
        raise StorageError(f"{path}: truncated ({len(raw)} bytes)")
    got, crc, version, body_len = _HEADER.unpack_from(raw, 0)
    if got != magic:
        raise StorageError(f"{path}: bad magic {got!r}")
    if len(raw) != _HEADER.size + body_len:
        raise StorageError(f"{path}: length {len(raw)} does not match its header")
    if crc32c.crc32c(memoryview(raw)[8:]) != crc:
        raise StorageError(f"{path}: CRC mismatch")
    if version != _VERSION:
        raise StorageError(f"{path}: unknown format version {version}")
    try:
        return msgpack.unpackb(
            memoryview(raw)[_HEADER.size :],
            raw=False,
            strict_map_key=True,
            max_str_len=_MAX_NAME_BYTES,
            max_bin_len=0,
            max_array_len=0,
            max_map_len=_MAX_MEMBERS,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise StorageError(f"{path}: body is not valid: {exc}") from None


def _name(value: object, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES
    ):
        raise ValueError(f"{what} must be a non-empty string of at most {_MAX_NAME_BYTES} bytes")
    return value


def _instance(value: object, what: str) -> str:
    if not isinstance(value, str) or not _INSTANCE_RE.match(value):
        raise ValueError(f"{what} must be 32 lowercase hex digits: {value!r:.80}")
    return value


def load_identity(directory: str | os.PathLike[str]) -> DataDirIdentity | None:
    """The identity of the group directory, None if it has none (never
    bootstrapped, or its identity was lost: the caller decides). `StorageError`
    naming the file if it is damaged."""
    path = os.path.join(os.fspath(directory), IDENTITY_FILE)
    body = _read_framed(path, _ID_MAGIC)
    if body is None:
        return None
    if not isinstance(body, dict) or set(body) != set(_ID_FIELDS):
        raise StorageError(f"{path}: expected fields {list(_ID_FIELDS)}")
    try:
        created = body["created_at"]
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            raise ValueError("created_at must be a number")
        return DataDirIdentity(
            cluster_id=_name(body["cluster_id"], "cluster_id"),
            group=_name(body["group"], "group"),
            node_id=_name(body["node_id"], "node_id"),
            instance_id=_instance(body["instance_id"], "instance_id"),
            created_at=float(created),
        )
    except ValueError as exc:
        raise StorageError(f"{path}: {exc}") from None


def bootstrap_identity(
    directory: str | os.PathLike[str],
    *,
    cluster_id: str,
    group: str,
    node_id: str,
    now: float | None = None,
) -> DataDirIdentity:
    """Give a new group directory its identity, with a fresh instance id; durable on
    return. `StorageError` if it already has one (bootstrap only once: a second
    bootstrap would make a new instance of an existing member). The caller holds
    the group directory (the log's lock), so no other process races it."""
    directory = os.fspath(directory)
    ident = DataDirIdentity(
        cluster_id=_name(cluster_id, "cluster_id"),
        group=_name(group, "group"),
        node_id=_name(node_id, "node_id"),
        instance_id=new_instance_id(),
        created_at=time.time() if now is None else now,
    )
    make_dirs_durable(directory)
    existing = load_identity(directory)
    if existing is not None:
        raise StorageError(
            f"{os.path.join(directory, IDENTITY_FILE)}: already bootstrapped as node "
            f"{existing.node_id!r} of group {existing.group!r} in cluster "
            f"{existing.cluster_id!r} (instance {existing.instance_id})"
        )
    body = {
        "cluster_id": ident.cluster_id,
        "group": ident.group,
        "node_id": ident.node_id,
        "instance_id": ident.instance_id,
        "created_at": ident.created_at,
    }
    try:
        atomic_replace(directory, IDENTITY_FILE, _frame(_ID_MAGIC, body))
    except OSError as exc:
        raise StorageError(f"{directory}: cannot write {IDENTITY_FILE}: {exc}") from exc
    return ident


def check_identity(
    directory: str | os.PathLike[str], *, cluster_id: str, group: str, node_id: str
) -> DataDirIdentity:
    """Load the directory's identity and check that it is this node's; return it.
    `IdentityMismatchError` naming every field that differs, `StorageError` if
    there is no identity or it is damaged."""
    path = os.path.join(os.fspath(directory), IDENTITY_FILE)
    ident = load_identity(directory)
    if ident is None:
        raise StorageError(f"{path}: missing: this directory was never bootstrapped")
    wrong = [
        f"{what} is {have!r}, not {want!r}"
        for what, have, want in (
            ("cluster_id", ident.cluster_id, cluster_id),
            ("group", ident.group, group),
            ("node_id", ident.node_id, node_id),
        )
        if have != want
    ]
    if wrong:
        raise IdentityMismatchError(
            f"{path}: this data directory belongs to node {ident.node_id!r} of group "
            f"{ident.group!r} in cluster {ident.cluster_id!r} (instance "
            f"{ident.instance_id}, created at {ident.created_at:.0f}): " + "; ".join(wrong)
        )
    return ident


class MemberRegistry:
    """The durable map member id -> instance id of a group directory (see the module
    docstring). Every change replaces the file atomically and is durable on
    return; `TransientStorageError` if no file descriptor was left (nothing
    changed), `StorageError` on any other IO failure."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = os.fspath(directory)
        self._path = os.path.join(self._dir, MEMBERS_FILE)
        make_dirs_durable(self._dir)
        body = _read_framed(self._path, _REG_MAGIC)
        members: dict[str, str] = {}
        if body is not None:
            if not isinstance(body, dict):
                raise StorageError(f"{self._path}: not a map")
            try:
                for member, instance in body.items():
                    members[_name(member, "member id")] = _instance(instance, "instance id")
            except ValueError as exc:
                raise StorageError(f"{self._path}: {exc}") from None
        self._members = members

    @property
    def path(self) -> str:
        """Path of the registry file."""
        return self._path

    def get(self, member: str) -> str | None:
        """The instance id recorded for ``member``, None if none is."""
        return self._members.get(member)

    def as_dict(self) -> dict[str, str]:
        """A copy of the whole registry."""
        return dict(self._members)

    def set(self, member: str, instance_id: str) -> None:
        """Record ``instance_id`` for ``member`` (durably)."""
        self.replace({**self._members, member: instance_id})

    def remove(self, member: str) -> None:
        """Forget ``member`` (durably); nothing if it is not recorded."""
        if member in self._members:
            self.replace({m: i for m, i in self._members.items() if m != member})

    def replace(self, members: Mapping[str, str]) -> None:
        """Replace the whole registry with ``members`` (durably). `ValueError` for an
        empty or overlong member id, an instance id that is not 32 hex digits, or
        more than 10,000 members; nothing is then written."""
        checked = {
            _name(m, "member id"): _instance(i, f"instance id of {m!r:.80}")
            for m, i in members.items()
        }
        if len(checked) > _MAX_MEMBERS:
            raise ValueError(f"at most {_MAX_MEMBERS} members")
        try:
            atomic_replace(self._dir, MEMBERS_FILE, _frame(_REG_MAGIC, checked))
        except OSError as exc:
            raise StorageError(f"{self._path}: cannot save: {exc}") from exc
        self._members = checked
