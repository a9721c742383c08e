"""A replicated counter: pyjraft's take on JRaft's CounterServer / CounterClient.

Run three servers and talk to them::

    python -m pyjraft.examples.counter server --data-dir /tmp/c1 --group counter \\
        --id 127.0.0.1:8101 --peers 127.0.0.1:8101,127.0.0.1:8102,127.0.0.1:8103
    ...
    python -m pyjraft.examples.counter client --group counter \\
        --peers 127.0.0.1:8101,127.0.0.1:8102,127.0.0.1:8103 increment-and-get 5
    python -m pyjraft.examples.counter client ... get

Log entries are msgpack arrays ``["incr", delta]`` (result: the new value)
and ``["get"]`` (result: the value; linearizable, since it goes through the
log). Each server runs one `TcpTransport` on its ``--id`` address, shared by
raft traffic and two services: ``counter`` (requests are the same arrays,
answered with the `pyjraft.client` reply convention through `serve_apply`)
and ``status`` (`Node.status` plus the counter's value). SIGTERM or SIGINT
shuts the node down gracefully; SIGUSR2 logs `Node.describe`. With
``--http HOST:PORT`` the process also serves `pyjraft.ops` (metrics, status
page, health). If the node fails (a storage or state machine error), the
server exits with status 70 (``--no-exit-on-error`` keeps it up, reporting
``error`` as its role) so a supervisor restarts it.

Both take ``--tls-cert --tls-key --tls-ca`` (certificates from ``pyjraft
certs``): the servers then speak mutual TLS with each other and with
clients, the server's certificate must name its ``--id``, and the client's
may be a client certificate. Without them a server listens only on a
loopback ``--id`` unless given ``--insecure-plaintext`` (anyone who can
reach the port can then steer the group).

The client prints the resulting value alone on its last line. Exit status:
0 on success, 1 on failure (no leader in time, bad reply), 3 when the
outcome of an increment is unknown (it may or may not have been applied;
it is not retried, see `pyjraft.client`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import msgpack  # type: ignore[import-untyped]

from pyjraft.client import (
    INVALID_REQUEST,
    UNAVAILABLE,
    ClientError,
    RaftClient,
    UnknownOutcomeError,
    error_reply,
    serve_apply,
)
from pyjraft.core.errors import RaftError
from pyjraft.core.types import Entry
from pyjraft.node import (
    Node,
    NodeOptions,
    SnapshotReader,
    SnapshotWriter,
    StateMachine,
    peers_from,
)
from pyjraft.node.errors import RegistrationError
from pyjraft.node.loop import run as run_on_best_loop
from pyjraft.node.loop import tune_gc
from pyjraft.ops import FORMATS, OpsServer, install_describe_signal, setup_logging
from pyjraft.storage import StorageError
from pyjraft.transport import InsecureBindError, RpcClient, TcpTransport, parse_address
from pyjraft.transport.tls import Role, TlsConfig

log = logging.getLogger("pyjraft.examples.counter")

COUNTER_SERVICE = "counter"
"""The RPC service serving increments and reads."""
STATUS_SERVICE = "status"
SNAPSHOT_FILE = "value"
"""The one file of a counter snapshot: the value, in decimal."""
"""The RPC service answering `Node.status` plus ``value`` (the local counter)."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
EXIT_FAILURE = 1
"""Client exit status: the call failed (and was not applied)."""
EXIT_UNKNOWN_OUTCOME = 3
"""Client exit status: the increment may or may not have been applied."""
EXIT_NODE_FAILED = 70
"""Server exit status: its node stopped on a fatal error (EX_SOFTWARE)."""


def validate_command(cmd: Any) -> str | None:
    """Why ``cmd`` is not a valid counter command, or None if it is."""
    if not isinstance(cmd, (list, tuple)) or not cmd:
        return "a command is a non-empty array"
    if cmd[0] == "get" and len(cmd) == 1:
        return None
    if cmd[0] == "incr" and len(cmd) == 2:
        delta = cmd[1]
        if type(delta) is not int or not _INT64_MIN <= delta <= _INT64_MAX:
            return "incr takes one 64-bit integer"
        return None
    return f"unknown command {cmd!r:.80}; expected ['incr', delta] or ['get']"


