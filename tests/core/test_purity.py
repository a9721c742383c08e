"""The core is sans-IO: it imports nothing of ours but itself, and no IO modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pyjraft.core

CORE = Path(pyjraft.core.__file__).parent
FORBIDDEN = {"asyncio", "socket", "selectors", "threading", "time", "os", "io", "ssl", "signal"}


def test_core_modules_import_no_io_and_nothing_outside_the_core() -> None:
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in FORBIDDEN or (top == "pyjraft" and not name.startswith("pyjraft.core")):
                    offenders.append(f"{path.name}: {name}")
    assert not offenders, offenders


def test_importing_the_core_loads_no_event_loop_or_sockets() -> None:
    code = (
        "import sys, pyjraft.core; "
        "print(sorted(m for m in ('asyncio', 'socket', 'selectors', 'threading') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
