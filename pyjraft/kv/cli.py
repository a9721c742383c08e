"""``pyjraft kv``: run a KV replica, or talk to a KV cluster from the shell.

::

    pyjraft kv serve --id HOST:PORT --peers A,B,C --data-dir DIR
    pyjraft kv put KEY VALUE --peers A,B,C          # prints the new revision
    pyjraft kv get KEY --peers A,B,C                # prints the value; exit 1 if absent
    pyjraft kv delete KEY [--prefix] --peers ...    # prints how many were deleted
    pyjraft kv scan [--prefix P | --start S [--end E]] [--limit N] [--reverse] ...
    pyjraft kv watch KEY | --prefix P [--start-revision R] [--count N] ...
    pyjraft kv txn SPEC_JSON|- ...                  # exit 1 if the compares failed
    pyjraft kv compact REVISION ...
    pyjraft kv status ...

``serve`` takes the counter server's TLS options (``--tls-cert --tls-key
--tls-ca``, ``--insecure-plaintext``), its operations options (``--http``,
``--log-format``, ``--log-level``, ``--[no-]exit-on-error``; SIGUSR2 logs the
describe dump), ``--cluster-id``/``--force-new-instance`` and the
snapshot options (``--snapshot-every``, ``--snapshot-interval-s``,
``--snapshot-log-margin``, ...); the client
commands take ``--tls-cert --tls-key --tls-ca`` (a client certificate).

Keys and values given as arguments are taken byte for byte (``os.fsencode``).
``--json`` prints JSON instead: a key or value is a string when it is
UTF-8, else ``{"base64": "..."}``. ``--peers`` defaults to
``$PYJRAFT_KV_PEERS``. Exit status: 0 success, 1 a negative answer (absent
key, failed compare) or an error, 2 bad usage, 3 a write whose outcome is
unknown (it may or may not have been applied; it was not retried).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pyjraft.client import ClientError, UnknownOutcomeError
from pyjraft.examples.counter import (
    add_identity_arguments,
    add_ops_arguments,
    add_snapshot_arguments,
    add_tls_arguments,
    snapshot_options,
)
from pyjraft.kv.client import Client
from pyjraft.kv.protocol import KvLimits
from pyjraft.kv.server import EXIT_NODE_FAILED, KvOptions, serve
from pyjraft.kv.store import DEFAULT_MAP_SIZE
from pyjraft.kv.types import Compare, Event, KeyValue, Op
from pyjraft.node import NodeOptions, peers_from
from pyjraft.node.loop import run
from pyjraft.ops import setup_logging
from pyjraft.transport import RpcClient, parse_address
from pyjraft.transport.tls import TlsConfig

_DEFAULT_LIMITS = KvLimits()

EXIT_NO = 1
"""Exit status: a negative answer (absent key, failed compare) or an error."""
EXIT_UNKNOWN_OUTCOME = 3
"""Exit status: the write may or may not have been applied."""


def _arg_bytes(s: str) -> bytes:
    return os.fsencode(s)


def _json_bytes(b: bytes) -> Any:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode()}


def _kv_json(kv: KeyValue | None) -> Any:
    if kv is None:
        return None
    return {
        "key": _json_bytes(kv.key),
        "value": _json_bytes(kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }


def _to_json(v: Any) -> Any:
    """Result dataclasses (and what they hold) as JSON values."""
    if isinstance(v, KeyValue):
        return _kv_json(v)
    if isinstance(v, bytes):
        return _json_bytes(v)
    if isinstance(v, list):
        return [_to_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items()}
    if hasattr(v, "__dataclass_fields__"):
        return {f: _to_json(getattr(v, f)) for f in v.__dataclass_fields__}
    return v


def _print_json(v: Any) -> None:
    print(json.dumps(_to_json(v)), flush=True)


def _write_line(b: bytes) -> None:
    sys.stdout.buffer.write(b + b"\n")
    sys.stdout.buffer.flush()


# -- txn spec -------------------------------------------------------------------------


def parse_txn_spec(spec: Any) -> tuple[list[Compare], list[Op], list[Op]]:
    """The compares and ops of a JSON txn spec (strings are UTF-8 keys and values).

    For example::

        {"compare": [["k", "value", "==", "v"], ["k", "mod_revision", "<", 5]],
         "success": [["put", "k", "v"], ["delete", "k"], ["get", "k"],
                     ["delete_range", "a", "b"], ["scan", "a", null]],
         "failure": [...]}
    """
    if not isinstance(spec, dict) or not set(spec) <= {"compare", "success", "failure"}:
        raise ValueError("a txn spec is an object with compare, success and failure")

    def b(x: Any) -> bytes:
        if not isinstance(x, str):
            raise ValueError(f"expected a string, got {x!r}")
        return x.encode()

    def nb(x: Any) -> bytes | None:
        return None if x is None else b(x)

    compares = []
    for c in spec.get("compare", []):
        if not isinstance(c, list) or len(c) != 4:
            raise ValueError(f"a compare is [key, target, op, operand], got {c!r}")
        key, target, op, operand = c
        if target == "value":
            operand = nb(operand)
        compares.append(Compare(b(key), target, op, operand))

    def ops(items: Any) -> list[Op]:
        out = []
        for o in items:
            if not isinstance(o, list) or not o:
                raise ValueError(f"an op is [name, ...], got {o!r}")
            name, args = o[0], o[1:]
            if name == "put" and len(args) == 2:
                out.append(Op.put(b(args[0]), b(args[1])))
            elif name in ("delete", "get") and len(args) == 1:
                out.append(Op.delete(b(args[0])) if name == "delete" else Op.get(b(args[0])))
            elif name == "delete_range" and len(args) == 2:
                out.append(Op.delete_range(b(args[0]), nb(args[1])))
            elif name == "scan" and len(args) in (2, 3):
                limit = args[2] if len(args) == 3 else 0
                out.append(Op.scan(b(args[0]), nb(args[1]), limit=limit))
            else:
                raise ValueError(f"unknown op {o!r}")
        return out

    return compares, ops(spec.get("success", [])), ops(spec.get("failure", []))


# -- client commands -------------------------------------------------------------------


async def _client_command(args: argparse.Namespace) -> int:
    try:
        tls = TlsConfig.from_args(args.tls_cert, args.tls_key, args.tls_ca)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO
    rpc = RpcClient(tls=tls)
    client = Client(
        args.peers, group=args.group, timeout=args.timeout, deadline=args.deadline, rpc=rpc
    )
    try:
        return await _run_command(client, args)
    except UnknownOutcomeError as e:
        print(f"error: {e} (the write may or may not have been applied)", file=sys.stderr)
        return EXIT_UNKNOWN_OUTCOME
    except (ClientError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO
    finally:
        await client.close()
        await rpc.close()


async def _run_command(client: Client, args: argparse.Namespace) -> int:
    cmd = args.cmd
    if cmd == "get":
        kv = await client.get(_arg_bytes(args.key), read=args.read)
        if args.json:
            _print_json(kv)
        elif kv is not None:
            _write_line(kv.value)
        return 0 if kv is not None else EXIT_NO
    if cmd == "put":
        return await _put(client, args)
    if cmd == "delete":
        key = _arg_bytes(args.key)
        if args.prefix:
            dr = await client.delete_range(prefix=key)
            _print_json(dr) if args.json else print(dr.deleted)
        else:
            d = await client.delete(key)
            _print_json(d) if args.json else print(int(d.deleted))
        return 0
    if cmd == "scan":
        return await _scan(client, args)
    if cmd == "watch":
        return await _watch(client, args)
    if cmd == "txn":
        text = sys.stdin.read() if args.spec == "-" else args.spec
        compares, success, failure = parse_txn_spec(json.loads(text))
        t = await client.txn(compares, success, failure)
        if args.json:
            _print_json(t)
        else:
            print(f"{'SUCCEEDED' if t.succeeded else 'FAILED'} revision {t.revision}")
            for r in t.results:
                print(json.dumps(_to_json(r)))
        return 0 if t.succeeded else EXIT_NO
    if cmd == "compact":
        c = await client.compact(args.revision)
        _print_json(c) if args.json else print(c.compact_revision)
        return 0
    # status
    print(json.dumps(await client.status(), default=str))
    return 0


async def _put(client: Client, args: argparse.Namespace) -> int:
    key = _arg_bytes(args.key)
    if args.stdin:
        if args.value is not None:
            raise ValueError("give VALUE or --stdin, not both")
        value = sys.stdin.buffer.read()
    elif args.value is None:
        raise ValueError("put needs VALUE (or --stdin)")
    else:
        value = _arg_bytes(args.value)
    if args.if_absent:
        cas = await client.put_if_absent(key, value)
    elif args.expect_absent:
        cas = await client.compare_and_set(key, value, expect_value=None)
    elif args.expect_value is not None:
        cas = await client.compare_and_set(key, value, expect_value=_arg_bytes(args.expect_value))
    elif args.expect_mod_revision is not None:
        cas = await client.compare_and_set(key, value, expect_mod_revision=args.expect_mod_revision)
    else:
        p = await client.put(key, value)
        _print_json(p) if args.json else print(p.revision)
        return 0
    if args.json:
        _print_json(cas)
    elif cas.succeeded:
        print(cas.revision)
    else:
        print("not set: the condition did not hold", file=sys.stderr)
    return 0 if cas.succeeded else EXIT_NO


async def _scan(client: Client, args: argparse.Namespace) -> int:
    prefix = None if args.prefix is None else _arg_bytes(args.prefix)
    start = b"" if args.start is None else _arg_bytes(args.start)
    end = None if args.end is None else _arg_bytes(args.end)
    if args.limit:
        res = await client.scan(
            start,
            end,
            prefix=prefix,
            limit=args.limit,
            reverse=args.reverse,
            keys_only=args.keys_only,
            read=args.read,
        )
        kvs, more = res.kvs, res.more
    else:
        kvs = [
            kv
            async for kv in client.scan_all(
                start,
                end,
                prefix=prefix,
                reverse=args.reverse,
                keys_only=args.keys_only,
                read=args.read,
            )
        ]
        more = False
    if args.json:
        _print_json({"kvs": kvs, "more": more})
    else:
        for kv in kvs:
            _write_line(kv.key if args.keys_only else kv.key + b"\t" + kv.value)
    return 0


def _event_line(ev: Event) -> bytes:
    head = f"{ev.type.upper()}\t{ev.revision}\t".encode()
    return head + ev.kv.key + (b"\t" + ev.kv.value if ev.type == "put" else b"")


async def _watch(client: Client, args: argparse.Namespace) -> int:
    if (args.key is None) == (args.prefix is None):
        raise ValueError("watch KEY or --prefix PREFIX")
    if args.key is not None:
        w = client.watch(_arg_bytes(args.key), start_revision=args.start_revision)
    else:
        w = client.watch(prefix=_arg_bytes(args.prefix), start_revision=args.start_revision)
    seen = 0
    async with w:
        async for ev in w:
            if args.json:
                _print_json({"type": ev.type, "revision": ev.revision, **_kv_json(ev.kv)})
            else:
                _write_line(_event_line(ev))
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


# -- serve ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: ask the kernel for SIGKILL when the parent process dies."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _gateway_peers(spec: str | None) -> dict[str, str] | None:
    """``RAFT=HTTP,...`` (each replica's raft address and its ``--http``) as a dict."""
    if not spec:
        return None
    peers: dict[str, str] = {}
    for item in spec.split(","):
        raft, sep, http = item.strip().partition("=")
        if not sep:
            raise ValueError(f"--gateway-peers: {item!r} is not RAFT_HOST:PORT=HTTP_HOST:PORT")
        parse_address(raft)
        parse_address(http)
        peers[raft] = http
    return peers


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.die_with_parent:
        _die_with_parent()
    try:
        setup_logging(args.log_format, args.log_level, static={"node": args.id})
        if args.http is not None:
            parse_address(args.http)
        gateway_peers = _gateway_peers(args.gateway_peers)
    except ValueError as e:
        parser.error(str(e))
    try:
        tls = TlsConfig.from_args(args.tls_cert, args.tls_key, args.tls_ca)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO
    heartbeat = args.heartbeat_ms or max(1, min(100, args.election_timeout_ms // 10))
    options = NodeOptions(
        id=args.id,
        peers=peers_from(args.peers),
        group=args.group,
        data_dir=args.data_dir,
        election_timeout_ms=args.election_timeout_ms,
        heartbeat_ms=heartbeat,
        sync=not args.unsafe_no_sync,
        metrics=args.http is not None,
        cluster_id=args.cluster_id,
        force_new_instance=args.force_new_instance,
        join=args.join,
        **snapshot_options(args),
    )
    kv_options = KvOptions(
        limits=KvLimits(max_key_bytes=args.max_key_bytes, max_value_bytes=args.max_value_bytes),
        map_size=args.map_size,
        commit_delay=args.commit_delay_ms / 1000,
        retain_revisions=args.retain_revisions,
        max_history_bytes=args.max_history_bytes,
    )
    return run(
        lambda: serve(
            options,
            kv_options,
            tls=tls,
            insecure_plaintext=args.insecure_plaintext,
            http=args.http,
            http_insecure_plaintext=args.http_insecure_plaintext,
            gateway_peers=gateway_peers,
            exit_on_error=args.exit_on_error,
            pretty_describe=args.log_format == "text",
        )
    )


def build_parser(prog: str = "pyjraft kv") -> argparse.ArgumentParser:
    """The ``pyjraft kv`` command line parser."""
    p = argparse.ArgumentParser(prog=prog, description="The replicated key-value store.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run one replica")
    s.add_argument("--id", required=True, help="this replica's HOST:PORT (it listens there)")
    s.add_argument("--peers", required=True, help="every replica's HOST:PORT, comma-separated")
    s.add_argument("--data-dir", required=True, help="directory for the log and the store")
    s.add_argument("--group", default="kv", help="raft group name")
    s.add_argument("--election-timeout-ms", type=int, default=1000)
    s.add_argument("--heartbeat-ms", type=int, default=0, help="default: election timeout / 10")
    s.add_argument("--max-key-bytes", type=int, default=_DEFAULT_LIMITS.max_key_bytes)
    s.add_argument("--max-value-bytes", type=int, default=_DEFAULT_LIMITS.max_value_bytes)
    s.add_argument("--retain-revisions", type=int, default=100_000, help="history kept (0: all)")
    s.add_argument("--max-history-bytes", type=int, default=1 << 30, help="0: no size bound")
    s.add_argument("--map-size", type=int, default=DEFAULT_MAP_SIZE, help="initial LMDB map")
    s.add_argument(
        "--commit-delay-ms",
        type=float,
        default=100.0,
        help="LMDB commits applied entries together this often (0: after every apply)",
    )
    s.add_argument(
        "--unsafe-no-sync",
        action="store_true",
        help="skip the raft log's fdatasync (UNSAFE: acknowledged writes can be lost)",
    )
    s.add_argument("--die-with-parent", action="store_true", help=argparse.SUPPRESS)
    add_identity_arguments(s)
    add_snapshot_arguments(s)
    add_tls_arguments(s, server=True)
    add_ops_arguments(s)
    s.add_argument(
        "--gateway-peers",
        metavar="RAFT=HTTP,...",
        default=None,
        help="each replica's raft address and its --http address: a follower's JSON "
        "gateway (/v1/kv on --http) then redirects writes to the leader's (default: it "
        "answers 503 not_leader naming the leader)",
    )
    s.add_argument(
        "--exit-on-error",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"exit with status {EXIT_NODE_FAILED} when the node fails, so a supervisor "
        "restarts it (default: on)",
    )

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--peers",
        default=os.environ.get("PYJRAFT_KV_PEERS"),
        required="PYJRAFT_KV_PEERS" not in os.environ,
        help="replica addresses, comma-separated (default: $PYJRAFT_KV_PEERS)",
    )
    common.add_argument("--group", default="kv")
    common.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    common.add_argument("--deadline", type=float, default=10.0, help="seconds per call")
    common.add_argument("--json", action="store_true", help="print JSON")
    add_tls_arguments(common, server=False)
    read = argparse.ArgumentParser(add_help=False)
    read.add_argument(
        "--read", choices=("linearizable", "lease", "serializable"), default="linearizable"
    )

    g = sub.add_parser("get", parents=[common, read], help="print KEY's value; exit 1 if absent")
    g.add_argument("key")
    pu = sub.add_parser("put", parents=[common], help="set KEY; print the new revision")
    pu.add_argument("key")
    pu.add_argument("value", nargs="?")
    pu.add_argument("--stdin", action="store_true", help="read the value from standard input")
    cond = pu.add_mutually_exclusive_group()
    cond.add_argument("--if-absent", action="store_true", help="only if KEY is absent")
    cond.add_argument("--expect-absent", action="store_true", help="same, as compare-and-set")
    cond.add_argument("--expect-value", help="only if KEY's value is this")
    cond.add_argument("--expect-mod-revision", type=int, help="only if KEY's mod revision is this")
    d = sub.add_parser("delete", parents=[common], help="delete KEY; print how many were deleted")
    d.add_argument("key")
    d.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    sc = sub.add_parser("scan", parents=[common, read], help="print key<TAB>value lines")
    sc.add_argument("--prefix")
    sc.add_argument("--start")
    sc.add_argument("--end")
    sc.add_argument("--limit", type=int, default=0, help="0: every key (paged)")
    sc.add_argument("--reverse", action="store_true")
    sc.add_argument("--keys-only", action="store_true")
    w = sub.add_parser("watch", parents=[common], help="print changes as they happen")
    w.add_argument("key", nargs="?")
    w.add_argument("--prefix")
    w.add_argument("--start-revision", type=int, default=0, help="0: from now on")
    w.add_argument("--count", type=int, default=0, help="exit after N events (0: never)")
    t = sub.add_parser("txn", parents=[common], help="a transaction from a JSON spec")
    t.add_argument("spec", help="the spec as JSON, or - to read it from standard input")
    c = sub.add_parser("compact", parents=[common], help="drop history before REVISION")
    c.add_argument("revision", type=int)
    sub.add_parser("status", parents=[common], help="the answering replica's status (JSON)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "pyjraft kv") -> int:
    """Entry point of ``pyjraft kv``; returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return _serve(args, parser)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    fn: Callable[[], Coroutine[Any, Any, int]] = lambda: _client_command(args)  # noqa: E731
    try:
        return run(fn)
    except BrokenPipeError:
        # The reader went away (``| head``): no traceback, and no second error
        # when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_NO


if __name__ == "__main__":
    sys.exit(main())
