"""`KvServer`: one KV replica -- a raft `Node`, its LMDB store, and the ``kv`` service.

One process, one `TcpTransport` on the replica's ``--id`` address, shared by
raft traffic and the ``kv`` service (as the counter example does). The
store lives in ``DATA_DIR/GROUP/kv`` beside the raft log
(``DATA_DIR/GROUP/log``). The service is registered before the node starts,
so a client reaching a replica that is still opening its log is told
``unavailable`` and moves on; its requests are bounded by
`service_request_limit` (the largest valid request: a command of
``KvLimits.max_request_bytes``, 2 MiB by default, plus its field names).

`serve` runs a replica as ``pyjraft kv serve`` does: mutual TLS or
loopback-only plaintext as the counter example, the operations endpoint
(``http``), the describe dump on SIGUSR2, and a non-zero exit status when
the node fails (70, or 1 when it never started: refused by its peers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pyjraft.core.errors import RaftError
from pyjraft.kv.compactor import HistoryCompactor
from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.protocol import KvLimits
from pyjraft.kv.service import KV_SERVICE, KvService
from pyjraft.kv.store import DEFAULT_MAP_SIZE
from pyjraft.node import Node, NodeOptions
from pyjraft.node.errors import RegistrationError
from pyjraft.node.loop import tune_gc
from pyjraft.storage import StorageError
from pyjraft.transport import InsecureBindError, TcpTransport, parse_address
from pyjraft.transport.tls import Role, TlsConfig

log = logging.getLogger("pyjraft.kv")


@dataclass(frozen=True, slots=True)
class KvOptions:
    """Options of the KV layer of a replica (the raft ones are `NodeOptions`)."""

    limits: KvLimits = field(default_factory=KvLimits)
    """What requests may carry (key and value sizes, ...)."""
    map_size: int = DEFAULT_MAP_SIZE
    """Initial LMDB map size (address space; doubles when full)."""
    commit_delay: float = 0.1
    """Seconds applied entries wait to be committed to LMDB together (one
    fdatasync per commit, off the write path); 0 commits after every apply
    batch. See `pyjraft.kv.machine`."""
    commit_max_entries: int = 10_000
    """Applied entries after which LMDB commits without waiting for the delay."""
    retain_revisions: int = 100_000
    """Revisions of event history kept for watches (0: no bound by count)."""
    max_history_bytes: int = 1 << 30
    """Bytes of event history kept (0: no bound by size)."""
    compact_interval: float = 1.0
    """Seconds between the leader's checks of the history bounds."""


STATUS_SERVICE = "status"
"""The RPC service answering `KvServer.handle_status` (``pyjraft status``)."""
EXIT_FAILURE = 1
"""`serve`'s status when the replica could not start (or its peers refused it)."""
EXIT_NODE_FAILED = 70
"""`serve`'s status when its node failed (a storage or state machine error)."""
REQUEST_OVERHEAD = 4096
"""Bytes a request may take beyond its command (field names, map headers)."""


def service_request_limit(limits: KvLimits) -> int:
    """The ``kv`` service's ``max_request_bytes``: the largest valid request.

    A write request carries its command's keys and values (a command is at
    most ``max_request_bytes``; a put, one value of ``max_value_bytes`` and
    a key); a ``get_many`` at most ``max_get_many`` keys. The transport
    refuses anything larger before decoding it.
    """
    largest = max(
        limits.max_request_bytes,
        limits.max_value_bytes + limits.max_key_bytes,
        limits.max_get_many * (limits.max_key_bytes + 3),
    )
    return largest + REQUEST_OVERHEAD


def store_dir(options: NodeOptions) -> str:
    """Where the replica's LMDB store lives: ``DATA_DIR/GROUP/kv``."""
    if options.data_dir is None:
        raise ValueError("a KV replica needs a data_dir (its store and its log must both persist)")
    return os.path.join(options.data_dir, options.group, "kv")


