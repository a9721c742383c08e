"""The fault soak: real KV replica processes under crashes and pauses, every
client history checked for linearizability.

``python -m pyjraft.testing.soak --duration 1800 --seed 1`` starts ``--nodes``
``pyjraft kv serve`` processes on loopback (snapshots every few hundred
entries, so compaction and installs happen under the faults too) and runs
two things at once until the duration is up:

* ``--clients`` tasks, each doing puts, linearizable gets, compare-and-sets
  and deletes on a few shared keys (``--keys``), every value unique. Each
  operation is recorded with its call and return times and its answer
  (`pyjraft.testing.linearizability.Operation`); one whose outcome the
  client does not know (`UnknownOutcomeError`) is recorded as such, one the
  client knows was not applied (`DeadlineExceededError`) is left out.
* a fault schedule drawn from ``--seed``: SIGKILL of a member (the leader
  half the time) and its restart after a while; SIGSTOP of a member for up to
  three election timeouts, then SIGCONT; SIGKILL of a majority for a while;
  a graceful restart; a leadership transfer; a member removed from the
  configuration and added back (its data kept), through the admin service.

Then it heals everything, reads every key once more through the leader,
waits for every replica to apply the leader's commit index and reads each
replica's store locally. It fails (exit status 1, the seed printed, the
history kept in ``history.jsonl`` beside the replicas' logs) if any key's
history is not linearizable, if the replicas' stores differ, or if a store
differs from the final linearizable reads. The last line is a JSON summary.

Timing comes from the machine, so two runs of one seed differ; the seed
fixes the choices (faults, operations, keys), not the interleaving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyjraft.client import ClientError, DeadlineExceededError, UnknownOutcomeError
from pyjraft.client.admin import AdminClient
from pyjraft.kv import Client
from pyjraft.kv.types import ReadConsistency
from pyjraft.testing.kv_cluster import KvProcessCluster
from pyjraft.testing.linearizability import KeyResult, Operation, check_history

KEY_PREFIX = b"soak/"
FAULTS = (
    "kill",
    "kill_leader",
    "pause",
    "pause_leader",
    "kill_majority",
    "restart",
    "transfer",
    "remove_readd",
)


@dataclass
class SoakOptions:
    """What `run_soak` does; see the module docstring and ``--help``."""

    duration: float = 60.0
    seed: int = 1
    nodes: int = 3
    clients: int = 8
    keys: int = 8
    election_timeout_ms: int = 600
    snapshot_every: int = 300
    fault_gap: tuple[float, float] = (0.5, 3.0)
    faults: tuple[str, ...] = FAULTS
    read: ReadConsistency = "linearizable"
    """How gets read: ``linearizable`` (ReadIndex), ``lease``, or
    ``serializable`` (local, may be stale: a check that the checker catches
    stale reads)."""
    base: Path | None = None


@dataclass
class SoakReport:
    """What a soak saw; ``ok`` is its verdict."""

    seed: int
    seconds: float = 0.0
    operations: Counter[str] = field(default_factory=Counter)
    unknown_outcome: int = 0
    not_applied: int = 0
    failed_reads: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    admin_errors: list[str] = field(default_factory=list)
    """Membership operations that failed (a transfer may; a member must come back)."""
    members_restored: bool = True
    keys_checked: int = 0
    not_linearizable: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    replicas_identical: bool = False
    stores_match_final_reads: bool = False
    applied_index: int = 0
    base: str = ""

    @property
    def ok(self) -> bool:
        """No violation: every key linearizable, every store the same."""
        return (
            not self.not_linearizable
            and not self.undecided
            and self.replicas_identical
            and self.stores_match_final_reads
            and self.members_restored
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON summary."""
        out = asdict(self)
        out["operations"] = dict(self.operations)
        out["faults"] = dict(self.faults)
        out["ok"] = self.ok
        out["ops_per_second"] = round(sum(self.operations.values()) / max(self.seconds, 1e-9))
        return out


