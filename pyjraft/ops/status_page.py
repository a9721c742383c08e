"""The ``/status`` page: a process's raft groups as HTML (braft's ``/raft_stat``).

`render_status_page` turns the value `pyjraft.ops.server.status_snapshot`
builds (the same one ``/status.json`` serves) into one self-contained page:
no script, no external asset, a ``<meta http-equiv=refresh>`` to reload it.
For each group this process hosts it shows the role (a coloured badge), term,
leader, configuration, first/last/commit/applied index; on a leader, each
peer's replication progress as a bar (its match index over the leader's last
index) with its lag and in-flight messages; and the recent elections. Every
value is HTML-escaped: node ids and group names come from configuration and
peers, not from us.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 .3em} h2{font-size:17px;margin:1.2em 0 .4em}
h3{font-size:14px;margin:.9em 0 .3em;color:#555}
.group{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
table{border-collapse:collapse} td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
th{color:#666;font-weight:600} .num{text-align:right;font-variant-numeric:tabular-nums}
.role{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px}
.role-leader{background:#2a7d2a} .role-follower{background:#3465a4}
.role-candidate,.role-pre_candidate{background:#c17d11} .role-learner{background:#75507b}
.role-error{background:#c00} .role-unknown{background:#888}
.bar{display:inline-block;width:220px;height:12px;background:#e6e6e6;border-radius:3px;
 vertical-align:middle;overflow:hidden} .fill{height:100%;background:#4e9a06}
.fill.behind{background:#c17d11} .meta{color:#666} .err{color:#c00;font-weight:600}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _when(ts: float, now: float) -> str:
    stamp = time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"
    return f"{stamp} ({max(0.0, now - ts):.1f} s ago)"


def _rows(pairs: Iterable[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _bar(fraction: float, behind: bool) -> str:
    # Rounded down: a follower one entry behind is not shown as 100%.
    pct = math.floor(max(0.0, min(1.0, fraction)) * 1000) / 10
    cls = "fill behind" if behind else "fill"
    return (
        f'<span class="bar" title="{pct:.1f}%"><span class="{cls}" '
        f'style="display:block;width:{pct:.1f}%"></span></span> {pct:.1f}%'
    )


def _peers_table(st: Mapping[str, Any]) -> str:
    peers: Mapping[str, Mapping[str, Any]] = st.get("peers") or {}
    if not peers:
        if st.get("role") == "leader":
            return "<p class=meta>No other members.</p>"
        leader = st.get("leader") or "unknown"
        return f"<p class=meta>Replication progress is shown on the leader ({_e(leader)}).</p>"
    last = int(st.get("last_index") or 0)
    head = (
        "<tr><th>peer</th><th>state</th><th class=num>match</th><th class=num>next</th>"
        "<th class=num>lag</th><th class=num>in flight</th><th>replicated</th></tr>"
    )
    rows = []
    for peer, pr in sorted(peers.items()):
        match = int(pr.get("match") or 0)
        lag = int(pr.get("lag", last - match))
        frac = 1.0 if last == 0 else match / last
        state = _e(pr.get("state"))
        if pr.get("active") is False:
            state += " <span class=err>(inactive)</span>"
        rows.append(
            f"<tr class=peer><td>{_e(peer)}</td><td>{state}</td><td class=num>{match}</td>"
            f"<td class=num>{_e(pr.get('next'))}</td><td class=num>{lag}</td>"
            f"<td class=num>{_e(pr.get('inflight', ''))}</td><td>{_bar(frac, lag > 0)}</td></tr>"
        )
    return f"<table class=peers>{head}{''.join(rows)}</table>"


def _elections_table(events: list[Mapping[str, Any]], now: float) -> str:
    if not events:
        return "<p class=meta>No election since this node started.</p>"
    head = "<tr><th>when (UTC)</th><th>event</th><th class=num>term</th><th>detail</th></tr>"
    rows = []
    for ev in reversed(events):
        detail = ", ".join(f"{k}={v}" for k, v in ev.items() if k not in ("time", "event", "term"))
        rows.append(
            f"<tr class=election><td>{_e(_when(float(ev['time']), now))}</td>"
            f"<td>{_e(ev['event'].replace('_', ' '))}</td><td class=num>{_e(ev['term'])}</td>"
            f"<td>{_e(detail)}</td></tr>"
        )
    return f"<table class=elections>{head}{''.join(rows)}</table>"


def _group_section(g: Mapping[str, Any], now: float) -> str:
    st: Mapping[str, Any] = g["status"]
    role = str(st.get("role") or "unknown")
    badge = f'<span class="role role-{_e(role)}">{_e(role.upper())}</span>'
    conf = ", ".join(st.get("voters") or [])
    learners = ", ".join(st.get("learners") or [])
    contact = st.get("leader_contact_ms")
    facts: list[tuple[str, Any]] = [
        ("state", _e(st.get("state"))),
        ("term", _e(st.get("term"))),
        ("leader", _e(st.get("leader") or "(none known)")),
        ("last heard from leader", "" if contact is None else f"{float(contact):.0f} ms ago"),
        ("voted for", _e(st.get("vote") or "-")),
        ("configuration", _e(conf) + (f" (learners: {_e(learners)})" if learners else "")),
        ("first index", _e(st.get("first_index"))),
        ("last index", _e(st.get("last_index"))),
        ("commit index", _e(st.get("commit_index"))),
        ("applied index", _e(st.get("applied_index"))),
        ("pending proposals", _e(st.get("pending"))),
    ]
    if st.get("error"):
        facts.insert(0, ("error", f"<span class=err>{_e(st['error'])}</span>"))
    lat = g.get("latency") or {}
    if lat:
        facts.append(
            (
                "latency (p50 / p99 bucket)",
                _e(", ".join(f"{k} {v[0]} / {v[1]} ms" for k, v in lat.items())),
            )
        )
    return (
        f'<section class=group data-group="{_e(st.get("group"))}">'
        f"<h2>group {_e(st.get('group'))} &middot; node {_e(st.get('id'))} {badge}</h2>"
        f"<table class=facts>{_rows(facts)}</table>"
        f"<h3>Replication</h3>{_peers_table(st)}"
        f"<h3>Recent elections</h3>{_elections_table(list(g.get('elections') or []), now)}"
        "</section>"
    )


def render_status_page(snapshot: Mapping[str, Any], refresh_s: float = 2.0) -> str:
    """The HTML page for ``snapshot`` (see the module docstring); ``refresh_s``
    0 turns the self-refresh off."""
    now = float(snapshot.get("time") or time.time())
    proc: Mapping[str, Any] = snapshot.get("process") or {}
    groups: list[Mapping[str, Any]] = list(snapshot.get("groups") or [])
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s > 0 else ""
    lag = proc.get("loop_lag_max_ms")
    info = [
        ("endpoint", _e(proc.get("endpoint") or "-")),
        ("pid", _e(proc.get("pid"))),
        ("up", f"{float(proc.get('uptime_s') or 0):.0f} s"),
        ("event loop lag (max, recent)", "-" if lag is None else f"{float(lag):.1f} ms"),
        ("refreshes", f"every {refresh_s:g} s" if refresh_s > 0 else "off"),
    ]
    body = "".join(_group_section(g, now) for g in groups) or (
        "<p class=meta>This process hosts no raft group.</p>"
    )
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"{refresh}<title>pyjraft status</title><style>{_CSS}</style></head><body>"
        f"<h1>pyjraft status</h1><table class=process>{_rows(info)}</table>"
        f"{body}<p class=meta>Also: <a href=status.json>status.json</a> "
        "<a href=metrics>metrics</a> <a href=health>health</a> "
        "<a href=describe.json>describe.json</a></p></body></html>"
    )
