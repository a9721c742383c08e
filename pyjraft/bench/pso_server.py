"""One PySyncObj 0.3.17 cluster member for ``--compare``, run as its own process.

``python -m pyjraft.bench.pso_server --self ADDR --partners A,B [--config NAME] ...``

In-memory journal (PySyncObj's default: nothing touches disk). ``--config``
(see `CONFIGS`):

* ``default``: every `SyncObjConf` field keeps its library default;
* ``tuned``: ``appendEntriesPeriod`` and ``autoTickPeriod`` 0.005 s;
* ``unbatched``: as ``tuned``, plus ``appendEntriesUseBatch=False`` (the
  leader sends each command to the followers at once instead of on the next
  append-entries period: PySyncObj's lowest-latency setting).

Speaks the same JSON lines as `pyjraft.bench.server`: ``status``, ``run``
(writes submitted with ``callback=`` on this node, at most ``concurrency`` in
flight), ``exit``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from pyjraft.bench._proc import emit, set_pdeathsig, start_watchdog

TUNED_PERIOD_S = 0.005
"""``appendEntriesPeriod`` and ``autoTickPeriod`` of the tuned configuration."""


CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "tuned": {"appendEntriesPeriod": TUNED_PERIOD_S, "autoTickPeriod": TUNED_PERIOD_S},
    "unbatched": {
        "appendEntriesPeriod": TUNED_PERIOD_S,
        "autoTickPeriod": TUNED_PERIOD_S,
        "appendEntriesUseBatch": False,
    },
}
"""`SyncObjConf` keyword arguments of each configuration the harness runs."""


def _make_obj(self_addr: str, partners: list[str], config: str) -> Any:
    from pysyncobj import SyncObj, SyncObjConf, replicated

    conf = SyncObjConf(**CONFIGS[config])

    class BenchObj(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(self_addr, partners, conf)
            self.__count = 0
            self.__bytes = 0

        @replicated  # type: ignore[untyped-decorator]
        def incr(self, value: bytes) -> int:
            self.__count += 1
            self.__bytes += len(value)
            return self.__count

        def applied(self) -> int:
            return self.__count

    return BenchObj()


def _run(obj: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from pysyncobj import FAIL_REASON

    payload = os.urandom(int(spec["payload"]))
    conc = max(1, int(spec["concurrency"]))
    end = time.time() + float(spec["run_timeout"])

    def phase(
        n: int, lat: list[int], errors: dict[str, int], duration_s: float | None = None
    ) -> tuple[float, bool]:
        sem = threading.Semaphore(conc)
        done = threading.Event()
        clock = time.perf_counter_ns
        # With a duration, no new write starts after it; those in flight finish.
        stop_at = None if duration_s is None else clock() + int(duration_s * 1e9)
        todo = iter(range(n)) if stop_at is None else itertools.count()
        # Callbacks run on PySyncObj's thread: the last one sets `done` once the
        # number submitted is known (infinite until then).
        state: dict[str, float] = {"done": 0, "submitted": math.inf}

        def cb(t_sub: int, _res: Any, err: Any) -> None:
            t = clock()
            if err == FAIL_REASON.SUCCESS:
                lat.append((t - t_sub) // 1000)
            else:
                errors[str(err)] = errors.get(str(err), 0) + 1
            state["done"] += 1
            sem.release()
            if state["done"] >= state["submitted"]:
                done.set()

        t0 = time.perf_counter()
        submitted = 0
        for _ in todo:
            if not sem.acquire(timeout=max(0.0, end - time.time())):
                return time.perf_counter() - t0, False
            t_sub = clock()
            if stop_at is not None and t_sub >= stop_at:
                sem.release()
                break
            submitted += 1
            obj.incr(payload, callback=lambda r, e, t_sub=t_sub: cb(t_sub, r, e))
        state["submitted"] = submitted
        if state["done"] >= submitted:
            done.set()
        finished = done.wait(max(0.0, end - time.time()))
        return time.perf_counter() - t0, finished

    if spec.get("warmup", 0):
        phase(int(spec["warmup"]), [], {})
    lat: list[int] = []
    errors: dict[str, int] = {}
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(1.0):
            emit({"type": "progress", "done": len(lat) + sum(errors.values())})

    threading.Thread(target=report, daemon=True).start()
    cpu0 = time.process_time()
    duration = spec.get("duration_s")
    elapsed, finished = phase(
        int(spec["ops"]), lat, errors, None if duration is None else float(duration)
    )
    cpu = time.process_time() - cpu0
    stop.set()
    out: dict[str, Any] = {
        "type": "result",
        "lat_us": lat,
        "errors": errors,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
    }
    if not finished:
        out["error"] = "run timed out"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the PySyncObj node process."""
    ap = argparse.ArgumentParser(description="one PySyncObj benchmark node (internal)")
    ap.add_argument("--self", dest="self_addr", required=True)
    ap.add_argument("--partners", required=True)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="default")
    ap.add_argument("--deadline", type=float, required=True)
    args = ap.parse_args(argv)
    set_pdeathsig()
    start_watchdog(args.deadline, os.getppid())
    import pysyncobj.version

    obj = _make_obj(args.self_addr, [p for p in args.partners.split(",") if p], args.config)
    emit({"type": "ready", "addr": args.self_addr, "pid": os.getpid()})
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
        except ValueError:
            continue
        name = cmd.get("cmd")
        if name == "status":
            st = obj.getStatus()
            leader = st.get("leader")
            emit(
                {
                    "type": "status",
                    "addr": args.self_addr,
                    "leader": str(leader) if leader is not None else "",
                    "is_leader": st.get("state") == 2,  # _RAFT_STATE.LEADER
                    "ready": bool(obj.isReady()),
                    "commit_index": st.get("commit_idx"),
                    "applied": obj.applied(),
                    "cpu_s": time.process_time(),
                    "pid": os.getpid(),
                    "version": pysyncobj.version.VERSION,
                    "config": args.config,
                }
            )
        elif name == "run":

            def runner(spec: dict[str, Any] = cmd["spec"]) -> None:
                try:
                    emit(_run(obj, spec))
                except Exception as e:
                    emit({"type": "result", "error": repr(e)})

            threading.Thread(target=runner, daemon=True).start()
        elif name == "exit":
            break
    try:
        obj.destroy()
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
