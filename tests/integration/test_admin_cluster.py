"""Membership changes through the admin service on real counter processes, under
continuous writes: grow 3 -> 5, shrink 5 -> 3 (the leader removed on the way),
a learner promoted, a member replaced by a new empty one, leadership moved to
each member in turn; then no acknowledged increment is lost and every member
has the same value. Much of it goes through the ``pyjraft admin`` command."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from pyjraft.certs import make_cluster_certs
from pyjraft.client import UnknownOutcomeError
from pyjraft.client.admin import AdminClient
from pyjraft.examples.counter import CounterClient
from pyjraft.transport import TlsConfig
from tests.integration.cluster import CounterCluster

pytestmark = pytest.mark.timeout(120)

GROUP = "itest"


class MembershipCluster(CounterCluster):
    """Three founding members and spares that start with ``--join``."""

    def __init__(self, base: Path, spares: int, *, tls: bool = False) -> None:
        super().__init__(base, 3 + spares, group=GROUP, tls=tls, node_args=self._args)
        self.founders = self.addrs[:3]
        self.spares = self.addrs[3:]
        self.reach: list[str] = self.founders
        """The members a node starting now is told to reach (``--peers``)."""
        self.admin_tls_args: list[str] = []
        if tls:
            files = make_cluster_certs(base / "tls", [], admins=["ops"])
            f, ca = files["admin:ops"], files["ca"]
            self.admin_tls_args = [
                *("--tls-cert", str(f.cert), "--tls-key", str(f.key), "--tls-ca", str(ca.cert))
            ]
            self.admin_tls = TlsConfig.load(f.cert, f.key, ca.cert)

    def _args(self, addr: str) -> list[str]:
        # Spares join; a node is told the members to reach (argparse: the last wins).
        return ["--peers", ",".join(self.reach), *(["--join"] if addr in self.spares else [])]

    async def admin(self, *argv: str, tls: list[str] | None = None) -> tuple[int, Any]:
        """Run ``pyjraft admin --json ARGV``; its exit status and JSON output."""
        cmd = [sys.executable, "-m", "pyjraft.cli", "admin", "--peers", ",".join(self.reach)]
        cmd += ["--group", GROUP, "--json", *(self.admin_tls_args if tls is None else tls)]
        proc = await asyncio.create_subprocess_exec(
            *cmd, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        lines = out.decode().strip().splitlines()
        value = json.loads(lines[-1]) if lines else None
        if proc.returncode != 0:
            print(f"pyjraft admin {' '.join(argv)} -> {proc.returncode}: {err.decode()}")
        return proc.returncode, value


class Writer:
    """Increments by 1 from ``n`` tasks until stopped; counts what was acknowledged."""

    def __init__(self, client: CounterClient) -> None:
        self.client = client
        self.acked = 0
        self.unknown = 0
        self.failed = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, n: int = 2) -> None:
        self._tasks = [asyncio.ensure_future(self._run()) for _ in range(n)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.client.increment_and_get(1, deadline=15.0)
                self.acked += 1
            except UnknownOutcomeError:
                self.unknown += 1
            except Exception:
                self.failed += 1  # certainly not applied (deadline passed)
            await asyncio.sleep(0.002)

    async def progress(self, more: int = 20, timeout: float = 15.0) -> None:
        """Wait until ``more`` further increments are acknowledged."""
        target = self.acked + more
        end = time.monotonic() + timeout
        while self.acked < target:
            assert time.monotonic() < end, f"writes stalled at {self.acked} (target {target})"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _check_converged(c: MembershipCluster, w: Writer, voters: list[str]) -> None:
    """Every voter applies the same final value; no acknowledged increment lost."""
    value = await w.client.get(deadline=15.0)
    assert w.acked <= value <= w.acked + w.unknown, (value, w.acked, w.unknown)
    end = time.monotonic() + 15
    while True:
        sts = {a: await c.status(a) for a in voters}
        if all(st is not None and st["value"] == value for st in sts.values()):
            return
        assert time.monotonic() < end, f"not converged on {value}: {sts}\n{c.logs()}"
        await asyncio.sleep(0.05)


async def _close(c: MembershipCluster, w: Writer) -> None:
    await w.stop()
    await w.client.close()
    await c.close()


def _run(c: MembershipCluster, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        asyncio.run(main())
    finally:
        c.stop_all()
        print(c.logs(20))


async def _voters(c: MembershipCluster) -> list[str]:
    rc, conf = await c.admin("peers")
    assert rc == 0, conf
    assert not conf["voters_outgoing"]
    return list(conf["voters"])


def test_grow_shrink_remove_the_leader_and_promote_a_learner(tmp_path: Path, seed: int) -> None:
    c = MembershipCluster(tmp_path, spares=3)
    d, e, f = c.spares

    async def main() -> None:
        for a in c.founders:
            c.start(a)
        await c.wait_for_leader()
        w = Writer(CounterClient(GROUP, c.addrs, timeout=1.0, deadline=15.0))
        try:
            w.start()
            await w.progress()
            c.start(d)
            c.start(e)
            # Grow 3 -> 5, one voter at a time, with the command line.
            for peer in (d, e):
                rc, conf = await c.admin("add-peer", peer)
                assert rc == 0 and peer in conf["voters"], conf
                await w.progress()
            assert len(await _voters(c)) == 5
            rc, alive = await c.admin("alive-peers")
            assert rc == 0 and len(alive["alive"]) == 5, alive
            # Shrink 5 -> 3: the leader first, then a founder that follows.
            rc, leader = await c.admin("leader")
            assert rc == 0
            rc, conf = await c.admin("remove-peer", leader["leader"])
            assert rc == 0 and leader["leader"] not in conf["voters"], conf
            await w.progress()
            rng = random.Random(seed)
            gone = rng.choice([a for a in c.founders if a in conf["voters"]])
            async with AdminClient(c.reach, group=GROUP) as admin:
                conf2 = await admin.remove_peer(gone)
                assert len(conf2.voters) == 3 and gone not in conf2.voters
                await w.progress()
                for a in (leader["leader"], gone):
                    assert c.terminate(a) == 0  # removed: stopping it costs nothing
                await w.progress()
                # A learner, then promoted.
                c.reach = list(conf2.voters)
                c.start(f)
                rc, conf = await c.admin("add-learners", f)
                assert rc == 0 and conf["learners"] == [f], conf
                await w.progress()
                rc, conf = await c.admin("change-peers", ",".join([*conf["voters"], f]))
                assert rc == 0 and f in conf["voters"] and not conf["learners"], conf
                await w.progress()
                voters = await _voters(c)
                assert len(voters) == 4 and set(voters) <= set(c.addrs)
                # A second change while one is under way is refused as busy (exit 4).
                busy = asyncio.ensure_future(admin.add_peer("127.0.0.1:1"))
                await asyncio.sleep(0.3)
                rc, err = await c.admin("add-peer", "127.0.0.1:2")
                assert rc == 4 and err["error"] == "busy", err
                busy.cancel()
            await w.stop()
            await _check_converged(c, w, voters)
        finally:
            await _close(c, w)

    _run(c, main)


def test_replace_a_member_and_move_leadership_to_each_in_turn_over_tls(
    tmp_path: Path, seed: int
) -> None:
    c = MembershipCluster(tmp_path, spares=1, tls=True)
    (new,) = c.spares
    assert c.tls_files and c.client_tls is not None
    f, ca = c.tls_files["client:itest"], c.tls_files["ca"]
    client_args = ["--tls-cert", str(f.cert), "--tls-key", str(f.key), "--tls-ca", str(ca.cert)]

    async def main() -> None:
        for a in c.founders:
            c.start(a)
        await c.wait_for_leader()
        w = Writer(CounterClient(GROUP, c.addrs, tls=c.client_tls, timeout=1.0, deadline=15.0))
        try:
            w.start()
            await w.progress()
            # A plain client certificate may look but not change (exit 5).
            rc, conf = await c.admin("peers", tls=client_args)
            assert rc == 0 and len(conf["voters"]) == 3
            rc, err = await c.admin("transfer-leader", tls=client_args)
            assert rc == 5 and err["error"] == "unauthorized", err
            # Leadership to each member in turn (the admin certificate).
            for target in c.founders:
                rc, moved = await c.admin("transfer-leader", target)
                assert rc == 0 and moved == {"leader": target}, moved
                await w.progress(10)
            # Replace a follower (killed: its machine is gone) by a new empty member.
            rc, leader = await c.admin("leader")
            gone = random.Random(seed).choice([a for a in c.founders if a != leader["leader"]])
            c.kill(gone)
            await w.progress()
            c.start(new)
            voters = [a for a in c.founders if a != gone] + [new]
            rc, conf = await c.admin("change-peers", ",".join(voters))
            assert rc == 0 and sorted(conf["voters"]) == sorted(voters), conf
            await w.progress()
            async with AdminClient(c.founders, group=GROUP, tls=c.admin_tls) as admin:
                assert await admin.transfer_leader(new) == new
                await w.progress()
                index, _ = await admin.snapshot(new)
                assert index > 0
            await w.stop()
            await _check_converged(c, w, voters)
        finally:
            await _close(c, w)

    _run(c, main)
