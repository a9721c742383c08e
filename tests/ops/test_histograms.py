"""`pyjraft.node.metrics`: the per-batch histograms and their bookkeeping."""

from __future__ import annotations

import pytest

from pyjraft.node.metrics import SIZE_BUCKETS, Histogram, NodeMetrics


def test_observations_land_in_the_first_bucket_whose_bound_is_not_below_them() -> None:
    h = Histogram((1.0, 2.0, 5.0))
    for v in (0.5, 1.0, 1.5, 2.0, 4.9, 5.0, 7.0):
        h.observe(v)
    assert h.counts == [2, 2, 2, 1]
    assert h.count == 7
    assert h.sum == pytest.approx(21.9)
    assert h.cumulative() == [(1.0, 2), (2.0, 4), (5.0, 6), (float("inf"), 7)]


def test_quantile_is_the_bound_of_the_bucket_holding_it() -> None:
    h = Histogram((1.0, 2.0, 5.0))
    assert h.quantile(0.5) == 0.0
    for v in (0.5, 0.5, 1.5, 9.0):
        h.observe(v)
    assert h.quantile(0.5) == 1.0
    assert h.quantile(0.75) == 2.0
    assert h.quantile(0.99) == float("inf")
    assert h.as_dict()["buckets"][-1] == ["+Inf", 4]


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError):
        Histogram((2.0, 1.0))
    with pytest.raises(ValueError):
        Histogram((1.0, 1.0))


def test_replication_latency_is_measured_per_batch_until_its_last_index_commits() -> None:
    m = NodeMetrics()
    m.proposed(3, 10)
    m.proposed(2, 12)
    m.committed(9)
    assert m.replicate_seconds.count == 0
    m.committed(11)  # the first batch (up to 10) is committed, not the second
    assert m.replicate_seconds.count == 1
    m.committed(12)
    assert m.replicate_seconds.count == 2
    assert m.proposal_batch_size.counts[SIZE_BUCKETS.index(2.0)] == 1
    assert m.proposal_batch_size.counts[SIZE_BUCKETS.index(4.0)] == 1


def test_batches_of_a_lost_leadership_are_forgotten() -> None:
    m = NodeMetrics()
    m.proposed(1, 5)
    m.leadership_ended()
    m.proposed(1, 6)  # a later term's batch, re-using indexes past the old ones
    m.committed(6)
    assert m.replicate_seconds.count == 1


def test_apply_records_size_and_duration() -> None:
    m = NodeMetrics()
    m.applied(100, 0.002)
    assert m.apply_batch_size.count == 1
    assert m.apply_seconds.sum == pytest.approx(0.002)
    assert set(m.as_dict()) == set(NodeMetrics.HISTOGRAMS)
