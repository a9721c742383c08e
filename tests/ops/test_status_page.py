"""The /status page as a person sees it: loaded in headless Chromium (Debian's
``chromium``), checked by the text it shows and its replication bars."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from pyjraft.ops import OpsServer
from tests.node.harness import IDS, LocalCluster, run
from tests.ops.browser import dump_dom, screenshot, visible_text

SEED = 23


def test_a_three_node_cluster_as_chromium_renders_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, str, str]:
        # Calm timers: the page is read after the fact, with no election meanwhile.
        async with LocalCluster(SEED, metrics=True, election_timeout_ms=1500, heartbeat_ms=50) as c:
            leader = await c.leader(15)
            for _ in range(30):
                await asyncio.gather(*(leader.apply(b"1") for _ in range(10)))
            follower = next(n for n in c.nodes.values() if n is not leader)
            ops = OpsServer(nodes=list(c.nodes.values()))
            addr = await ops.start("127.0.0.1", 0)
            one = OpsServer(nodes=[follower])
            addr_f = await one.start("127.0.0.1", 0)
            try:
                dom = await dump_dom(f"http://{addr}/status")
                dom_f = await dump_dom(f"http://{addr_f}/status")
                shot = tmp_path / "status.png"
                await screenshot(f"http://{addr}/status?refresh=0", str(shot))
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                assert shot.stat().st_size > 10_000  # a page, not a blank window
            finally:
                await ops.close()
                await one.close()
            return dom, dom_f, leader.id, str(leader.status()["last_index"])

    dom, dom_f, leader_id, last = run(scenario(), timeout=120)
    text = visible_text(dom)
    # One section per group member, the leader's badge among them.
    for nid in IDS:
        assert f"group default · node {nid}" in text, text
    assert f"group default · node {leader_id} LEADER" in text
    assert text.count("FOLLOWER") == 2
    assert f"last index {last}" in text
    assert f"leader {leader_id}" in text
    assert "configuration " + ", ".join(IDS) in text
    # The leader's replication table: a row and a bar per follower.
    rows = [line for line in text.splitlines() if line.split(" ")[0] in IDS]
    assert len(rows) == 2, text
    widths = re.findall(r'class="fill[^"]*" style="display:block;width:([0-9.]+)%"', dom)
    assert len(widths) == 2 and all(90.0 <= float(w) <= 100.0 for w in widths), widths
    assert "election won" in text and "election started" in text
    assert 'http-equiv="refresh"' in dom  # it reloads itself
    # A follower's own page points at the leader for replication progress.
    text_f = visible_text(dom_f)
    assert "FOLLOWER" in text_f
    assert f"Replication progress is shown on the leader ({leader_id})" in text_f
    assert "Recent elections" in text_f
