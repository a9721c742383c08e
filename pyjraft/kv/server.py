"""`KvServer`: one KV replica -- a raft `Node`, its LMDB store, and the ``kv`` service.

One process, one `TcpTransport` on the replica's ``--id`` address, shared by
raft traffic and the ``kv`` service (as the counter example does). The
store lives in ``DATA_DIR/GROUP/kv`` beside the raft log
(``DATA_DIR/GROUP/log``). The service is registered before the node starts,
so a client reaching a replica that is still opening its log is told
``unavailable`` and moves on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from functools import partial

from pyjraft.kv.compactor import HistoryCompactor
from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.protocol import KvLimits
from pyjraft.kv.service import KV_SERVICE, KvService
from pyjraft.kv.store import DEFAULT_MAP_SIZE
from pyjraft.node import Node, NodeOptions
from pyjraft.node.loop import tune_gc
from pyjraft.transport import TcpTransport, parse_address

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
    ) -> KvServer:
        """Open the store, listen on ``options.id`` (unless ``transport`` is
        given), register the service, start the node."""
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
                transport = await TcpTransport.start(host, port)
        except BaseException:
            machine.close()
            raise
        service = KvService(machine, limits)
        server = cls(machine, service, transport, kv_options)
        server.owns_transport = own_transport
        transport.register_service(KV_SERVICE, service.handle)
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


async def serve(options: NodeOptions, kv_options: KvOptions | None = None) -> int:
    """Run a replica until SIGTERM or SIGINT, then shut it down gracefully."""
    server = await KvServer.start(options, kv_options)
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("KV replica %s of group %s is up (peers %s)", options.id, options.group, options.peers)
    await stop.wait()
    log.info("KV replica %s shutting down", options.id)
    await server.shutdown()
    log.info("KV replica %s stopped", options.id)
    return 0


__all__ = ["KvOptions", "KvServer", "serve", "store_dir"]