class _Clients:
    """The client tasks and the history they record."""

    def __init__(self, kv: Client, opts: SoakOptions, rng: random.Random, rep: SoakReport) -> None:
        self.kv = kv
        self.opts = opts
        self.keys = [KEY_PREFIX + b"%02d" % i for i in range(opts.keys)]
        self.history: list[Operation] = []
        self.rep = rep
        self.stop = asyncio.Event()
        self._rngs = [random.Random(rng.random()) for _ in range(opts.clients)]

    async def run(self, i: int) -> None:
        rng = self._rngs[i]
        seen: dict[bytes, bytes | None] = {}
        seq = 0
        while not self.stop.is_set():
            seq += 1
            key = rng.choice(self.keys)
            kind = rng.choices(("put", "get", "cas", "delete"), (4, 4, 2, 1))[0]
            value = b"c%d-%d" % (i, seq) if kind in ("put", "cas") else None
            expect = seen.get(key) if rng.random() < 0.7 else rng.choice([None, b"c0-1"])
            await self.one(i, kind, key, value, expect if kind == "cas" else None, seen)

    async def one(
        self,
        i: int,
        kind: str,
        key: bytes,
        value: bytes | None,
        expect: bytes | None,
        seen: dict[bytes, bytes | None] | None = None,
    ) -> None:
        kv, called = self.kv, time.monotonic_ns()
        try:
            out: Any
            if kind == "put":
                assert value is not None
                r = await kv.put(key, value)
                out = None if r.prev is None else r.prev.value
            elif kind == "get":
                got = await kv.get(key, read=self.opts.read if i >= 0 else "linearizable")
                out = None if got is None else got.value
            elif kind == "cas":
                assert value is not None
                c = await kv.compare_and_set(key, value, expect_value=expect)
                out = c.succeeded
            else:
                d = await kv.delete(key)
                out = None if d.prev is None else d.prev.value
        except UnknownOutcomeError:
            if kind != "get":  # a read that never answered changed nothing
                self.history.append(Operation(kind, key, value, expect, None, called, None, i))
                self.rep.unknown_outcome += 1
            else:
                self.rep.failed_reads += 1
            return
        except DeadlineExceededError:
            self.rep.not_applied += 1  # certainly not applied: not in the history
            return
        except ClientError:
            if kind != "get":
                raise  # a write refused by the service: the workload is wrong
            self.rep.failed_reads += 1
            return
        returned = time.monotonic_ns()
        self.history.append(Operation(kind, key, value, expect, out, called, returned, i))
        self.rep.operations[kind] += 1
        if seen is not None:  # what this client last knew of the key, for its cas
            if kind == "put" or (kind == "cas" and out):
                seen[key] = value
            elif kind == "get":
                seen[key] = out
            elif kind == "delete":
                seen[key] = None


async def _leader(cluster: KvProcessCluster) -> str | None:
    for addr, st in (await cluster.statuses()).items():
        if st is not None and st["role"] == "leader":
            return addr
    return None


async def _membership_fault(
    kind: str, admin: AdminClient, cluster: KvProcessCluster, rng: random.Random, rep: SoakReport
) -> None:
    """A leadership transfer, or a member removed and added back (with its data)."""
    if kind == "transfer":
        target = rng.choice([None, *cluster.addrs])
        try:
            await admin.transfer_leader(target)
        except ClientError as e:  # a transfer may fail (the target is behind, say)
            rep.admin_errors.append(f"transfer to {target}: {e!r}"[:200])
        return
    member = rng.choice(cluster.addrs)
    try:
        await admin.remove_peer(member)
    except ClientError as e:
        rep.admin_errors.append(f"remove {member}: {e!r}"[:200])
    for _ in range(20):  # it must come back, or the group stays smaller
        try:
            if member in (await admin.list_peers()).voters:
                return
            await admin.add_peer(member)
        except ClientError as e:
            rep.admin_errors.append(f"add {member}: {e!r}"[:200])
            await asyncio.sleep(0.5)
    rep.members_restored = False