class KvServer:
    """A running KV replica; create with `start`, end with `shutdown`."""

    def __init__(
        self,
        machine: KvStateMachine,
        service: KvService,
        transport: TcpTransport,
        kv_options: KvOptions,
    ) -> None:
        self.machine = machine
        self.service = service
        self.transport = transport
        self.kv_options = kv_options
        self.node: Node | None = None
        """The raft node; None while it is starting."""
        self.compactor: HistoryCompactor | None = None
        self.owns_transport = True
        """Whether `shutdown` closes the transport (it made it)."""

    @classmethod
    async def start(
        cls,
        options: NodeOptions,
        kv_options: KvOptions | None = None,
        transport: TcpTransport | None = None,
        *,
        tls: TlsConfig | None = None,
        insecure_plaintext: bool = False,
    ) -> KvServer:
        """Open the store, listen on ``options.id`` (unless ``transport`` is
        given), register the service, start the node.

        The transport it makes speaks mutual TLS with ``tls`` (whose
        certificate must name ``options.id``: `ValueError` otherwise);
        without, ``options.id`` must be a loopback address unless
        ``insecure_plaintext`` (`InsecureBindError`)."""
        if tls is not None and (
            tls.identity.role is not Role.NODE or tls.identity.name != options.id
        ):
            raise ValueError(f"the certificate names {tls.identity}, not this node ({options.id})")
        kv_options = kv_options if kv_options is not None else KvOptions()
        limits = kv_options.limits
        if limits.max_request_bytes > options.max_entry_bytes:
            raise ValueError("limits.max_request_bytes exceeds the node's max_entry_bytes")
        path = store_dir(options)
        machine = await asyncio.to_thread(
            partial(
                KvStateMachine,
                path,
                map_size=kv_options.map_size,
                commit_delay=kv_options.commit_delay,
                commit_max_entries=kv_options.commit_max_entries,
            )
        )
        own_transport = transport is None
        try:
            if transport is None:
                host, port = parse_address(options.id)
                transport = await TcpTransport.start(
                    host, port, tls=tls, insecure_plaintext=insecure_plaintext
                )
        except BaseException:
            machine.close()
            raise
        service = KvService(machine, limits)
        server = cls(machine, service, transport, kv_options)
        server.owns_transport = own_transport
        transport.register_service(
            KV_SERVICE, service.handle, max_request_bytes=service_request_limit(limits)
        )
        if own_transport:  # a shared transport's owner answers for all its groups
            transport.register_service(STATUS_SERVICE, server.handle_status, 1024)
        try:
            server.node = await Node.start(options, machine, transport)
        except BaseException:
            transport.unregister_service(KV_SERVICE)
            if own_transport:
                await transport.close()
            machine.close()
            raise
        service.node = server.node
        server.compactor = HistoryCompactor(
            server.node,
            machine.store,
            retain_revisions=kv_options.retain_revisions,
            max_history_bytes=kv_options.max_history_bytes,
            interval=kv_options.compact_interval,
        )
        server.compactor.start()
        log.info(
            "KV replica %s: store %s at revision %d, applied index %d",
            options.id,
            path,
            machine.store.revision,
            machine.store.applied_index,
        )
        return server

    async def handle_status(self, request: Any) -> dict[str, Any]:
        """`Node.status` plus the store's ``revision``: what ``pyjraft status``
        asks every member for."""
        if self.node is None:
            raise RuntimeError("the node is starting")
        st = self.node.status()
        st["revision"] = self.machine.store.revision
        return st

    async def shutdown(self) -> None:
        """Stop the compactor and the node (calls meanwhile are answered
        ``unavailable``), close the transport, then the store."""
        if self.compactor is not None:
            await self.compactor.stop()
        if self.node is not None:
            await self.node.shutdown()
        if self.owns_transport:
            await self.transport.close()
        else:
            self.transport.unregister_service(KV_SERVICE)
        self.machine.close()


