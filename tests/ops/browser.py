"""Headless Chromium for the status page tests: render a URL as a person's
browser would and give back the DOM it built, or a screenshot."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from html.parser import HTMLParser

CHROMIUM = os.environ.get("PYJRAFT_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def chromium() -> str:
    """The browser's path; fails (not skips) when it is missing: scripts/test.sh
    installs Debian's ``chromium``."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    assert path, f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test.sh does)"
    return path


async def _run(*args: str, timeout: float = 60.0) -> bytes:
    with tempfile.TemporaryDirectory(prefix="pyjraft-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            chromium(),
            *FLAGS,
            f"--user-data-dir={profile}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        return out


async def dump_dom(url: str) -> str:
    """The DOM Chromium built for ``url``, serialized."""
    return (await _run("--dump-dom", url)).decode()


async def screenshot(url: str, path: str, size: str = "1100,900") -> None:
    """A PNG of ``url`` as rendered in a ``size`` window."""
    await _run(f"--screenshot={path}", f"--window-size={size}", url)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "title"):
            self._skip += 1
        elif tag in ("tr", "p", "h1", "h2", "h3", "section", "table"):
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    """The text a person reads on the page, one line per row or heading,
    whitespace collapsed."""
    p = _Text()
    p.feed(html)
    lines = ("".join(p.parts)).split("\n")
    return "\n".join(" ".join(line.split()) for line in lines if line.strip())