class CounterStateMachine(StateMachine):
    """The counter: applies ``["incr", delta]`` and ``["get"]`` entries.

    ``value`` is the counter; each entry's result is the value after it. An
    invalid entry (never proposed by the service, which validates first)
    leaves the value alone and yields None. Snapshots are one file,
    ``value``, holding the integer in decimal (and, with ``padding``, a file
    of that many bytes that means nothing: tests use it to make installs
    long).
    """

    def __init__(self, padding: int = 0) -> None:
        self.value = 0
        self.padding = padding

    def on_apply(self, entries: Sequence[Entry]) -> list[int | None]:
        """Apply each entry in order; return the value after each (None if invalid)."""
        out: list[int | None] = []
        value = self.value
        for e in entries:
            try:
                cmd = msgpack.unpackb(e.data)
            except Exception:
                cmd = None
            if validate_command(cmd) is not None:
                out.append(None)
                continue
            if cmd[0] == "incr":
                value += cmd[1]
            out.append(value)
        self.value = value
        return out

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:
        """Capture the value (an int: the capture is the copy) and return the
        write of its file, which the node runs on a worker thread."""
        value = self.value
        directory = writer.directory
        padding = self.padding

        def write() -> None:
            with open(os.path.join(directory, SNAPSHOT_FILE), "w", encoding="ascii") as f:
                f.write(str(value))
            if padding:
                with open(os.path.join(directory, "padding"), "wb") as f:
                    for left in range(padding, 0, -(1 << 20)):
                        f.write(os.urandom(min(left, 1 << 20)))

        return write

    def on_snapshot_load(self, reader: SnapshotReader) -> None:
        """Replace the value with the snapshot's."""
        with open(os.path.join(reader.directory, SNAPSHOT_FILE), encoding="ascii") as f:
            self.value = int(f.read(4096))


