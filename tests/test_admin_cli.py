"""``pyjraft admin`` argument handling, ``pyjraft certs --admins``, ``--join`` on
the servers (the operations themselves: tests/integration/test_admin_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyjraft.certs import main as certs_main
from pyjraft.cli import main as cli_main
from pyjraft.client.admin_cli import EXIT_STATUSES, build_parser
from pyjraft.examples.counter import build_parser as counter_parser
from pyjraft.kv.cli import build_parser as kv_parser
from pyjraft.transport.tls import Role, certificate_identity


def test_options_go_before_or_after_the_operation() -> None:
    p = build_parser()
    a = p.parse_args(["--peers", "h:1", "--group", "g", "--json", "add-peer", "h:2"])
    b = p.parse_args(["add-peer", "h:2", "--peers", "h:1", "--group", "g", "--json"])
    for args in (a, b):
        assert (args.peers, args.group, args.json, args.peer) == ("h:1", "g", True, "h:2")
    c = p.parse_args(["--peers", "h:1", "--group", "g", "--timeout", "3", "leader"])
    assert c.timeout == 3.0 and c.change_timeout == 120.0 and not c.json
    d = p.parse_args(["change-peers", "a:1,b:1", "--priority", "a:1=0", "--priority", "b:1=3"])
    assert d.priority == [("a:1", 0), ("b:1", 3)]


@pytest.mark.parametrize(
    "argv",
    [
        ["leader"],  # no --peers / --group
        ["--peers", "h:1", "leader"],
        ["--peers", "h1,h:2", "--group", "g", "leader"],  # not host:port
        ["--peers", "h:1", "--group", "g", "nope"],
        ["--peers", "h:1", "--group", "g", "reset-peers", "h:1", "--member", "h:1"],  # no --force
        ["--peers", "h:1", "--group", "g", "change-peers", "h:1", "--priority", "h:1"],
        ["--peers", "h:1", "--group", "g", "--timeout", "0", "leader"],
        ["--peers", "h:1", "--group", "g", "--tls-cert", "x.pem", "leader"],  # not all three
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = cli_main(["admin", *argv])
    except SystemExit as e:
        status = int(e.code or 0)
    assert status == 2
    assert "error" in capsys.readouterr().err


def test_exit_statuses_are_documented() -> None:
    assert set(EXIT_STATUSES) == {0, 1, 2, 3, 4, 5, 6}
    assert "exit statuses" in build_parser().format_help()


def test_certs_issues_admin_certificates(tmp_path: Path) -> None:
    assert certs_main(["--out", str(tmp_path), "--clients", "app", "--admins", "ops"]) == 0
    assert certificate_identity(tmp_path / "admin-ops.pem").role is Role.ADMIN
    assert certificate_identity(tmp_path / "client-app.pem").role is Role.CLIENT


def test_the_servers_take_join() -> None:
    base = ["--id", "h:1", "--peers", "h:2", "--data-dir", "d", "--join"]
    assert counter_parser().parse_args(["server", *base]).join
    assert kv_parser().parse_args(["serve", *base]).join
    assert not kv_parser().parse_args(["serve", *base[:-1]]).join
