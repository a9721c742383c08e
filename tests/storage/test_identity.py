"""The identity of a data directory and its member registry."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pyjraft.storage import (
    IdentityMismatchError,
    MemberRegistry,
    StorageError,
    TransientStorageError,
    bootstrap_identity,
    check_identity,
    load_identity,
)
from pyjraft.storage.identity import IDENTITY_FILE, MEMBERS_FILE, new_instance_id
from tests.storage.helpers import flip_bit

WHO = {"cluster_id": "c1", "group": "g1", "node_id": "10.0.0.1:7001"}


def test_bootstrap_then_every_start_checks_it(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "g1"
    ident = bootstrap_identity(directory, now=1_700_000_000.5, **WHO)
    assert (ident.cluster_id, ident.group, ident.node_id) == ("c1", "g1", "10.0.0.1:7001")
    assert len(ident.instance_id) == 32 and ident.created_at == 1_700_000_000.5
    assert load_identity(directory) == ident
    assert check_identity(directory, **WHO) == ident
    assert sorted(os.listdir(directory)) == [IDENTITY_FILE]


def test_each_bootstrap_draws_a_new_instance_id(tmp_path: Path) -> None:
    a = bootstrap_identity(tmp_path / "a", **WHO)
    b = bootstrap_identity(tmp_path / "b", **WHO)
    assert a.instance_id != b.instance_id
    assert len({new_instance_id() for _ in range(100)}) == 100


def test_a_second_bootstrap_is_refused(tmp_path: Path) -> None:
    first = bootstrap_identity(tmp_path, **WHO)
    with pytest.raises(StorageError, match="already bootstrapped"):
        bootstrap_identity(tmp_path, **WHO)
    assert load_identity(tmp_path) == first


@pytest.mark.parametrize("field", ["cluster_id", "group", "node_id"])
def test_a_directory_of_another_cluster_group_or_node_is_refused(
    tmp_path: Path, field: str
) -> None:
    bootstrap_identity(tmp_path, **WHO)
    other = dict(WHO, **{field: "someone-else"})
    with pytest.raises(IdentityMismatchError) as info:
        check_identity(tmp_path, **other)
    message = str(info.value)
    assert f"{field} is {WHO[field]!r}, not 'someone-else'" in message
    assert str(tmp_path / IDENTITY_FILE) in message
    assert isinstance(info.value, StorageError)


def test_missing_identity_is_reported_by_check_and_none_by_load(tmp_path: Path) -> None:
    assert load_identity(tmp_path) is None
    with pytest.raises(StorageError, match="never bootstrapped"):
        check_identity(tmp_path, **WHO)


def test_every_damaged_byte_of_the_identity_is_refused_naming_the_file(tmp_path: Path) -> None:
    bootstrap_identity(tmp_path, **WHO)
    path = tmp_path / IDENTITY_FILE
    raw = path.read_bytes()
    for pos in range(len(raw)):
        flip_bit(str(path), pos, pos % 8)
        with pytest.raises(StorageError, match=str(path)):
            load_identity(tmp_path)
        flip_bit(str(path), pos, pos % 8)
    for n in range(len(raw)):
        path.write_bytes(raw[:n])
        with pytest.raises(StorageError, match=str(path)):
            load_identity(tmp_path)
    path.write_bytes(raw)
    assert load_identity(tmp_path) is not None


@pytest.mark.parametrize("bad", ["", "x" * 1025, 5])
def test_bad_names_are_refused_before_anything_is_written(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError):
        bootstrap_identity(tmp_path, **dict(WHO, node_id=bad))  # type: ignore[arg-type]
    assert not (tmp_path / IDENTITY_FILE).exists()


def test_a_leftover_temp_file_is_ignored(tmp_path: Path) -> None:
    """A crash between writing the temp file and renaming it: no identity yet."""
    (tmp_path / f"{IDENTITY_FILE}.tmp").write_bytes(b"half")
    assert load_identity(tmp_path) is None
    ident = bootstrap_identity(tmp_path, **WHO)
    assert load_identity(tmp_path) == ident


def test_member_registry_is_durable_and_replaced_atomically(tmp_path: Path) -> None:
    reg = MemberRegistry(tmp_path)
    assert reg.as_dict() == {} and reg.get("a") is None
    ia, ib = new_instance_id(), new_instance_id()
    reg.set("a:1", ia)
    reg.set("b:2", ib)
    assert MemberRegistry(tmp_path).as_dict() == {"a:1": ia, "b:2": ib}
    ib2 = new_instance_id()
    reg.set("b:2", ib2)  # b was wiped and re-registered
    reg.remove("a:1")
    reg.remove("never")
    assert MemberRegistry(tmp_path).as_dict() == {"b:2": ib2}
    reg.replace({})
    assert MemberRegistry(tmp_path).as_dict() == {}
    assert not (tmp_path / f"{MEMBERS_FILE}.tmp").exists()


@pytest.mark.parametrize(
    "members",
    [{"": "0" * 32}, {"a": "short"}, {"a": "G" * 32}, {"a": 5}, {"x" * 1025: "0" * 32}],
    ids=["empty id", "short instance", "not hex", "int", "long id"],
)
def test_member_registry_refuses_bad_entries_and_writes_nothing(
    tmp_path: Path, members: dict[str, str]
) -> None:
    reg = MemberRegistry(tmp_path)
    reg.set("ok", "0" * 32)
    before = (tmp_path / MEMBERS_FILE).read_bytes()
    with pytest.raises(ValueError):
        reg.replace(members)
    assert (tmp_path / MEMBERS_FILE).read_bytes() == before
    assert reg.as_dict() == {"ok": "0" * 32}


def test_damaged_member_registry_is_refused_naming_the_file(tmp_path: Path) -> None:
    reg = MemberRegistry(tmp_path)
    reg.set("a", new_instance_id())
    flip_bit(str(tmp_path / MEMBERS_FILE), 20)
    with pytest.raises(StorageError, match=MEMBERS_FILE):
        MemberRegistry(tmp_path)


def test_descriptor_exhaustion_is_transient_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = MemberRegistry(tmp_path)
    first = new_instance_id()
    reg.set("a", first)
    real = os.open

    def no_fds(path: str, flags: int, *a: object, **k: object) -> int:
        if str(path).endswith(".tmp"):
            raise OSError(errno.EMFILE, "Too many open files", path)
        return real(path, flags, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_fds)
    with pytest.raises(TransientStorageError):
        reg.set("a", new_instance_id())
    with pytest.raises(TransientStorageError):
        bootstrap_identity(tmp_path / "g", **WHO)
    monkeypatch.undo()
    assert MemberRegistry(tmp_path).as_dict() == {"a": first}
    assert load_identity(tmp_path / "g") is None
