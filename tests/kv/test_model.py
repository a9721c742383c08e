"""Random command sequences against a plain-Python model of the store, and two
replicas fed the same log: same results, same state, same history."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.types import prefix_end
from tests.kv.helpers import Feeder, dump

KEYS = [b"a", b"a/1", b"a/2", b"b", b"b/x", b"c", b"\xff"]


class Model:
    """The store's semantics, written the obvious way."""

    def __init__(self) -> None:
        self.kv: dict[bytes, list[Any]] = {}  # key -> [value, create, mod, version]
        self.revision = 0
        self.compact = 0
        self.events: list[tuple[Any, ...]] = []
        self._rev = 0
        self._sub = 0

    def wire(self, k: bytes) -> list[Any] | None:
        if k not in self.kv:
            return None
        v, c, m, ver = self.kv[k]
        return [k, v, c, m, ver]

    def _bump(self) -> int:
        if not self._rev:
            self.revision += 1
            self._rev = self.revision
            self._sub = 0
        return self._rev

    def put(self, k: bytes, v: bytes) -> list[Any] | None:
        prev = self.wire(k)
        rev = self._bump()
        if prev is None:
            self.kv[k] = [v, rev, rev, 1]
        else:
            self.kv[k] = [v, prev[2], rev, prev[4] + 1]
        _, c, _, ver = self.kv[k]
        self.events.append((0, k, v, c, rev, ver))
        return prev

    def delete(self, k: bytes) -> list[Any] | None:
        prev = self.wire(k)
        if prev is not None:
            rev = self._bump()
            del self.kv[k]
            self.events.append((1, k, b"", 0, rev, 0))
        return prev

    def in_range(self, start: bytes, end: bytes | None) -> list[bytes]:
        return sorted(k for k in self.kv if k >= start and (end is None or k < end))

    def scan(self, start: bytes, end: bytes | None, limit: int, reverse: bool) -> dict[str, Any]:
        keys = self.in_range(start, end)
        if reverse:
            keys.reverse()
        return {"kvs": [self.wire(k) for k in keys[:limit]], "more": len(keys) > limit}

    def holds(self, c: list[Any]) -> bool:
        key, target, op, operand = c
        w = self.wire(key)
        if target == "value":
            a = None if w is None else w[1]
            if op in ("<", ">") and (a is None or operand is None):
                return False
        else:
            a = (
                0
                if w is None
                else w[{"create_revision": 2, "mod_revision": 3, "version": 4}[target]]
            )
        if op == "==":
            return bool(a == operand)
        if op == "!=":
            return bool(a != operand)
        return bool(a < operand) if op == "<" else bool(a > operand)

    def apply(self, req: dict[str, Any]) -> Any:
        self._rev = 0
        op = req["op"]
        if op == "put":
            return {"revision": None, "prev": self.put(req["key"], req["value"])}
        if op == "cas":
            w = self.wire(req["key"])
            if "expect_value" in req:
                ok = (w[1] if w else None) == req["expect_value"]
            else:
                ok = (w[3] if w else 0) == req["expect_mod_revision"]
            if ok:
                self.put(req["key"], req["value"])
            return {"succeeded": ok, "revision": None, "prev": w}
        if op == "delete":
            prev = self.delete(req["key"])
            return {"deleted": prev is not None, "revision": None, "prev": prev}
        if op == "delete_range":
            start, end = req["prefix"], prefix_end(req["prefix"])
            keys = self.in_range(start, end)
            for k in keys:
                self.delete(k)
            return {"deleted": len(keys), "revision": None, "prev_kvs": []}
        if op == "txn":
            ok = all(self.holds(c) for c in req["compare"])
            results = []
            for o in req["success"] if ok else req["failure"]:
                if o[0] == "put":
                    results.append({"prev": self.put(o[1], o[2])})
                elif o[0] == "delete":
                    p = self.delete(o[1])
                    results.append({"deleted": p is not None, "prev": p})
                elif o[0] == "get":
                    results.append({"kv": self.wire(o[1])})
                else:
                    results.append(self.scan(o[1], o[2], o[3], o[4]))
            return {"succeeded": ok, "revision": None, "results": results}
        assert op == "compact"
        rev = req["revision"]
        if rev > self.revision:
            return "error"
        self.compact = max(self.compact, rev)
        self.events = [e for e in self.events if e[4] >= self.compact]
        return {"revision": None, "compact_revision": self.compact}