def _replied(reply: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    done.set_result(reply)
    return done


class CounterServer:
    """One counter replica: a `Node`, its `TcpTransport` and the two services.

    The services are registered before the node starts (so a client reaching
    a replica that is still opening its log is told ``unavailable`` and tries
    elsewhere, rather than hearing of an unknown service).
    """

    def __init__(self, machine: CounterStateMachine, transport: TcpTransport) -> None:
        self.machine = machine
        self.transport = transport
        self.node: Node | None = None
        """The raft node; None while it is starting."""

    @classmethod
    async def start(
        cls,
        options: NodeOptions,
        *,
        tls: TlsConfig | None = None,
        insecure_plaintext: bool = False,
        snapshot_padding: int = 0,
    ) -> CounterServer:
        """Listen on ``options.id``, register the services, start the node.

        With ``tls`` its certificate must name ``options.id`` (`ValueError`
        otherwise); without, ``options.id`` must be a loopback address unless
        ``insecure_plaintext`` (`InsecureBindError`).
        """
        if tls is not None and (
            tls.identity.role is not Role.NODE or tls.identity.name != options.id
        ):
            raise ValueError(f"the certificate names {tls.identity}, not this node ({options.id})")
        host, port = parse_address(options.id)
        transport = await TcpTransport.start(
            host, port, tls=tls, insecure_plaintext=insecure_plaintext
        )
        server = cls(CounterStateMachine(snapshot_padding), transport)
        transport.register_service(COUNTER_SERVICE, server.handle_counter)
        transport.register_service(STATUS_SERVICE, server.handle_status)
        try:
            server.node = await Node.start(options, server.machine, transport)
        except BaseException:
            await transport.close()
            raise
        return server

    def handle_counter(self, request: Any) -> asyncio.Future[dict[str, Any]]:
        """Serve one counter command (see `validate_command`). A plain function
        returning a future: the RPC server answers it with no task per request."""
        why = validate_command(request)
        if why is not None:
            return _replied(error_reply(INVALID_REQUEST, why))
        if self.node is None:
            return _replied(error_reply(UNAVAILABLE, "the node is starting"))
        data: bytes = msgpack.packb(list(request))
        return serve_apply(self.node, data)

    async def handle_status(self, request: Any) -> dict[str, Any]:
        """`Node.status` plus ``value``, the counter as applied here."""
        if self.node is None:
            raise RuntimeError("the node is starting")
        st = self.node.status()
        st["value"] = self.machine.value
        return st

    async def shutdown(self) -> None:
        """Shut the node down (calls meanwhile are answered ``unavailable``), close
        the transport."""
        if self.node is not None:
            await self.node.shutdown()
        await self.transport.close()


class CounterClient:
    """Typed calls to a counter group, over a `RaftClient`."""

    def __init__(self, group: str, peers: Sequence[str] | str, **client_options: Any) -> None:
        """``client_options`` are `RaftClient`'s (``tls=``, ``rpc=``, ``timeout=``...)."""
        self.client = RaftClient(group, peers, **client_options)

    async def increment_and_get(self, delta: int = 1, *, deadline: float | None = None) -> int:
        """Add ``delta``; return the new value. Never retried once possibly
        applied: may raise `UnknownOutcomeError`."""
        value = await self.client.call(COUNTER_SERVICE, ["incr", delta], deadline=deadline)
        return int(value)

    async def get(self, *, deadline: float | None = None) -> int:
        """The counter's value (linearizable: read through the log)."""
        value = await self.client.call(COUNTER_SERVICE, ["get"], deadline=deadline, idempotent=True)
        return int(value)

    async def close(self) -> None:
        """Close the underlying client."""
        await self.client.close()


async def fetch_status(
    addr: str,
    *,
    timeout: float = 1.0,
    rpc: RpcClient | None = None,
    tls: TlsConfig | None = None,
) -> Any:
    """Ask the server at ``addr`` for its status (one attempt; through ``rpc``,
    or a client of its own with ``tls``)."""
    own = rpc is None
    client = rpc if rpc is not None else RpcClient(tls=tls)
    try:
        return await client.call(addr, STATUS_SERVICE, None, timeout=timeout)
    finally:
        if own:
            await client.close()


# -- command line ---------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: ask the kernel for SIGKILL when the parent process dies."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


async def _serve(args: argparse.Namespace) -> int:
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
        segment_bytes=args.segment_bytes,
        cluster_id=args.cluster_id,
        force_new_instance=args.force_new_instance,
        join=args.join,
        **snapshot_options(args),
    )
    hosted: list[Node] = []
    # Before anything slow: SIGUSR2's default action would kill the process.
    install_describe_signal(lambda: hosted, pretty=args.log_format == "text")
    try:
        tls = TlsConfig.from_args(args.tls_cert, args.tls_key, args.tls_ca)
        server = await CounterServer.start(
            options,
            tls=tls,
            insecure_plaintext=args.insecure_plaintext,
            snapshot_padding=args.snapshot_padding_bytes,
        )
    except (InsecureBindError, ValueError, OSError, StorageError, RaftError) as e:
        log.error("cannot start: %s", e)
        return EXIT_FAILURE
    node = server.node
    assert node is not None
    hosted.append(node)
    ops: OpsServer | None = None
    try:
        if args.http is not None:
            # The same authentication as the node's other traffic: mutual TLS
            # with the cluster's CA when the node has certificates.
            ops = OpsServer(nodes=[node], transports=[server.transport])
            host, port = parse_address(args.http)
            addr = await ops.start(
                host,
                port,
                ssl=tls.server_context if tls is not None else None,
                insecure_plaintext=args.http_insecure_plaintext,
            )
            scheme = "https" if tls is not None else "http"
            log.info("ops endpoint on %s://%s/ (metrics, status, health)", scheme, addr)
    except BaseException:
        await server.shutdown()
        raise
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("counter server %s of group %s is up (peers %s)", args.id, args.group, args.peers)
    stopped = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(node.events.wait_failed())
    status = 0
    try:
        while not stopped.done():
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done() and not stopped.done():
                if isinstance(failed.result(), RegistrationError):
                    # Refused by its peers before it took part: it never started.
                    log.error("counter server %s cannot start: %s", args.id, failed.result())
                    status = EXIT_FAILURE
                    break
                if args.exit_on_error:
                    log.error(
                        "counter server %s: its node failed (%r); exiting with status %d",
                        args.id,
                        failed.result(),
                        EXIT_NODE_FAILED,
                    )
                    status = EXIT_NODE_FAILED
                    break
                # Kept up on request: status says role "error", /health says 503.
                await stopped
    finally:
        stopped.cancel()
        failed.cancel()
        log.info("counter server %s shutting down", args.id)
        if ops is not None:
            await ops.close()
        await server.shutdown()
    log.info("counter server %s stopped", args.id)
    return status