async def _faults(
    cluster: KvProcessCluster,
    opts: SoakOptions,
    rng: random.Random,
    rep: SoakReport,
    stop: float,
    admin: AdminClient,
) -> None:
    et = opts.election_timeout_ms / 1000
    while time.monotonic() < stop:
        await asyncio.sleep(rng.uniform(*opts.fault_gap))
        if time.monotonic() >= stop:
            return
        kind = rng.choice(opts.faults)
        leader = await _leader(cluster) if kind.endswith("_leader") else None
        victim = leader or rng.choice(cluster.addrs)
        rep.faults[kind] += 1
        if kind in ("transfer", "remove_readd"):
            await _membership_fault(kind, admin, cluster, rng, rep)
        elif kind in ("kill", "kill_leader"):
            cluster.kill(victim)
            await asyncio.sleep(rng.uniform(0.0, 4 * et))
            cluster.start(victim)
        elif kind in ("pause", "pause_leader"):
            proc = cluster.procs[victim]
            proc.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(rng.uniform(0.1, 3 * et))
            finally:
                proc.send_signal(signal.SIGCONT)
        elif kind == "kill_majority":
            victims = rng.sample(cluster.addrs, len(cluster.addrs) // 2 + 1)
            for a in victims:
                cluster.kill(a)
            await asyncio.sleep(rng.uniform(0.0, 3 * et))
            for a in victims:
                cluster.start(a)
        else:
            proc = cluster.procs.pop(victim)
            proc.send_signal(signal.SIGTERM)
            # Gone before its port is taken again (a stuck one is killed).
            try:
                await asyncio.to_thread(proc.wait, 30)
            except Exception:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
            cluster.start(victim)


async def _heal_and_read(
    cluster: KvProcessCluster, clients: _Clients, rep: SoakReport
) -> dict[str, dict[bytes, bytes]]:
    cluster.start_all()
    await cluster.wait_leader(timeout=60)
    for key in clients.keys:  # one more linearizable read of each key, recorded
        for _ in range(10):
            before = len(clients.history)
            await clients.one(-1, "get", key, None, None)
            if len(clients.history) > before:
                break
    leader = await cluster.wait_leader(timeout=60)
    rep.applied_index = int(leader["commit_index"])
    stores: dict[str, dict[bytes, bytes]] = {}
    for a in cluster.addrs:
        await cluster.wait_applied(a, rep.applied_index, timeout=60)
        local = Client([a], rpc=cluster.rpc, deadline=30)
        stores[a] = {
            kv.key: kv.value async for kv in local.scan_all(prefix=KEY_PREFIX, read="serializable")
        }
    return stores


def _final_reads(history: list[Operation]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for op in history:
        if op.client == -1 and op.output is not None:
            out[op.key] = op.output
    return out


async def run_soak(opts: SoakOptions, progress: bool = False) -> SoakReport:
    """Run one soak (see the module docstring); the report says whether it held."""
    rng = random.Random(opts.seed)
    base = opts.base or Path(tempfile.mkdtemp(prefix=f"pyjraft-soak-{opts.seed}-"))
    rep = SoakReport(opts.seed, base=str(base))
    node_args = ["--snapshot-every", str(opts.snapshot_every)]
    node_args += ["--snapshot-log-margin", str(max(1, opts.snapshot_every // 4))]
    cluster = KvProcessCluster(
        base, opts.nodes, election_timeout_ms=opts.election_timeout_ms, node_args=node_args
    )
    started = time.monotonic()
    try:
        cluster.start_all()
        await cluster.wait_leader(timeout=60)
        kv = Client(cluster.addrs, rpc=cluster.rpc, timeout=1.0, deadline=5.0,
                    rng=random.Random(rng.random()))  # fmt: skip
        clients = _Clients(kv, opts, rng, rep)
        stop_at = time.monotonic() + opts.duration
        tasks = [asyncio.ensure_future(clients.run(i)) for i in range(opts.clients)]
        admin = AdminClient(cluster.addrs, group=cluster.group, rpc=cluster.rpc,
                            change_timeout=30.0, rng=random.Random(rng.random()))  # fmt: skip
        faults = asyncio.ensure_future(_faults(cluster, opts, rng, rep, stop_at, admin))
        while time.monotonic() < stop_at:
            await asyncio.sleep(min(5.0, max(0.0, stop_at - time.monotonic())))
            if progress:
                done = sum(rep.operations.values())
                print(f"soak seed={opts.seed}: {done} ops, faults {dict(rep.faults)}",
                      file=sys.stderr, flush=True)  # fmt: skip
        await faults
        clients.stop.set()
        await asyncio.gather(*tasks)
        stores = await _heal_and_read(cluster, clients, rep)
        rep.seconds = time.monotonic() - started
        results: list[KeyResult] = await asyncio.to_thread(check_history, clients.history)
        rep.keys_checked = len(results)
        rep.not_linearizable = [r.key.decode() for r in results if r.ok is False]
        rep.undecided = [r.key.decode() for r in results if r.ok is None]
        first = next(iter(stores.values()))
        rep.replicas_identical = all(s == first for s in stores.values())
        rep.stores_match_final_reads = first == _final_reads(clients.history)
        if not rep.ok:
            _dump(base / "history.jsonl", clients.history)
        await kv.close()
        await admin.close()
    except BaseException:
        rep.base = str(base)
        raise
    finally:
        for proc in cluster.procs.values():  # a paused process must see its SIGTERM
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
        cluster.stop_all()
        await cluster.close()
    if rep.ok and opts.base is None:
        shutil.rmtree(base, ignore_errors=True)
    return rep


def _dump(path: Path, history: list[Operation]) -> None:
    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode(errors="replace")

    with open(path, "w") as f:
        for op in history:
            out = text(op.output) if isinstance(op.output, bytes) else op.output
            f.write(json.dumps({
                "kind": op.kind, "key": text(op.key), "value": text(op.value),
                "expect": text(op.expect), "output": out, "called": op.called,
                "returned": op.returned, "client": op.client,
            }) + "\n")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m pyjraft.testing.soak``; exit status 1 on any violation."""
    p = argparse.ArgumentParser(prog="python -m pyjraft.testing.soak", description=__doc__)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    p.add_argument("--clients", type=int, default=8, help="client tasks")
    p.add_argument("--keys", type=int, default=8, help="keys they share")
    p.add_argument("--election-timeout-ms", type=int, default=600)
    p.add_argument("--snapshot-every", type=int, default=300, help="entries between snapshots")
    p.add_argument("--faults", default=",".join(FAULTS), help="fault kinds to draw from")
    p.add_argument(
        "--read",
        choices=("linearizable", "lease", "serializable"),
        default="linearizable",
        help="how gets read (serializable may be stale: the check should fail)",
    )
    p.add_argument("--base", type=Path, default=None, help="where data and logs go")
    a = p.parse_args(argv)
    kinds = tuple(k for k in a.faults.split(",") if k)
    if not kinds or any(k not in FAULTS for k in kinds):
        p.error(f"--faults: choose from {','.join(FAULTS)}")
    opts = SoakOptions(
        duration=a.duration, seed=a.seed, nodes=a.nodes, clients=a.clients, keys=a.keys,
        election_timeout_ms=a.election_timeout_ms, snapshot_every=a.snapshot_every,
        faults=kinds, read=a.read, base=a.base,
    )  # fmt: skip
    rep = asyncio.run(run_soak(opts, progress=True))
    if not rep.ok:
        print(f"SOAK VIOLATION seed={rep.seed}: data and history.jsonl in {rep.base}",
              file=sys.stderr)  # fmt: skip
    print(json.dumps(rep.as_dict()))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