def random_request(rng: random.Random, model: Model) -> dict[str, Any]:
    k = rng.choice(KEYS)
    v = rng.choice([b"", b"1", b"2", b"x" * rng.randrange(50)])
    kind = rng.choice(["put", "put", "put", "cas_v", "cas_r", "del", "range", "txn", "compact"])
    if kind == "put":
        return {"op": "put", "key": k, "value": v}
    if kind == "cas_v":
        w = model.wire(k)
        expect = rng.choice([None, b"1", w[1] if w else b"2"])
        return {"op": "cas", "key": k, "value": v, "expect_value": expect}
    if kind == "cas_r":
        w = model.wire(k)
        expect = rng.choice([0, model.revision, w[3] if w else 1])
        return {"op": "cas", "key": k, "value": v, "expect_mod_revision": expect}
    if kind == "del":
        return {"op": "delete", "key": k}
    if kind == "range":
        return {"op": "delete_range", "prefix": rng.choice([b"a", b"a/", b"b", b"\xff", b"zz"])}
    if kind == "compact":
        return {"op": "compact", "revision": rng.randrange(1, model.revision + 3)}
    targets = [("value", v), ("version", rng.randrange(3)), ("mod_revision", model.revision)]
    target, operand = rng.choice(targets)
    compare = [[k, target, rng.choice(["==", "!=", "<", ">"]), operand]]

    def ops() -> list[Any]:
        out: list[Any] = []
        for _ in range(rng.randrange(4)):
            kk = rng.choice(KEYS)
            out.append(
                rng.choice(
                    [
                        ["put", kk, v],
                        ["delete", kk],
                        ["get", kk],
                        ["scan", kk, rng.choice([None, b"b"]), rng.randrange(1, 4), False, False],
                        ["scan", b"", kk, 2, True, False],
                    ]
                )
            )
        return out

    return {"op": "txn", "compare": compare, "success": ops(), "failure": ops()}


def crash(m: KvStateMachine, path: str) -> KvStateMachine:
    """What a process crash leaves: the files as of the last commit."""
    m.store.discard()
    m.store.env.close()
    return KvStateMachine(path, commit_delay=m.commit_delay)


@pytest.mark.parametrize("seed", range(8))
def test_random_commands_match_the_model_and_replicas_agree(tmp_path: Path, seed: int) -> None:
    """Replica ``a`` commits every batch; ``b`` commits on a timer (flushed at
    random points here) and crashes now and then, losing what it had not
    committed, and catches up by replaying the log after its durable index."""
    rng = random.Random(seed)
    a = KvStateMachine(str(tmp_path / "a"))
    b_path = str(tmp_path / "b")
    fa = Feeder(a)
    model = Model()
    log: list[Any] = []

    async def main() -> None:
        b = KvStateMachine(b_path, commit_delay=3600)
        fb = Feeder(b)
        crashes = 0
        try:
            for step in range(60):
                batch = [random_request(rng, model) for _ in range(rng.randrange(1, 6))]
                entries = fa.entries(*batch)
                assert fb.entries(*batch) == entries
                log.extend(entries)
                ra = a.on_apply(entries)
                rb = b.on_apply(entries)
                assert ra == rb, f"seed {seed} step {step}"
                for req, got in zip(batch, ra, strict=True):
                    want = model.apply(req)
                    if want == "error":
                        assert got["error"] == "future_revision", (seed, step, req)
                        continue
                    assert got["revision"] == model.revision, (seed, step, req, got)
                    got = {**got, "revision": None}
                    assert got == want, (seed, step, req)
                roll = rng.random()
                if roll < 0.2:
                    b.flush()
                elif roll < 0.3:
                    b = crash(b, b_path)
                    crashes += 1
                    replay = [e for e in log if e.index > b.last_applied_index()]
                    b.on_apply(replay)
                da, db = dump(a.store), dump(b.store)
                del da["applied_index"], db["applied_index"]  # b's lags until it commits
                assert da == db, f"seed {seed} step {step}"
                assert da["kvs"] == [tuple(model.wire(k)) for k in sorted(model.kv)]  # type: ignore[arg-type]
                assert da["events"] == model.events
                assert da["compact_revision"] == model.compact
            assert crashes > 0
        finally:
            b.close()

    try:
        asyncio.run(main())
    finally:
        a.close()
