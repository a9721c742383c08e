"""Benchmark: apply throughput of the KV state machine, by LMDB sync setting.

Feeds `pyjraft.kv.KvStateMachine.on_apply` batches of put commands (what a
node hands it, yielding to the event loop between two, as the node does) and
reports entries/s and the time per batch, for:

* what the server uses: ``sync=True, metasync=False`` (one fdatasync per
  commit), committing on a 100 ms timer;
* the same, committing after every apply batch (``--commit-delay-ms 0``);
* ``metasync=True`` (LMDB's default: two fdatasyncs per commit), per batch;
* ``sync=False`` (no fdatasync), for reference only: not offered, a power
  failure could corrupt the store.

Batch sizes model a node at concurrency 1 (1 entry per apply), moderate load
and a busy leader. The data directory is on the disk that holds ``--dir``.

    python benchmarks/kv_apply.py [--entries 20000] [--batches 1,16,256] [--dir DIR]

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

from pyjraft.core.types import Entry
from pyjraft.kv import KvStateMachine
from pyjraft.kv import store as kv_store
from pyjraft.kv.protocol import FORMAT, pack_command

_USED = {"sync": True, "metasync": False, "writemap": False}
SETTINGS: dict[str, tuple[dict[str, bool], float]] = {
    "nometasync, commit 100ms (used)": (_USED, 0.1),
    "nometasync, commit per batch": (_USED, 0.0),
    "metasync, commit per batch": ({"sync": True, "metasync": True, "writemap": False}, 0.0),
    "nosync (unsafe, reference)": ({"sync": False, "metasync": False, "writemap": False}, 0.0),
}


async def measure(
    base: str, setting: dict[str, bool], delay: float, batch: int, n: int, payload: int
) -> float:
    path = tempfile.mkdtemp(dir=base)
    saved = dict(kv_store.LMDB_DURABILITY)
    kv_store.LMDB_DURABILITY.update(setting)
    try:
        m = KvStateMachine(path, commit_delay=delay)
    finally:
        kv_store.LMDB_DURABILITY.clear()
        kv_store.LMDB_DURABILITY.update(saved)
    value = os.urandom(payload)
    entries = [
        Entry(1, i + 1, 0, pack_command((FORMAT, "put", b"key%08d" % (i * 7919 % n), value)))
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        m.on_apply(entries[i : i + batch])
        await asyncio.sleep(0)  # as between two Readies: the commit timer may run
    m.flush()
    elapsed = time.perf_counter() - t0
    assert m.last_applied_index() == n
    m.close()
    shutil.rmtree(path)
    return n / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=20_000)
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--payload", type=int, default=100)
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    base = tempfile.mkdtemp(prefix="pyjraft-kv-apply-", dir=args.dir)
    results = []
    try:
        for name, (setting, delay) in SETTINGS.items():
            for batch in (int(b) for b in args.batches.split(",")):
                slow = batch == 1 and setting["sync"] and not delay
                n = min(args.entries, 2000) if slow else args.entries
                rate = asyncio.run(measure(base, setting, delay, batch, n, args.payload))
                results.append({"setting": name, "batch": batch, "entries_per_s": round(rate)})
                print(
                    f"{name:>32}  batch {batch:>4}: {rate:>9.0f} entries/s "
                    f"({1e3 * batch / rate:.3f} ms per batch)",
                    flush=True,
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({"payload": args.payload, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
