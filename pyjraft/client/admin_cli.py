"""``pyjraft admin ...``: a group's membership, leader and snapshots from the command line.

    pyjraft admin --peers A,B,C --group kv peers
    pyjraft admin --peers A,B,C --group kv add-peer D        # D started with --join
    pyjraft admin --peers A,B,C --group kv transfer-leader B --json

Human-readable output by default, one JSON object with ``--json``; errors
are one line on stderr (and, with ``--json``, ``{"error": code, "message":
text}`` on stdout). Exit statuses (`EXIT_STATUSES`): 0 done; 1 refused or
failed (bad configuration, a joining peer did not catch up in time,
transfer failed, unknown group, no snapshots); 2 usage; 3 no leader
reachable / member unavailable; 4 another change in progress; 5 not
authorized (a plain client certificate); 6 outcome unknown (the reply was
lost or leadership changed mid-change: run ``peers`` to see).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pyjraft.client.admin import (
    UNKNOWN_OUTCOME_EXIT_STATUS,
    AdminClient,
    AdminError,
    GroupConfiguration,
)
from pyjraft.client.errors import UnknownOutcomeError
from pyjraft.transport.base import parse_address
from pyjraft.transport.tls import TlsConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_BUSY = 4
EXIT_UNAUTHORIZED = 5
EXIT_UNKNOWN_OUTCOME = UNKNOWN_OUTCOME_EXIT_STATUS
EXIT_STATUSES = {
    EXIT_OK: "done",
    EXIT_FAILED: "refused or failed (bad configuration, catch-up timeout, transfer failed, "
    "unknown group)",
    EXIT_USAGE: "usage error",
    EXIT_UNAVAILABLE: "no leader reachable, or the member asked is unavailable",
    EXIT_BUSY: "another configuration change is in progress",
    EXIT_UNAUTHORIZED: "not authorized: changes need a node or admin certificate",
    EXIT_UNKNOWN_OUTCOME: "outcome unknown: look with 'peers'",
}
"""What each exit status means."""


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _priority(value: str) -> tuple[str, int]:
    peer, sep, n = value.rpartition("=")
    if not sep or not peer or not n.isdigit():
        raise argparse.ArgumentTypeError(f"expected PEER=N, got {value!r}")
    return peer, int(n)


def _add_common(p: argparse.ArgumentParser, *, main: bool) -> None:
    """The options every subcommand takes, before or after its name. After it,
    they default to nothing, so they override only what is given."""

    def d(value: Any) -> Any:
        return value if main else argparse.SUPPRESS

    p.add_argument("--peers", default=d(None), help="member addresses HOST:PORT, comma-separated")
    p.add_argument("--group", default=d(None), help="the raft group")
    p.add_argument("--json", action="store_true", default=d(False), help="print one JSON object")
    p.add_argument("--timeout", type=float, default=d(2.0), help="seconds per read attempt")
    p.add_argument(
        "--change-timeout",
        type=float,
        default=d(120.0),
        help="seconds a change, transfer or snapshot may take (a change waits for joining "
        "peers to catch up; default 120)",
    )
    p.add_argument(
        "--find-leader-timeout",
        type=float,
        default=d(10.0),
        help="seconds to keep looking for a leader (default 10)",
    )
    p.add_argument(
        "--tls-cert",
        default=d(None),
        help="certificate (PEM): a node's or an admin's to make changes",
    )
    p.add_argument("--tls-key", default=d(None), help="its private key (PEM)")
    p.add_argument("--tls-ca", default=d(None), help="the cluster CA's certificate (PEM)")


def build_parser(prog: str = "pyjraft admin") -> argparse.ArgumentParser:
    """The ``pyjraft admin`` command line parser."""
    epilog = "exit statuses: " + "; ".join(f"{k} {v}" for k, v in EXIT_STATUSES.items())
    p = argparse.ArgumentParser(
        prog=prog,
        description="Membership, leadership and snapshots of a raft group, through the admin "
        "service of its members.",
        epilog=epilog,
    )
    _add_common(p, main=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, main=False)
    sub = p.add_subparsers(dest="op", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    add("leader", "the leader and its term")
    peers = add("peers", "voters (priorities, progress) and learners")
    peers.add_argument(
        "--member", help="ask this member for its own view (for a group without a leader)"
    )
    add("alive-peers", "voters the leader heard from within an election timeout")
    add("learners", "the learners")
    for name, text in (("add-peer", "add a voter"), ("remove-peer", "remove a voter")):
        s = add(name, text)
        s.add_argument("peer", help="HOST:PORT")
    c = add("change-peers", "set the voters (and learners, priorities) at once")
    c.add_argument("voters", help="the new voters, comma-separated")
    c.add_argument("--learners", help="the new learners (default: keep those not made voters)")
    c.add_argument(
        "--priority",
        action="append",
        type=_priority,
        default=[],
        metavar="PEER=N",
        help="a voter's election priority (0: leads only when no other voter can); repeatable",
    )
    for name, text in (("add-learners", "add learners"), ("remove-learners", "remove learners")):
        s = add(name, text)
        s.add_argument("learners", help="HOST:PORT, comma-separated")
    t = add("transfer-leader", "move leadership (default: most up-to-date voter)")
    t.add_argument("peer", nargs="?", default=None, help="the voter to lead")
    s = add("snapshot", "take a snapshot now (every peer, or --member)")
    s.add_argument("--member", help="only this member")
    r = add(
        "reset-peers",
        "UNSAFE: set one member's voters without consensus (a majority lost for good)",
    )
    r.add_argument("voters", help="the surviving voters, comma-separated")
    r.add_argument("--member", required=True, help="the member to reset (run it on each survivor)")
    r.add_argument(
        "--force",
        action="store_true",
        help="confirm: the lost members must never come back with their old data",
    )
    return p


def _conf_table(group: str, conf: GroupConfiguration, alive: list[str] | None = None) -> str:
    lines = [
        f"group {group}: leader {conf.leader or '(none)'}, term {conf.term} "
        f"(reported by {conf.reported_by})"
    ]
    if conf.voters_outgoing:
        lines.append(
            f"joint change in progress; outgoing voters: {', '.join(conf.voters_outgoing)}"
        )
    rows = [("PEER", "ROLE", "PRIORITY", "ACTIVE", "MATCH", "LAG")]
    for peer in [*conf.voters, *conf.learners]:
        role = "learner" if peer in conf.learners else "voter"
        if peer == conf.leader:
            role = "leader"
        prog = conf.progress.get(peer, {})
        active = "-" if peer == conf.leader or not prog else ("yes" if prog["active"] else "no")
        if alive is not None:
            active = "yes" if peer in alive else "no"
        prio = "-" if role == "learner" else str(conf.priorities.get(peer, 1))
        rows.append(
            (peer, role, prio, active, str(prog.get("match", "-")), str(prog.get("lag", "-")))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


async def _run(admin: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    """Do the operation; return (JSON value, human text)."""
    g = args.group
    op = args.op
    if op == "leader":
        leader, term = await admin.get_leader()
        return {"leader": leader, "term": term}, f"{leader} (term {term})"
    if op == "peers":
        conf = await admin.list_peers(member=args.member)
        return conf.as_dict(), _conf_table(g, conf)
    if op == "alive-peers":
        alive = await admin.list_alive_peers()
        return {"alive": alive}, "\n".join(alive)
    if op == "learners":
        names = await admin.list_learners()
        return {"learners": names}, "\n".join(names) or "(no learners)"
    if op == "transfer-leader":
        leader = await admin.transfer_leader(args.peer)
        return {"leader": leader}, f"{leader} leads group {g}"
    if op == "snapshot":
        members = [args.member] if args.member else admin.seeds
        out = {}
        for m in members:
            index, term = await admin.snapshot(m)
            out[m] = {"index": index, "term": term}
        text = "\n".join(f"{m}: snapshot at index {v['index']}" for m, v in out.items())
        return {"snapshots": out}, text
    if op == "add-peer":
        conf = await admin.add_peer(args.peer)
    elif op == "remove-peer":
        conf = await admin.remove_peer(args.peer)
    elif op == "change-peers":
        learners = None if args.learners is None else _split(args.learners)
        prios = dict(args.priority) if args.priority else None
        conf = await admin.change_peers(_split(args.voters), learners, prios)
    elif op == "add-learners":
        conf = await admin.add_learners(_split(args.learners))
    elif op == "remove-learners":
        conf = await admin.remove_learners(_split(args.learners))
    else:
        assert op == "reset-peers"
        conf = await admin.reset_peers(args.member, _split(args.voters))
    return conf.as_dict(), _conf_table(g, conf)


async def _main(args: argparse.Namespace) -> int:
    try:
        tls = TlsConfig.from_args(args.tls_cert, args.tls_key, args.tls_ca)
    except (ValueError, OSError) as e:
        return _fail(args, "usage", str(e), EXIT_USAGE)
    admin = AdminClient(
        args.peers,
        group=args.group,
        tls=tls,
        timeout=args.timeout,
        change_timeout=args.change_timeout,
        find_leader_timeout=args.find_leader_timeout,
    )
    try:
        value, text = await _run(admin, args)
    except AdminError as e:
        return _fail(args, e.code, e.message, e.exit_status)
    except UnknownOutcomeError as e:
        return _fail(args, "unknown_outcome", str(e), EXIT_UNKNOWN_OUTCOME)
    finally:
        await admin.close()
    print(json.dumps(value) if args.json else text, flush=True)
    return EXIT_OK


def _fail(args: argparse.Namespace, code: str, message: str, status: int) -> int:
    print(f"error: {code}: {message}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"error": code, "message": message, "exit_status": status}), flush=True)
    return status


def main(argv: Sequence[str] | None = None, prog: str = "pyjraft admin") -> int:
    """Entry point of ``pyjraft admin``; returns the exit status (see `EXIT_STATUSES`)."""
    from pyjraft.node.loop import run

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.op == "reset-peers" and not args.force:
        parser.error(
            "reset-peers overrides a member's configuration without consensus: UNSAFE unless "
            "a majority is lost for good and never comes back with its data; add --force"
        )
    if min(args.timeout, args.change_timeout, args.find_leader_timeout) <= 0:
        parser.error("timeouts must be positive")
    if not args.peers or not _split(args.peers):
        parser.error("give --peers (member addresses, comma-separated)")
    try:
        for peer in _split(args.peers):
            parse_address(peer)
    except ValueError as e:
        parser.error(f"--peers: {e}")
    if not args.group:
        parser.error("give --group")
    return run(lambda: _main(args))


__all__ = ["EXIT_STATUSES", "build_parser", "main"]
