"""``pyjraft demo --counter``: a local 3-node replicated counter walked through a leader crash.

Three counter replicas (``python -m pyjraft.examples.counter server``) on
loopback as child processes; a few increments, SIGKILL of the leader, the
counter continuing under the new leader, the killed replica restarted from
its data directory and caught up, and a check that no acknowledged
increment was lost. ``--tls`` runs it over mutual TLS with certificates made
for it. This was ``pyjraft demo`` before the key-value demo
(`pyjraft.demo.kv_demo`) took that name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyjraft.examples import counter
from pyjraft.testing.ports import free_ports as _free_ports
from pyjraft.transport import RpcClient
from pyjraft.transport.tls import TlsConfig

DEMO_TIME_LIMIT = 50.0
"""Seconds after which the demo gives up (it normally takes a few)."""


class _DemoCluster:
    """Three counter replicas as child processes of the demo."""

    def __init__(
        self, base: Path, pid_file: str | None, election_timeout_ms: int, tls: bool = False
    ) -> None:
        self.base = base
        self.pid_file = pid_file
        self.election_timeout_ms = election_timeout_ms
        self.addrs = [f"127.0.0.1:{p}" for p in _free_ports(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tls_files: dict[str, Any] = {}
        client_tls = None
        if tls:
            from pyjraft.certs import make_cluster_certs

            self.tls_files = make_cluster_certs(base / "tls", self.addrs, ["demo"])
            f = self.tls_files["client:demo"]
            client_tls = TlsConfig.load(f.cert, f.key, self.tls_files["ca"].cert)
        self.client_tls = client_tls
        self.rpc = RpcClient(tls=client_tls)

    def start(self, addr: str) -> None:
        port = addr.rsplit(":", 1)[1]
        cmd = [
            sys.executable,
            "-m",
            "pyjraft.examples.counter",
            "server",
            "--data-dir",
            str(self.base / f"data-{port}"),
            "--group",
            "demo",
            "--id",
            addr,
            "--peers",
            ",".join(self.addrs),
            "--election-timeout-ms",
            str(self.election_timeout_ms),
            "--die-with-parent",
        ]
        if self.tls_files:
            f = self.tls_files[addr]
            cmd += ["--tls-cert", str(f.cert), "--tls-key", str(f.key)]
            cmd += ["--tls-ca", str(self.tls_files["ca"].cert)]
        with open(self.base / f"node-{port}.log", "ab") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=err)
        self.procs[addr] = proc
        if self.pid_file:
            with open(self.pid_file, "a") as f:
                f.write(f"{proc.pid}\n")

    def kill(self, addr: str) -> None:
        proc = self.procs.pop(addr)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)

    def stop_all(self) -> None:
        for addr, proc in list(self.procs.items()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            del self.procs[addr]

    async def status(self, addr: str) -> dict[str, Any] | None:
        try:
            st = await self.rpc.call(addr, counter.STATUS_SERVICE, None, timeout=0.5)
        except Exception:
            return None
        return st if isinstance(st, dict) else None

    async def wait_for_leader(self, exclude: str = "", timeout: float = 15.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for a in self.addrs:
                if a == exclude or a not in self.procs:
                    continue
                st = await self.status(a)
                if st is not None and st["role"] == "leader":
                    return st
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no leader within {timeout} s (logs in {self.base})")

    async def wait_caught_up(self, addr: str, index: int, timeout: float = 15.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = await self.status(addr)
            if st is not None and st["applied_index"] >= index:
                return st
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{addr} did not catch up within {timeout} s")


def _say(text: str) -> None:
    print(text, flush=True)


async def _demo_steps(c: _DemoCluster) -> None:
    mode = "over mutual TLS" if c.tls_files else "plaintext on loopback"
    _say(f"==> starting 3 counter replicas {mode}: {', '.join(c.addrs)} (data in {c.base})")
    t0 = time.monotonic()
    for a in c.addrs:
        c.start(a)
    st = await c.wait_for_leader()
    leader = st["id"]
    _say(f"==> leader elected: {leader} (term {st['term']}) after {time.monotonic() - t0:.2f} s")
    client = counter.CounterClient("demo", c.addrs, rpc=c.rpc, timeout=1.0, deadline=10.0)
    for delta in (1, 2, 3, 4, 5):
        _say(f"    increment-and-get {delta} -> {await client.increment_and_get(delta)}")
    _say(f"    get -> {await client.get()}")

    _say(f"==> kill -9 the leader {leader}")
    t1 = time.monotonic()
    c.kill(leader)
    st = await c.wait_for_leader(exclude=leader)
    new_leader = st["id"]
    _say(f"==> new leader: {new_leader} (term {st['term']}) after {time.monotonic() - t1:.2f} s")
    for delta in (10, 20):
        _say(f"    increment-and-get {delta} -> {await client.increment_and_get(delta)}")
    value = await client.get()
    _say(f"    get -> {value}")

    _say(f"==> restarting {leader} from its data directory")
    c.start(leader)
    lst = await c.status(new_leader)
    index = lst["applied_index"] if lst else 0
    rst = await c.wait_caught_up(leader, index)
    _say(
        f"    {leader} caught up: role {rst['role']}, applied index {rst['applied_index']}, "
        f"counter {rst['value']}"
    )
    _say("==> summary")
    for a in c.addrs:
        s = await c.status(a)
        if s is None:
            _say(f"    {a}: not answering")
        else:
            _say(
                f"    {a}: {s['role']:<9} term {s['term']}  applied {s['applied_index']:>3}  "
                f"counter {s['value']}"
            )
    ok = value == 1 + 2 + 3 + 4 + 5 + 10 + 20 and rst["value"] == value
    _say(
        f"==> counter = {value} (expected 45): "
        + ("no acknowledged increment was lost" if ok else "MISMATCH")
    )
    if not ok:
        raise RuntimeError("the counter does not add up")


async def run_counter_demo(args: argparse.Namespace) -> int:
    """Run the counter demo; its exit status."""
    base = Path(tempfile.mkdtemp(prefix="pyjraft-demo-"))
    c = _DemoCluster(base, args.pid_file, args.election_timeout_ms, tls=args.tls)
    try:
        async with asyncio.timeout(DEMO_TIME_LIMIT):
            await _demo_steps(c)
        return 0
    except Exception as e:
        print(f"demo failed: {type(e).__name__}: {e}", file=sys.stderr)
        for log_file in sorted(base.glob("node-*.log")):
            tail = log_file.read_text(errors="replace").splitlines()[-10:]
            print(f"--- {log_file.name}\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        await c.rpc.close()
        c.stop_all()
        if args.keep:
            _say(f"(data and logs kept in {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)
