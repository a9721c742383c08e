"""The benchmark's child processes: node processes speaking JSON lines, a cluster
of three, and the last-resort cleanup that kills every child by pid.

Children speak JSON lines (commands on stdin, replies on stdout, their
stderr goes to a log file in the run's temp directory). Every child is
recorded by pid when it starts and killed by pid on every exit path (normal
end, error, ``--timeout``, SIGTERM, Ctrl-C); the children also kill
themselves when the driver dies (``PR_SET_PDEATHSIG`` plus a watchdog) or
when the deadline passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pyjraft.bench._proc import set_pdeathsig
from pyjraft.testing.ports import free_ports

ELECTION_TIMEOUT_MS = 1000
"""The nodes' election timeout with ``--leader-node`` (the `NodeOptions` default)."""

_LIVE: set[int] = set()
"""Pids of every child started and not yet reaped."""


def _kill_pid(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def track_child(pid: int) -> None:
    """Record a child started elsewhere (``subprocess.Popen``) for `kill_all_children`."""
    _LIVE.add(pid)


def forget_child(pid: int) -> None:
    """Stop tracking ``pid`` (reaped by its owner: its number may be reused)."""
    _LIVE.discard(pid)


def kill_all_children() -> None:
    """SIGKILL every child still alive, by pid (the last-resort exit path)."""
    for pid in list(_LIVE):
        _kill_pid(pid)
        with contextlib.suppress(OSError):
            os.waitpid(pid, os.WNOHANG)
        _LIVE.discard(pid)


class Child:
    """One node process and its JSON-lines conversation."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: str) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.addr = ""
        self.on_progress: Callable[[int], None] | None = None
        self._lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def spawn(cls, name: str, argv: Sequence[str], log_path: str) -> Child:
        """Start ``python argv...`` with pipes; record its pid."""
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        with open(log_path, "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
                preexec_fn=set_pdeathsig,
                limit=1 << 28,
            )
        _LIVE.add(proc.pid)
        return cls(name, proc, log_path)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("type") == "progress":
                    if self.on_progress is not None:
                        self.on_progress(int(obj["done"]))
                    continue
                self._lines.put_nowait(obj)
        finally:
            self._lines.put_nowait(None)

    def send(self, cmd: dict[str, Any]) -> None:
        """Write one command line (ignored if the child is gone)."""
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(OSError, RuntimeError):
            stdin.write((json.dumps(cmd) + "\n").encode())

    async def expect(self, want: str, timeout: float) -> dict[str, Any]:
        """The next reply of type ``want`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                obj = await self._lines.get()
                if obj is None:
                    self._lines.put_nowait(None)
                    raise RuntimeError(
                        f"{self.name} exited (rc={self.proc.returncode}); "
                        f"log tail:\n{self.log_tail()}"
                    )
                if obj.get("type") == want:
                    return obj

    async def request(self, cmd: dict[str, Any], want: str, timeout: float) -> dict[str, Any]:
        """Send ``cmd`` and wait for a reply of type ``want``."""
        self.send(cmd)
        return await self.expect(want, timeout)

    def log_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of the child's stderr."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def stop(self, grace: float = 3.0) -> None:
        """Ask the child to exit; SIGKILL it by pid if it has not within ``grace``."""
        if self.proc.returncode is None:
            self.send({"cmd": "exit"})
            with contextlib.suppress(OSError, RuntimeError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                _kill_pid(self.pid)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 5.0)
        _LIVE.discard(self.pid)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class Cluster:
    """Three node processes of one implementation."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    @classmethod
    async def start_pyjraft(cls, args: argparse.Namespace, tmp: str, deadline: float) -> Cluster:
        """Start three `pyjraft.bench.server` processes; node ``i`` keeps its data
        under ``args.node_parents[i]`` (``tmp`` for all unless
        ``--node-data-roots``), its log file in ``tmp``."""
        ports = free_ports(3)
        peers = ",".join(f"127.0.0.1:{p}" for p in ports)
        args.http_addrs = [f"127.0.0.1:{p}" for p in free_ports(3)] if args.metrics else []
        specs = []
        tls_dir = _make_tls(args, tmp, peers.split(","))
        for i, port in enumerate(ports):
            data = os.path.join(args.node_parents[i], f"node{i}")
            argv = ["-m", "pyjraft.bench.server", "--port", str(port), "--peers", peers]
            if tls_dir:
                argv += ["--tls-dir", tls_dir]
            argv += ["--data-dir", data, "--deadline", str(deadline), "--loop", args.loop]
            if args.leader_node is not None:
                # The others wait 5 times longer before standing: node K leads.
                timeout = ELECTION_TIMEOUT_MS * (1 if i == args.leader_node else 5)
                argv.append(f"--election-timeout-ms={timeout}")
            if args.no_sync:
                argv.append("--no-sync")
            argv.append(f"--leader-write-thread={args.leader_write_thread}")
            if args.busy_poll_us is not None:
                argv.append(f"--busy-poll-us={args.busy_poll_us}")
            if getattr(args, "snapshot_every", None) is not None:
                argv.append(f"--snapshot-every={args.snapshot_every}")
            if not args.tune_gc:
                argv.append("--no-tune-gc")
            if args.metrics:
                argv += ["--metrics", "--http", args.http_addrs[i]]
            specs.append((f"pyjraft node{i}", argv, os.path.join(tmp, f"node{i}.log")))
        return await cls._spawn(specs)

    @classmethod
    async def start_pysyncobj(cls, config: str, tmp: str, deadline: float) -> Cluster:
        """Start three `pyjraft.bench.pso_server` processes in configuration ``config``."""
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        specs = []
        for i, a in enumerate(addrs):
            argv = ["-m", "pyjraft.bench.pso_server", "--self", a]
            argv += ["--partners", ",".join(x for x in addrs if x != a)]
            argv += ["--deadline", str(deadline), "--config", config]
            log_path = os.path.join(tmp, f"pso-{config}-{i}.log")
            specs.append((f"pysyncobj-{config} node{i}", argv, log_path))
        return await cls._spawn(specs)

    @classmethod
    async def _spawn(cls, specs: list[tuple[str, list[str], str]]) -> Cluster:
        """Start one child per (name, argv, log path); wait until each says ``ready``.
        On any failure, every child started so far is stopped."""
        children: list[Child] = []
        cluster = cls(children)
        try:
            for name, argv, log_path in specs:
                children.append(await Child.spawn(name, argv, log_path))
            for c in children:
                c.addr = (await c.expect("ready", 30.0))["addr"]
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    async def statuses(self) -> list[dict[str, Any]]:
        """One ``status`` reply from each member."""
        return list(
            await asyncio.gather(
                *(c.request({"cmd": "status"}, "status", 10.0) for c in self.children)
            )
        )

    async def wait_leader(self, timeout: float) -> tuple[Child, dict[str, Any]]:
        """Wait until every member names the same leader and it has applied its
        own no-op (pyjraft) or everyone is ready (PySyncObj)."""
        async with asyncio.timeout(timeout):
            while True:
                sts = await self.statuses()
                leaders = [c for c, s in zip(self.children, sts, strict=True) if s["is_leader"]]
                if len(leaders) == 1:
                    lc = leaders[0]
                    ls = sts[self.children.index(lc)]
                    agreed = all(s["leader"] == lc.addr for s in sts)
                    caught_up = ls.get("ready", True) and all(s.get("ready", True) for s in sts)
                    if "applied_index" in ls:
                        caught_up = caught_up and 1 <= ls["commit_index"] <= ls["applied_index"]
                    if agreed and caught_up:
                        return lc, ls
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop every member (kill by pid after a grace period)."""
        await asyncio.gather(*(c.stop() for c in self.children), return_exceptions=True)


CLIENT_TLS: list[Any] = [None]
"""The bench client's ``TlsConfig`` with ``--tls`` (set by `_make_tls`), else None."""


def _make_tls(args: argparse.Namespace, tmp: str, addrs: list[str]) -> str:
    """With ``--tls``: certificates for the nodes and the bench client, in ``tmp``."""
    if not getattr(args, "tls", False):
        CLIENT_TLS[0] = None
        return ""
    from pathlib import Path

    from pyjraft.certs import make_cluster_certs
    from pyjraft.transport.tls import TlsConfig

    files = make_cluster_certs(Path(tmp) / "tls", addrs, ["bench"])
    client = files["client:bench"]
    CLIENT_TLS[0] = TlsConfig.load(client.cert, client.key, files["ca"].cert)
    return str(Path(tmp) / "tls")
