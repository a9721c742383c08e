"""`LogWriter`: one dedicated thread that writes a leader's log entries, with
group commit across `Ready`s.

With ``NodeOptions.leader_write_thread`` a leader hands each `Ready`'s entries
here and goes on: it keeps stepping messages, sending appends, applying what
commits and producing the next `Ready` while the disk works. Each round of
the thread takes every write queued so far, appends their entries with one
write and makes them durable with one fdatasync, then reports them all done,
in submission order, on the loop. So the disk is kept busy back to back and
the CPU work of the next batch overlaps the fdatasync of this one.

Compared with a `ThreadPoolExecutor` and `run_in_executor`, a plain thread
fed by a `queue.SimpleQueue` saves the executor's locks, its work item and
the chaining of a concurrent future into an asyncio one: one queue put to
start, one `call_soon_threadsafe` to finish.

Other changes to the log (compaction after a snapshot) go through the same
thread (`LogWriter.submit_call`), in order with the writes: the log has one
writer at a time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pyjraft.core.types import Entry

_Job = Sequence[Entry] | Callable[[], None]
_Write = tuple[_Job, "asyncio.Future[None]"] | None


def settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Resolve ``fut`` with ``result`` or ``exc``, unless it is done (cancelled)."""
    if fut.done():
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)


def _END() -> None:
    """Marks the end of a round's jobs (never run)."""


class LogWriter:
    """Writes entries on its own thread, in submission order, several writes per
    fdatasync when they queue up."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        append: Callable[[list[Entry]], None],
        name: str,
    ) -> None:
        """``append(entries)`` makes ``entries`` durable (truncating a conflicting
        suffix first, as a node's write does); it runs on the writer thread."""
        self._loop = loop
        self._append = append
        self._writes: queue.SimpleQueue[_Write] = queue.SimpleQueue()
        self._closed = False
        self.rounds = 0
        """fdatasync rounds so far (each covering one or more writes)."""
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, entries: Sequence[Entry]) -> asyncio.Future[None]:
        """Write ``entries`` after everything submitted before; the future
        resolves (on the loop) once they are durable, or with the error."""
        if self._closed:
            raise RuntimeError("log writer is closed")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._writes.put((entries, fut))
        return fut

    def submit_call(self, fn: Callable[[], None]) -> asyncio.Future[None]:
        """Run ``fn()`` on the writer thread after everything submitted before
        (and before anything submitted after); the future resolves on the loop
        with its outcome, which concerns it alone."""
        if self._closed:
            raise RuntimeError("log writer is closed")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._writes.put((fn, fut))
        return fut

    def close(self) -> None:
        """Finish the writes submitted so far, then stop the thread (blocking)."""
        if not self._closed:
            self._closed = True
            self._writes.put(None)
        self._thread.join()

    def _main(self) -> None:
        call = self._loop.call_soon_threadsafe
        while True:
            first = self._writes.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while True:
                try:
                    nxt = self._writes.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._round(batch, call)
            except RuntimeError:
                return  # the loop is closed: nobody is waiting any more
            if stop:
                return

    def _round(
        self, batch: list[tuple[_Job, asyncio.Future[None]]], call: Callable[..., Any]
    ) -> None:
        """Write ``batch``'s writes, run its calls, in order; settle each."""
        writes: list[tuple[Sequence[Entry], asyncio.Future[None]]] = []
        for job, fut in [*batch, (_END, None)]:
            if not callable(job):
                writes.append((job, fut))  # type: ignore[arg-type]
                continue
            if writes:
                exc: BaseException | None = None
                try:
                    self._write(writes)
                    self.rounds += 1
                except BaseException as e:  # handed to the loop, which decides
                    exc = e
                for _, wfut in writes:
                    call(settle, wfut, None, exc)
                writes = []
            if job is _END:
                return
            exc = None
            try:
                job()
            except BaseException as e:
                exc = e
            call(settle, fut, None, exc)

    def _write(self, batch: list[tuple[Sequence[Entry], asyncio.Future[None]]]) -> None:
        # A leader's writes follow each other (it never rewrites its own log),
        # so they join into one append; anything else is written run by run.
        run: list[Entry] = []
        for entries, _ in batch:
            if not entries:
                continue
            if run and entries[0].index != run[-1].index + 1:
                self._append(run)
                run = []
            run.extend(entries)
        if run:
            self._append(run)