async def _client(args: argparse.Namespace) -> int:
    try:
        tls = TlsConfig.from_args(args.tls_cert, args.tls_key, args.tls_ca)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    client = CounterClient(
        args.group, args.peers, tls=tls, timeout=args.timeout, deadline=args.deadline
    )
    try:
        if args.op == "increment-and-get":
            value = await client.increment_and_get(args.delta)
        elif args.op == "get":
            value = await client.get()
        else:  # status
            for addr in client.client.routes.peers_of(args.group):
                try:
                    st = await fetch_status(addr, timeout=args.timeout, tls=tls)
                    line = {k: st.get(k) for k in ("role", "term", "leader", "applied_index")}
                    line["value"] = st.get("value")
                except Exception as e:
                    line = {"error": f"{type(e).__name__}: {e}"}
                print(f"{addr} {json.dumps(line)}")
            return 0
    except UnknownOutcomeError as e:
        print(f"error: {e} (the increment may or may not have been applied)", file=sys.stderr)
        return EXIT_UNKNOWN_OUTCOME
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await client.close()
    print(value)
    return 0


def add_tls_arguments(p: argparse.ArgumentParser, server: bool) -> None:
    """The TLS options every pyjraft command line takes (and, for servers,
    ``--insecure-plaintext``)."""
    p.add_argument("--tls-cert", help="this process's certificate (PEM; see 'pyjraft certs')")
    p.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--tls-ca", help="the cluster CA's certificate (PEM)")
    if server:
        p.add_argument(
            "--insecure-plaintext",
            action="store_true",
            help="without TLS, listen on a non-loopback address anyway (UNSAFE: anyone who "
            "can reach the port can steer the group)",
        )


def build_parser(prog: str = "python -m pyjraft.examples.counter") -> argparse.ArgumentParser:
    """The example's command line parser (``server`` and ``client``)."""
    p = argparse.ArgumentParser(prog=prog, description="A replicated counter on pyjraft.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server", help="run one counter replica")
    s.add_argument("--data-dir", required=True, help="directory for the log and term/vote")
    s.add_argument("--group", default="counter", help="raft group name")
    s.add_argument("--id", required=True, help="this replica's HOST:PORT (it listens there)")
    s.add_argument("--peers", required=True, help="every replica's HOST:PORT, comma-separated")
    s.add_argument("--election-timeout-ms", type=int, default=1000)
    s.add_argument("--heartbeat-ms", type=int, default=0, help="default: election timeout / 10")
    s.add_argument(
        "--unsafe-no-sync",
        action="store_true",
        help="skip fdatasync (UNSAFE: acknowledged writes can be lost on power failure)",
    )
    add_identity_arguments(s)
    s.add_argument(
        "--segment-bytes",
        type=int,
        default=64 << 20,
        help="log segment file size (default: 64 MiB)",
    )
    add_tls_arguments(s, server=True)
    add_snapshot_arguments(s)
    s.add_argument("--snapshot-padding-bytes", type=int, default=0, help=argparse.SUPPRESS)
    s.add_argument("--die-with-parent", action="store_true", help=argparse.SUPPRESS)
    add_ops_arguments(s)
    s.add_argument(
        "--exit-on-error",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"exit with status {EXIT_NODE_FAILED} when the node fails, so a supervisor "
        "restarts it (default: on)",
    )
    c = sub.add_parser("client", help="call the counter")
    c.add_argument("--group", default="counter")
    c.add_argument("--peers", required=True, help="replica addresses, comma-separated")
    c.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    c.add_argument("--deadline", type=float, default=10.0, help="seconds for the whole call")
    add_tls_arguments(c, server=False)
    cs = c.add_subparsers(dest="op", required=True)
    inc = cs.add_parser("increment-and-get", help="add DELTA (default 1), print the new value")
    inc.add_argument("delta", type=int, nargs="?", default=1)
    cs.add_parser("get", help="print the value (linearizable)")
    cs.add_parser("status", help="print each replica's role, term, leader and applied index")
    return p


