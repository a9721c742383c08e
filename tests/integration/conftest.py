"""Fixtures of the integration tests: a 3-process counter cluster, always reaped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import CounterCluster, env_seed


@pytest.fixture
def seed() -> int:
    """This test's seed; printed so a failure report shows it."""
    s = env_seed()
    print(f"PYJRAFT_TEST_SEED={s}")
    return s


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[CounterCluster]:
    """Three started replicas; SIGKILLed and reaped at teardown, even on failure."""
    c = CounterCluster(tmp_path)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()
        print(c.logs(15))
