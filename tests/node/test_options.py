"""`NodeOptions` validation."""

from __future__ import annotations

import pytest

from pyjraft.core.errors import ConfigError
from pyjraft.node import NodeOptions
from pyjraft.node.options import _MAX_SEGMENT_BYTES
from pyjraft.storage.segment_log import MAX_SEGMENT_BYTES

PEERS = ("a:1", "b:1", "c:1")


def test_segment_bytes_is_refused_past_what_the_log_can_index() -> None:
    assert _MAX_SEGMENT_BYTES == MAX_SEGMENT_BYTES, "options and storage agree on the cap"
    NodeOptions(id="a:1", peers=PEERS, segment_bytes=MAX_SEGMENT_BYTES)
    with pytest.raises(ConfigError, match="segment_bytes"):
        NodeOptions(id="a:1", peers=PEERS, segment_bytes=MAX_SEGMENT_BYTES + 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("heartbeat_ms", 0),
        ("election_timeout_ms", 150),  # below twice the 100 ms heartbeat
        ("apply_batch_bytes", 0),
        ("max_pending_proposals", 0),
        ("log_cache_bytes", -1),
        ("snapshot_every_entries", -1),
        ("snapshot_interval_s", -0.5),
        ("snapshot_log_margin", -1),
        ("snapshot_keep", 0),
        ("snapshot_chunk_bytes", 1024),
        ("snapshot_chunk_bytes", (16 << 20) + 1),
        ("snapshot_window", 0),
        ("snapshot_window", 65),
        ("snapshot_throttle_bytes", -1),
        ("snapshot_write_bytes_per_s", -1),
        ("snapshot_transfer_timeout_ms", 50),
    ],
)
def test_invalid_values_raise_config_error(field: str, value: int) -> None:
    with pytest.raises(ConfigError):
        NodeOptions(id="a:1", peers=PEERS, **{field: value})


def test_id_must_be_a_peer_and_peers_unique() -> None:
    with pytest.raises(ConfigError):
        NodeOptions(id="d:1", peers=PEERS)
    with pytest.raises(ConfigError):
        NodeOptions(id="a:1", peers=("a:1", "a:1", "b:1"))
