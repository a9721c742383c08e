"""`pyjraft.ops.logs`: the three formats and per-logger levels."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pyjraft.ops.logs import make_formatter, parse_log_levels, setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("pyjraft.transport", "pyjraft.node", "x.y")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)


def _record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("pyjraft.node", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_has_the_node_fields_first_and_every_extra() -> None:
    fmt = make_formatter("json", {"node": "static:1"})
    line = fmt.format(_record(group="g", node="n1:1", term=3, event="x", peers=["a", "b"]))
    obj = json.loads(line)
    assert list(obj)[:8] == ["ts", "level", "logger", "group", "node", "term", "event", "msg"]
    assert obj["node"] == "n1:1"  # the record's own beats the static default
    assert obj["msg"] == "hello you"
    assert obj["peers"] == ["a", "b"]
    assert obj["ts"].endswith("Z")


def test_static_fields_fill_in_what_a_record_lacks() -> None:
    obj = json.loads(make_formatter("json", {"node": "static:1"}).format(_record()))
    assert obj["node"] == "static:1"


def test_kv_quotes_values_with_spaces_only() -> None:
    line = make_formatter("kv").format(_record(group="g", term=3, why="two words", ok=True))
    assert 'msg="hello you"' in line
    assert "group=g" in line and "term=3" in line
    assert 'why="two words"' in line and "ok=true" in line


def test_text_shows_group_node_term_in_brackets() -> None:
    line = make_formatter("text").format(_record(group="g", node="n1:1", term=3, event="e"))
    assert "[g n1:1 t3] hello you (event=e)" in line


def test_exceptions_are_kept() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: bad" in json.loads(make_formatter("json").format(rec))["exc"]
    assert "ValueError: bad" in make_formatter("text").format(rec)


def test_parse_log_levels() -> None:
    root, per = parse_log_levels("WARNING, pyjraft.transport=debug,x.y=ERROR")
    assert root == logging.WARNING
    assert per == {"pyjraft.transport": logging.DEBUG, "x.y": logging.ERROR}
    assert parse_log_levels("pyjraft.node=INFO") == (None, {"pyjraft.node": logging.INFO})
    for bad in ("LOUD", "x=LOUD", "=INFO"):
        with pytest.raises(ValueError):
            parse_log_levels(bad)
    with pytest.raises(ValueError):
        make_formatter("xml")


def test_setup_logging_sets_levels_per_logger_and_replaces_its_handler() -> None:
    out = io.StringIO()
    setup_logging("kv", "WARNING,pyjraft.transport=DEBUG", stream=out)
    setup_logging("json", "WARNING,pyjraft.transport=DEBUG", stream=out)
    logging.getLogger("pyjraft.transport").debug("shown")
    logging.getLogger("pyjraft.node").info("hidden")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # one handler, not two
    assert json.loads(lines[0])["msg"] == "shown"
