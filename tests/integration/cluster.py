"""A cluster of real counter server processes on 127.0.0.1, for integration tests.

Each node is ``python -m pyjraft.examples.counter server`` in its own process
with its own data directory; the harness talks to them only over TCP (the
``counter`` and ``status`` services), kills them by pid, and always reaps
what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyjraft.certs import CertFiles, make_cluster_certs
from pyjraft.examples.counter import STATUS_SERVICE
from pyjraft.testing.ports import free_ports
from pyjraft.transport import RpcClient, TlsConfig


class CounterCluster:
    """``n`` counter replicas as subprocesses; start, kill, restart, observe."""

    def __init__(
        self,
        base: Path,
        n: int = 3,
        *,
        group: str = "itest",
        election_timeout_ms: int = 400,
        heartbeat_ms: int = 50,
        tls: bool = False,
        node_args: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        """``node_args(addr)``: extra server arguments for the replica ``addr``."""
        self.base = base
        self.group = group
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.node_args = node_args
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.rpc: RpcClient | None = None
        self.tls_files: dict[str, CertFiles] = {}
        self.client_tls: TlsConfig | None = None
        if tls:
            self.tls_files = make_cluster_certs(base / "tls", self.addrs, ["itest"])
            f = self.tls_files["client:itest"]
            self.client_tls = TlsConfig.load(f.cert, f.key, self.tls_files["ca"].cert)

    @property
    def peers(self) -> str:
        """The ``--peers`` argument."""
        return ",".join(self.addrs)

    def log_path(self, addr: str) -> Path:
        """Where ``addr``'s stderr goes (appended across restarts)."""
        return self.base / f"node-{addr.rsplit(':', 1)[1]}.log"

    def start(self, addr: str) -> None:
        """Start (or restart) the replica ``addr`` on its data directory."""
        assert addr not in self.procs, f"{addr} is already running"
        data_dir = self.base / f"data-{addr.rsplit(':', 1)[1]}"
        cmd = [
            sys.executable,
            "-m",
            "pyjraft.examples.counter",
            "server",
            "--data-dir",
            str(data_dir),
            "--group",
            self.group,
            "--id",
            addr,
            "--peers",
            self.peers,
            "--election-timeout-ms",
            str(self.election_timeout_ms),
            "--heartbeat-ms",
            str(self.heartbeat_ms),
            "--die-with-parent",
            *(self.node_args(addr) if self.node_args else ()),
        ]
        if self.tls_files:
            f = self.tls_files[addr]
            cmd += ["--tls-cert", str(f.cert), "--tls-key", str(f.key)]
            cmd += ["--tls-ca", str(self.tls_files["ca"].cert)]
        with open(self.log_path(addr), "ab") as err:
            self.procs[addr] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=err)

    def start_all(self) -> None:
        """Start every replica."""
        for a in self.addrs:
            self.start(a)

    def kill(self, addr: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to ``addr``'s process and reap it."""
        proc = self.procs.pop(addr)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def terminate(self, addr: str, timeout: float = 10.0) -> int:
        """SIGTERM ``addr`` (graceful shutdown); return its exit status."""
        proc = self.procs.pop(addr)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"{addr} ignored SIGTERM for {timeout} s") from None

    def alive(self, addr: str) -> bool:
        """Whether ``addr``'s process is running."""
        proc = self.procs.get(addr)
        return proc is not None and proc.poll() is None

    def stop_all(self) -> None:
        """SIGKILL every replica still running and reap it (teardown; never raises)."""
        for addr in list(self.procs):
            with contextlib.suppress(Exception):
                self.kill(addr)

    def logs(self, lines: int = 30) -> str:
        """The tail of every replica's log, for failure reports."""
        out = []
        for a in self.addrs:
            p = self.log_path(a)
            text = p.read_text(errors="replace").splitlines()[-lines:] if p.exists() else []
            out.append(f"--- {a} ---\n" + "\n".join(text))
        return "\n".join(out)

    # -- observing (on an event loop) -----------------------------------------------

    def _client(self) -> RpcClient:
        if self.rpc is None:
            self.rpc = RpcClient(tls=self.client_tls)
        return self.rpc

    async def close(self) -> None:
        """Close the harness's RPC client (call before the loop ends)."""
        if self.rpc is not None:
            await self.rpc.close()
            self.rpc = None

    async def status(self, addr: str, timeout: float = 0.5) -> dict[str, Any] | None:
        """``addr``'s status, or None if it does not answer."""
        try:
            st = await self._client().call(addr, STATUS_SERVICE, None, timeout=timeout)
        except Exception:
            return None
        assert isinstance(st, dict)
        return st

    async def wait_for_leader(self, timeout: float = 10.0, exclude: str = "") -> str:
        """Poll until a running replica other than ``exclude`` leads and the
        other live replicas follow it; return its address."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            live = [a for a in self.addrs if a != exclude and self.alive(a)]
            sts = {a: await self.status(a) for a in live}
            leaders = [a for a, st in sts.items() if st and st["role"] == "leader"]
            if len(leaders) == 1:
                leader = leaders[0]
                term = sts[leader]["term"]  # type: ignore[index]
                if all(st and st["leader"] == leader and st["term"] == term for st in sts.values()):
                    return leader
            await asyncio.sleep(0.05)
        raise AssertionError(f"no leader within {timeout} s\n{self.logs()}")

    async def wait_caught_up(self, addr: str, index: int, timeout: float = 15.0) -> dict[str, Any]:
        """Poll until ``addr`` has applied ``index``; return its status."""
        end = time.monotonic() + timeout
        st: dict[str, Any] | None = None
        while time.monotonic() < end:
            st = await self.status(addr)
            if st is not None and st["applied_index"] >= index:
                return st
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"{addr} did not apply index {index} within {timeout} s (last status {st})\n"
            f"{self.logs()}"
        )


def env_seed() -> int:
    """The test's RNG seed: ``PYJRAFT_TEST_SEED`` or a fresh one (printed by the caller)."""
    s = os.environ.get("PYJRAFT_TEST_SEED")
    return int(s) if s else int.from_bytes(os.urandom(4), "big")