async def serve(
    options: NodeOptions,
    kv_options: KvOptions | None = None,
    *,
    tls: TlsConfig | None = None,
    insecure_plaintext: bool = False,
    http: str | None = None,
    http_insecure_plaintext: bool = False,
    gateway_peers: Mapping[str, str] | None = None,
    exit_on_error: bool = True,
    pretty_describe: bool = True,
) -> int:
    """Run a replica until SIGTERM or SIGINT, then shut it down gracefully;
    return the exit status.

    ``tls``/``insecure_plaintext`` as `KvServer.start`; ``http`` (``HOST:PORT``)
    serves the operations endpoint (`pyjraft.ops.OpsServer`, with the same
    TLS) and on it the JSON gateway (`pyjraft.kv.gateway`; ``gateway_peers``
    maps each replica's raft address to its ``--http`` address, so that a
    follower redirects to the leader's gateway); SIGUSR2 logs the node's
    describe dump. When the node fails the replica exits with
    `EXIT_NODE_FAILED` (70) unless not ``exit_on_error`` (it then stays up,
    reporting role ``error``); when its peers refuse its data directory
    (`RegistrationError`) or it cannot start, `EXIT_FAILURE`.
    """
    from pyjraft.kv.gateway import add_kv_routes  # aiohttp: servers only
    from pyjraft.ops import OpsServer, install_describe_signal

    hosted: list[Node] = []
    # Before anything slow: SIGUSR2's default action would kill the process.
    install_describe_signal(lambda: hosted, pretty=pretty_describe)
    try:
        server = await KvServer.start(
            options, kv_options, tls=tls, insecure_plaintext=insecure_plaintext
        )
    except (InsecureBindError, ValueError, OSError, StorageError, RaftError) as e:
        log.error("KV replica %s cannot start: %s", options.id, e)
        return EXIT_FAILURE
    node = server.node
    assert node is not None
    hosted.append(node)
    ops: OpsServer | None = None
    status = 0
    try:
        if http is not None:
            ops = OpsServer(nodes=[node], transports=[server.transport])
            add_kv_routes(
                ops,
                server.service,
                http_peers=gateway_peers,
                scheme="https" if tls is not None else "http",
            )
            host, port = parse_address(http)
            addr = await ops.start(
                host,
                port,
                ssl=tls.server_context if tls is not None else None,
                insecure_plaintext=http_insecure_plaintext,
            )
            log.info("ops endpoint on %s://%s/", "https" if tls is not None else "http", addr)
        tune_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "KV replica %s of group %s is up (peers %s)", options.id, options.group, options.peers
        )
        stopped = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(node.events.wait_failed())
        try:
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done() and not stopped.done():
                error = failed.result()
                if isinstance(error, RegistrationError):
                    log.error("KV replica %s cannot start: %s", options.id, error)
                    status = EXIT_FAILURE
                elif exit_on_error:
                    log.error(
                        "KV replica %s: its node failed (%r); exiting with status %d",
                        options.id,
                        error,
                        EXIT_NODE_FAILED,
                    )
                    status = EXIT_NODE_FAILED
                else:  # kept up on request: status says role "error", /health 503
                    await stopped
        finally:
            stopped.cancel()
            failed.cancel()
    finally:
        log.info("KV replica %s shutting down", options.id)
        if ops is not None:
            await ops.close()
        try:
            await server.shutdown()
        except Exception as e:  # a store that failed may fail to close too
            log.error("KV replica %s: shutdown failed: %r", options.id, e)
            status = status or EXIT_FAILURE
    log.info("KV replica %s stopped", options.id)
    return status


__all__ = [
    "EXIT_FAILURE",
    "EXIT_NODE_FAILED",
    "KvOptions",
    "STATUS_SERVICE",
    "KvServer",
    "serve",
    "service_request_limit",
    "store_dir",
]
