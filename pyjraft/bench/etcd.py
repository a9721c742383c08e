"""etcd, for the key-value benchmark's ``--compare etcd``: a 3-member cluster
started from the ``etcd`` binary on the PATH, and two Python clients.

The cluster: three ``etcd`` processes on loopback, each with its own data
directory, at etcd's defaults (its write-ahead log is fsynced before a
write is acknowledged, as pyjraft's raft log is; etcd has no option to skip
that short of ``--unsafe-no-fsync``, which is not used). Each process is
started with ``PR_SET_PDEATHSIG`` (it dies with the benchmark) and reported
to ``on_spawn`` so the benchmark can kill it by pid on every exit path.

The clients, both driven by the same closed loop as pyjraft's:

* ``aetcd`` (the default when installed: ``pip install 'pyjraft[etcd]'``):
  a maintained asyncio client of etcd's gRPC API, one HTTP/2 channel
  multiplexing every request, as pyjraft's client multiplexes one
  connection;
* ``http``: etcd's JSON gateway (``POST /v3/kv/put``, ``/v3/kv/range``,
  keys and values in base64) through aiohttp, one HTTP/1.1 connection per
  request in flight. Needs nothing beyond pyjraft's own dependencies, but
  every request also pays etcd's in-process JSON-to-gRPC proxy.

Reads: etcd's default range is linearizable (ReadIndex); ``serializable``
reads the member's local state. etcd has no lease reads and no reads
through the log, so pyjraft's read modes are compared to its linearizable
read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pyjraft.bench._proc import set_pdeathsig
from pyjraft.testing.ports import free_ports

INSTALL_HINT = (
    "etcd is not on the PATH: on Debian or Ubuntu, `apt-get install etcd-server` "
    "(or put an etcd v3.4+ release binary on the PATH)"
)


def etcd_binary() -> str | None:
    """The ``etcd`` binary on the PATH, or None."""
    return shutil.which("etcd")


def etcd_version(binary: str) -> str:
    """``etcd --version``'s first line (say ``etcd Version: 3.4.23``)."""
    out = subprocess.run(
        [binary, "--version"], check=False, capture_output=True, text=True, timeout=10
    )
    return (out.stdout or out.stderr).splitlines()[0].strip() if out.stdout or out.stderr else "?"


class EtcdCluster:
    """Three etcd members on loopback; `start`, `wait_leader`, `stop`."""

    def __init__(
        self, base: Path, binary: str, on_spawn: Callable[[int], None] | None = None
    ) -> None:
        self.base = base
        self.binary = binary
        self.on_spawn = on_spawn
        ports = free_ports(6)
        self.client_urls = [f"http://127.0.0.1:{p}" for p in ports[:3]]
        self.peer_urls = [f"http://127.0.0.1:{p}" for p in ports[3:]]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        """Start the three members (a new cluster in fresh data directories)."""
        initial = ",".join(f"n{i}={u}" for i, u in enumerate(self.peer_urls))
        self.base.mkdir(parents=True, exist_ok=True)
        for i, (client, peer) in enumerate(zip(self.client_urls, self.peer_urls, strict=True)):
            cmd = [self.binary, "--name", f"n{i}", "--data-dir", str(self.base / f"etcd{i}")]
            cmd += ["--listen-client-urls", client, "--advertise-client-urls", client]
            cmd += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
            cmd += ["--initial-cluster", initial, "--initial-cluster-state", "new"]
            cmd += ["--initial-cluster-token", "pyjraft-bench", "--logger", "zap"]
            cmd += ["--log-level", "error"]
            with open(self.base / f"etcd{i}.log", "ab") as err:
                # As the benchmark's node processes are started: set_pdeathsig only calls prctl.
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    preexec_fn=set_pdeathsig,  # noqa: PLW1509
                )
            self.procs.append(proc)
            if self.on_spawn is not None:
                self.on_spawn(proc.pid)

    async def wait_leader(self, timeout: float = 30.0) -> int:
        """The index of the member that leads, once every member names it."""
        import aiohttp

        end = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                ids, leaders = [], []
                for url in self.client_urls:
                    try:
                        async with session.post(
                            f"{url}/v3/maintenance/status",
                            json={},
                            timeout=aiohttp.ClientTimeout(total=1.0),
                        ) as r:
                            body = await r.json()
                        ids.append(str(body["header"]["member_id"]))
                        leaders.append(str(body.get("leader", "0")))
                    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                        break
                if len(ids) == 3 and len(set(leaders)) == 1 and leaders[0] in ids:
                    return ids.index(leaders[0])
                if time.monotonic() >= end:
                    logs = self.base / "etcd0.log"
                    raise TimeoutError(f"etcd elected no leader within {timeout} s (see {logs})")
                await asyncio.sleep(0.1)

    def pids(self) -> list[int]:
        """The members' pids."""
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL after 5 s) and reap it."""
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()


class EtcdClient(Protocol):
    """What the benchmark needs of an etcd client."""

    name: str

    async def put(self, key: bytes, value: bytes) -> None:
        """Write ``key``."""

    async def get(self, key: bytes, serializable: bool) -> bytes | None:
        """Read ``key`` (linearizable unless ``serializable``)."""

    async def close(self) -> None:
        """Release connections."""


class AetcdClient:
    """etcd's gRPC API through ``aetcd`` (one HTTP/2 channel)."""

    name = "aetcd"

    def __init__(self, url: str) -> None:
        import aetcd

        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.version = getattr(aetcd, "__version__", "?")
        self._client = aetcd.Client(host=host, port=int(port), timeout=30)

    async def put(self, key: bytes, value: bytes) -> None:
        """Write ``key``."""
        await self._client.put(key, value)

    async def get(self, key: bytes, serializable: bool) -> bytes | None:
        """Read ``key``."""
        r = await self._client.get(key, serializable=serializable)
        return None if r is None else bytes(r.value)

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()


class HttpGatewayClient:
    """etcd's JSON gateway through aiohttp (HTTP/1.1, a connection per request in flight)."""

    name = "http-gateway"

    def __init__(self, url: str, concurrency: int) -> None:
        import aiohttp

        self.url = url
        self.version = aiohttp.__version__
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, concurrency)),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._session.post(self.url + path, json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"etcd {path}: HTTP {r.status}: {await r.text()}")
            out: dict[str, Any] = await r.json()
            return out

    async def put(self, key: bytes, value: bytes) -> None:
        """Write ``key``."""
        await self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    async def get(self, key: bytes, serializable: bool) -> bytes | None:
        """Read ``key``."""
        body: dict[str, Any] = {"key": _b64(key)}
        if serializable:
            body["serializable"] = True
        kvs = (await self._post("/v3/kv/range", body)).get("kvs")
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    async def close(self) -> None:
        """Close the connections."""
        await self._session.close()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def aetcd_available() -> bool:
    """Whether the ``aetcd`` client imports."""
    try:
        import aetcd  # noqa: F401
    except Exception:
        return False
    return True


def make_client(kind: str, url: str, concurrency: int) -> AetcdClient | HttpGatewayClient:
    """An etcd client of ``kind`` (``aetcd`` or ``http``) for the member at ``url``."""
    if kind == "aetcd":
        return AetcdClient(url)
    return HttpGatewayClient(url, concurrency)


__all__ = [
    "INSTALL_HINT",
    "AetcdClient",
    "EtcdClient",
    "EtcdCluster",
    "HttpGatewayClient",
    "aetcd_available",
    "etcd_binary",
    "etcd_version",
    "make_client",
]
