"""The demo's live view (rich) and its plain-text stand-in when stdout is not a terminal.

`LiveView` redraws a panel four times a second while the demo runs: each
replica's role, term and applied index, the workload's operations,
throughput and latency, and the demo's recent events. Without a terminal
(a pipe, CI) it prints each event as a line and a progress line every two
seconds instead, so logs stay readable.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pyjraft.demo.workload import MixedWorkload


class LiveView:
    """What the demo shows while it runs; `event` for milestones, `update` for state."""

    def __init__(self, title: str, workload: MixedWorkload | None = None) -> None:
        self.console = Console()
        if not self.console.is_terminal:
            # A pipe or a log file: lines as long as they are, never wrapped.
            self.console = Console(soft_wrap=True)
        self.title = title
        self.workload = workload
        self.t0 = time.monotonic()
        self.phase = "starting"
        self.nodes: dict[str, dict[str, Any] | None] = {}
        self.down: set[str] = set()
        self.events: list[str] = []
        self._live: Live | None = None
        self._last_plain = 0.0

    @property
    def interactive(self) -> bool:
        """Whether the view redraws in place (stdout is a terminal)."""
        return self.console.is_terminal

    def start(self) -> None:
        """Start drawing."""
        if self.interactive:
            self._live = Live(
                get_renderable=self._render, console=self.console, refresh_per_second=4
            )
            self._live.start()
        else:
            self.console.print(f"==> {self.title}", highlight=False)

    def stop(self) -> None:
        """Stop drawing (the last frame stays on screen)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def elapsed(self) -> float:
        """Seconds since the view was made."""
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        """A milestone: shown in the panel, or printed as its own line."""
        line = f"{self.elapsed():6.2f}s  {text}"
        self.events.append(line)
        if self._live is None:
            self.console.print(f"==> {line}", highlight=False)

    def update(self, phase: str | None = None, nodes: dict[str, Any] | None = None) -> None:
        """New state; without a terminal, a progress line every two seconds."""
        if phase is not None:
            self.phase = phase
        if nodes is not None:
            self.nodes = nodes
        now = time.monotonic()
        if self._live is None and self.workload is not None and now - self._last_plain >= 2.0:
            self._last_plain = now
            self.console.print(f"    {self._progress_line()}", highlight=False)

    def _progress_line(self) -> str:
        w = self.workload
        if w is None:
            return ""
        p50, p99 = w.latency_ms()
        lat = f"p50 {p50:.2f} ms  p99 {p99:.2f} ms" if w.ops else "p50 - ms  p99 - ms"
        return (
            f"{self.elapsed():6.2f}s  {w.ops:,} ops ({w.puts.ok:,} writes, {w.gets.ok:,} reads)"
            f"  {w.rate():,.0f} ops/s  {lat}"
            f"  errors {w.puts.errors + w.gets.errors}  unknown {len(w.unknown)}"
            f"  stale reads {len(w.stale_reads)}"
        )

    def _render(self) -> Panel:
        nodes = Table(expand=True, box=None, pad_edge=False)
        for col in ("replica", "role", "term", "applied", "keys", "state"):
            nodes.add_column(col)
        for addr, st in self.nodes.items():
            if addr in self.down:
                nodes.add_row(addr, "-", "-", "-", "-", Text("killed", style="bold red"))
            elif st is None:
                nodes.add_row(addr, "?", "-", "-", "-", Text("not answering", style="yellow"))
            else:
                role = st["role"]
                style = "bold green" if role == "leader" else ""
                nodes.add_row(
                    addr,
                    Text(role, style=style),
                    str(st["term"]),
                    f"{st['applied_index']:,}",
                    f"{st.get('kv', {}).get('keys', 0):,}",
                    "running",
                )
        parts: list[Any] = [
            Text(f"phase: {self.phase}   ({self.elapsed():.1f} s)", style="bold"),
            nodes,
        ]
        w = self.workload
        if w is not None:
            p50, p99 = w.latency_ms()
            figures = Table.grid(padding=(0, 2))
            figures.add_column(style="bold")
            figures.add_column()
            figures.add_row(
                "operations", f"{w.ops:,}  ({w.puts.ok:,} writes, {w.gets.ok:,} linearizable reads)"
            )
            figures.add_row("throughput", f"{w.rate():,.0f} ops/s")
            figures.add_row("latency", f"p50 {p50:.2f} ms   p99 {p99:.2f} ms" if w.ops else "-")
            bad = len(w.stale_reads)
            figures.add_row(
                "outcomes",
                Text.assemble(
                    f"{len(w.unknown)} unknown (in flight at a crash), "
                    f"{w.puts.errors + w.gets.errors} failed, ",
                    (f"{bad} stale reads", "bold red" if bad else "green"),
                ),
            )
            parts.append(Panel(figures, title="load", border_style="dim"))
        parts.append(Text("\n".join(self.events[-8:]), style="dim"))
        return Panel(Group(*parts), title=self.title, border_style="cyan")


__all__ = ["LiveView"]
