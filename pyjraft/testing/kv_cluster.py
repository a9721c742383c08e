"""`KvProcessCluster`: three ``pyjraft kv serve`` processes on loopback.

Used by ``pyjraft demo`` and ``python -m pyjraft.bench kv``: each replica is
its own process (``python -m pyjraft.cli kv serve``) with its own data
directory under ``base``; the cluster talks to them only over TCP (the
``kv`` service's ``status`` op), kills them by pid, and reaps what it
started. Every replica runs with ``--die-with-parent``, so none outlives
the process that started it, whatever way that process ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyjraft.kv.service import KV_SERVICE
from pyjraft.testing.ports import free_ports
from pyjraft.transport import RpcClient, TlsConfig

TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")
"""The server options that take a replica's certificate, key and the cluster's CA."""


def kv_serve_takes_tls() -> bool:
    """Whether this build's ``pyjraft kv serve`` accepts `TLS_FLAGS`."""
    import io

    from pyjraft.kv.cli import build_parser

    argv = ["serve", "--id", "h:1", "--peers", "h:1", "--data-dir", "d"]
    argv += [x for flag in TLS_FLAGS for x in (flag, "f")]
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            return False
    return True


class KvProcessCluster:
    """``n`` KV replicas as child processes: start, kill, restart, observe.

    ``tls`` makes certificates for the replicas and a client named
    ``client_name`` (`pyjraft.certs.make_cluster_certs`, in ``base/tls``)
    and runs the replicas and this cluster's own calls over mutual TLS.
    ``on_spawn(pid)`` is called for each process started (a pid file, a
    registry of children). ``node_args`` are extra
    ``kv serve`` arguments for every replica.
    """

    def __init__(
        self,
        base: Path,
        n: int = 3,
        *,
        group: str = "kv",
        election_timeout_ms: int = 1000,
        heartbeat_ms: int = 0,
        node_args: Sequence[str] = (),
        tls: bool = False,
        client_name: str = "client",
        on_spawn: Callable[[int], None] | None = None,
        log_level: str = "WARNING",
    ) -> None:
        self.base = base
        self.group = group
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.node_args = list(node_args)
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tls_files: dict[str, Any] = {}
        self.client_tls: TlsConfig | None = None
        if tls:
            from pyjraft.certs import make_cluster_certs

            self.tls_files = dict(make_cluster_certs(base / "tls", self.addrs, [client_name]))
            f = self.tls_files[f"client:{client_name}"]
            self.client_tls = TlsConfig.load(f.cert, f.key, self.tls_files["ca"].cert)
        self.on_spawn = on_spawn
        self.log_level = log_level
        self.rpc = RpcClient(tls=self.client_tls)
        """The RPC client of status calls (share it with a `pyjraft.kv.Client`)."""

    @property
    def peers(self) -> str:
        """The ``--peers`` argument."""
        return ",".join(self.addrs)

    def data_dir(self, addr: str) -> Path:
        """Replica ``addr``'s data directory."""
        return self.base / f"data-{addr.rsplit(':', 1)[1]}"

    def log_path(self, addr: str) -> Path:
        """Where ``addr``'s stderr goes (appended across restarts)."""
        return self.base / f"node-{addr.rsplit(':', 1)[1]}.log"

    def command(self, addr: str) -> list[str]:
        """The command line that runs replica ``addr``."""
        cmd = [sys.executable, "-m", "pyjraft.cli", "kv", "serve", "--id", addr]
        cmd += ["--peers", self.peers, "--data-dir", str(self.data_dir(addr))]
        cmd += ["--group", self.group, "--election-timeout-ms", str(self.election_timeout_ms)]
        if self.heartbeat_ms:
            cmd += ["--heartbeat-ms", str(self.heartbeat_ms)]
        cmd += ["--log-level", self.log_level, "--die-with-parent", *self.node_args]
        if self.tls_files:
            f = self.tls_files[addr]
            cmd += [TLS_FLAGS[0], str(f.cert), TLS_FLAGS[1], str(f.key)]
            cmd += [TLS_FLAGS[2], str(self.tls_files["ca"].cert)]
        return cmd

    def start(self, addr: str) -> int:
        """Start (or restart) replica ``addr`` on its data directory; its pid."""
        if addr in self.procs:
            raise RuntimeError(f"{addr} is already running")
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(addr), "ab") as err:
            proc = subprocess.Popen(self.command(addr), stdin=subprocess.DEVNULL, stderr=err)
        self.procs[addr] = proc
        if self.on_spawn is not None:
            self.on_spawn(proc.pid)
        return proc.pid

    def start_all(self) -> None:
        """Start every replica not running."""
        for a in self.addrs:
            if a not in self.procs:
                self.start(a)

    def kill(self, addr: str) -> None:
        """SIGKILL replica ``addr`` (a crash: nothing is flushed) and reap it."""
        proc = self.procs.pop(addr)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)

    def pids(self) -> list[int]:
        """Pids of the replicas running."""
        return [p.pid for p in self.procs.values()]

    def exited(self) -> dict[str, int]:
        """Replicas that exited by themselves, with their exit status."""
        return {a: rc for a, p in self.procs.items() if (rc := p.poll()) is not None}

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM every replica (a graceful stop), SIGKILL those still up after
        ``grace`` seconds, and reap them all."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace
        for addr, proc in list(self.procs.items()):
            try:
                proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            del self.procs[addr]

    async def close(self) -> None:
        """Close the status client (the processes are `stop_all`'s)."""
        await self.rpc.close()

    async def status(self, addr: str, timeout: float = 0.5) -> dict[str, Any] | None:
        """``addr``'s status (its node's plus ``kv``: the store's), or None if it
        does not answer."""
        try:
            reply = await self.rpc.call(addr, KV_SERVICE, {"op": "status"}, timeout=timeout)
        except Exception:
            return None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), dict):
            return None
        st: dict[str, Any] = reply["ok"]
        return st if "role" in st else None

    async def statuses(self) -> dict[str, dict[str, Any] | None]:
        """Every replica's status (None for those not answering)."""
        sts = await asyncio.gather(*(self.status(a) for a in self.addrs))
        return dict(zip(self.addrs, sts, strict=True))

    async def wait_leader(
        self, timeout: float = 30.0, exclude: str = "", poll: float = 0.05
    ) -> dict[str, Any]:
        """The status of a leader (not ``exclude``) whose entry of its own term is
        applied, so it serves reads; `TimeoutError` after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            for a, st in (await self.statuses()).items():
                if a == exclude or st is None or st["role"] != "leader":
                    continue
                if st["applied_index"] >= st["commit_index"] >= 1:
                    return st
            if time.monotonic() >= end:
                raise TimeoutError(f"no leader within {timeout} s (logs in {self.base})")
            await asyncio.sleep(poll)

    async def wait_applied(self, addr: str, index: int, timeout: float = 30.0) -> dict[str, Any]:
        """``addr``'s status once it has applied ``index``; `TimeoutError` after
        ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            st = await self.status(addr)
            if st is not None and st["applied_index"] >= index:
                return st
            if time.monotonic() >= end:
                raise TimeoutError(f"{addr} did not apply index {index} within {timeout} s")
            await asyncio.sleep(0.05)

    def log_tails(self, lines: int = 10) -> str:
        """The last ``lines`` lines of each replica's log, for error reports."""
        out = []
        for log_file in sorted(self.base.glob("node-*.log")):
            tail = log_file.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log_file.name}\n" + "\n".join(tail))
        return "\n".join(out)


__all__ = ["TLS_FLAGS", "KvProcessCluster", "kv_serve_takes_tls"]
