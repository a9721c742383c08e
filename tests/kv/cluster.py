"""Three real KV replica processes (``python -m pyjraft.cli kv serve``) on loopback."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.integration.cluster import CounterCluster


class KvCluster(CounterCluster):
    """`CounterCluster`'s process handling, with KV replicas and the KV status."""

    def start(self, addr: str) -> None:
        """Start (or restart) the replica ``addr`` on its data directory."""
        assert addr not in self.procs, f"{addr} is already running"
        data_dir = self.base / f"data-{addr.rsplit(':', 1)[1]}"
        cmd = [
            sys.executable,
            "-m",
            "pyjraft.cli",
            "kv",
            "serve",
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

    async def status(self, addr: str, timeout: float = 0.5) -> dict[str, Any] | None:
        """``addr``'s status (node and store), or None if it does not answer."""
        try:
            reply = await self._client().call(addr, "kv", {"op": "status"}, timeout=timeout)
        except Exception:
            return None
        if not isinstance(reply, dict) or "ok" not in reply or "role" not in reply["ok"]:
            return None
        st: dict[str, Any] = reply["ok"]
        return st
