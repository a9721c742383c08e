"""`StorageWriter`: one dedicated thread that runs storage writes for a node.

A leader's log write (and its fdatasync) runs here so that the event loop
keeps replicating and taking proposals meanwhile: the next `Ready` then
carries everything that arrived during the write (group commit). Compared
with a `ThreadPoolExecutor` and `run_in_executor`, a plain thread fed by a
`queue.SimpleQueue` saves the executor's locks, its work item and the
chaining of a concurrent future into an asyncio one: one queue put to
start, one `call_soon_threadsafe` to finish.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

_Job = tuple[Callable[[], None], "asyncio.Future[None]"] | None


def settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Resolve ``fut`` with ``result`` or ``exc``, unless it is done (cancelled)."""
    if fut.done():
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)


class StorageWriter:
    """Runs one job at a time, in submission order, on its own thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> asyncio.Future[None]:
        """Run ``job()`` on the writer thread; the future resolves (on the
        loop) when it returned or raised."""
        if self._closed:
            raise RuntimeError("storage writer is closed")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._jobs.put((job, fut))
        return fut

    def close(self) -> None:
        """Finish the jobs submitted so far, then stop the thread (blocking)."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        self._thread.join()

    def _main(self) -> None:
        call = self._loop.call_soon_threadsafe
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, fut = item
            exc: BaseException | None = None
            try:
                job()
            except BaseException as e:  # handed to the loop, which decides
                exc = e
            try:
                call(settle, fut, None, exc)
            except RuntimeError:
                # The loop is closed: nobody is waiting any more.
                return
