"""Sampling profiles of benchmark processes with py-spy (``pip install py-spy``).

`Recording` runs ``py-spy record --format raw`` on a pid for a fixed time
(collapsed stacks: one line per distinct stack, frames separated by ``;``,
then the sample count); `summarize_stacks` turns such a file into the
frames where the samples were (self time) and the share of samples under
chosen frames (inclusive time), which is what a report can print.

Two modes. ``cpu`` takes only samples holding the GIL (``--gil``): in a
Python process they are its CPU, and idle waits drop out; it shows what
limits a process that is busy. ``wall`` takes every sample of the main
thread, idle ones included (``--idle``): the event loop waiting for input
(its ``select``), blocking system calls (an ``fdatasync`` on the loop) and
CPU, in proportion to the wall-clock time they take; it shows where the time
of a process that is *not* busy goes (one request at a time).
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def pyspy_binary() -> str | None:
    """py-spy beside this interpreter or on the PATH, or None."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.access(beside, os.X_OK) else shutil.which("py-spy")


class Recording:
    """One ``py-spy record`` of ``pid`` for ``seconds``, into ``out`` (raw format)."""

    def __init__(self, binary: str, pid: int, seconds: float, out: Path, mode: str = "cpu") -> None:
        self.out = out
        self.mode = mode
        cmd = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        cmd += ["--rate", "200", "--nonblocking", "--format", "raw"]
        cmd.append("--gil" if mode == "cpu" else "--idle")
        cmd += ["--output", str(out)]
        self._log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 (closed in wait)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait for the recording to end; whether it wrote its file."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self._log.close()
        return self.out.exists() and self.out.stat().st_size > 0


def _frame_name(frame: str) -> str:
    # py-spy's raw frames read "function (path/to/module.py:123)".
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    for anchor in ("pyjraft", "site-packages", "lib"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + (anchor != "pyjraft") :]
            break
    short = "/".join(parts[-3:])
    return f"{name} ({short})" if short else name


MAIN_THREAD_ROOT = "_run_module_as_main"
"""The outermost frame of a ``python -m`` process's main thread."""


def summarize_stacks(
    raw: Path,
    top: int = 12,
    groups: dict[str, tuple[str, ...]] | None = None,
    main_thread_only: bool = False,
) -> dict[str, Any]:
    """The ``top`` frames by self samples, and for each of ``groups`` (a name
    and substrings of frame names; ``=name``: of the innermost frame only) the
    share of samples with any such frame on the stack; with
    ``main_thread_only``, of the main thread's samples."""
    self_count: collections.Counter[str] = collections.Counter()
    group_count: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        if main_thread_only and not frames[0].startswith(MAIN_THREAD_ROOT):
            continue
        total += count
        self_count[_frame_name(frames[-1])] += count
        for g, needles in (groups or {}).items():
            if any(
                needle[1:] in frames[-1] if needle.startswith("=") else needle in f
                for f in frames
                for needle in needles
            ):
                group_count[g] += count
    pct = (lambda c: round(100.0 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self": [[name, pct(c)] for name, c in self_count.most_common(top)],
        "inclusive": {g: pct(group_count[g]) for g in groups or {}},
    }


__all__ = ["MAIN_THREAD_ROOT", "Recording", "pyspy_binary", "summarize_stacks"]