def add_identity_arguments(p: argparse.ArgumentParser) -> None:
    """The data-directory identity options of the server commands:
    ``--cluster-id``, ``--force-new-instance`` and ``--join``."""
    p.add_argument(
        "--join",
        action="store_true",
        help="start as a member the group will add (pyjraft admin add-peer / add-learners): "
        "no configuration of its own; --peers names current members to reach",
    )
    p.add_argument(
        "--cluster-id",
        default="default",
        help="the cluster this member belongs to, written in its data directory and "
        "checked by its peers (default: default)",
    )
    p.add_argument(
        "--force-new-instance",
        action="store_true",
        help="start although the peers know this member as another instance (its data "
        "directory was lost) and have them record this one: RISKY, it may vote twice in a "
        "term or lose committed writes; see the README",
    )


_SNAPSHOT_ARGS = (
    (
        "--snapshot-every",
        "snapshot_every_entries",
        int,
        "snapshot every N applied entries (0: off)",
    ),
    ("--snapshot-interval-s", "snapshot_interval_s", float, "and every S seconds (0: off)"),
    ("--snapshot-log-margin", "snapshot_log_margin", int, "log entries kept behind a snapshot"),
    ("--snapshot-chunk-bytes", "snapshot_chunk_bytes", int, "bytes per install request"),
    ("--snapshot-window", "snapshot_window", int, "install requests in flight"),
    (
        "--snapshot-write-rate",
        "snapshot_write_bytes_per_s",
        int,
        "bytes/s a new snapshot is flushed at (0: no limit)",
    ),
    ("--snapshot-throttle-bytes", "snapshot_throttle_bytes", int, "install bytes/s (0: no limit)"),
    (
        "--snapshot-transfer-timeout-ms",
        "snapshot_transfer_timeout_ms",
        int,
        "abandon an install without progress for this long",
    ),
)


def add_snapshot_arguments(p: argparse.ArgumentParser) -> None:
    """The snapshot options of a server command (each defaults to `NodeOptions`'s)."""
    for flag, field, kind, text in _SNAPSHOT_ARGS:
        default = NodeOptions.__dataclass_fields__[field].default
        p.add_argument(flag, type=kind, default=None, help=f"{text} (default: {default})")


def snapshot_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `NodeOptions` fields the snapshot arguments set."""
    out = {}
    for flag, field, _, _ in _SNAPSHOT_ARGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out[field] = value
    return out


def add_ops_arguments(p: argparse.ArgumentParser) -> None:
    """The operations options every server command takes: ``--http``,
    ``--http-insecure-plaintext``, ``--log-format``, ``--log-level``."""
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="serve /metrics, /status, /status.json, /health there (default: off)",
    )
    p.add_argument(
        "--http-insecure-plaintext",
        action="store_true",
        help="allow --http on a non-loopback address without TLS (anyone reaching it "
        "reads the cluster's state)",
    )
    p.add_argument("--log-format", choices=FORMATS, default="text", help="default: text")
    p.add_argument(
        "--log-level",
        default="INFO",
        metavar="LEVELS",
        help="a level, and/or LOGGER=LEVEL pairs, comma-separated: "
        "INFO,pyjraft.transport=DEBUG (default: INFO)",
    )


def run(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``coro_fn()`` on uvloop when installed, else on asyncio's default loop."""
    return run_on_best_loop(coro_fn)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m pyjraft.examples.counter``; returns the exit status."""
    parser = build_parser(prog or "python -m pyjraft.examples.counter")
    args = parser.parse_args(argv)
    if args.cmd == "server":
        if args.die_with_parent:
            _die_with_parent()
        try:
            setup_logging(args.log_format, args.log_level, static={"node": args.id})
            if args.http is not None:
                parse_address(args.http)
        except ValueError as e:
            parser.error(str(e))
        return run(lambda: _serve(args))
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    return run(lambda: _client(args))


if __name__ == "__main__":
    sys.exit(main())
