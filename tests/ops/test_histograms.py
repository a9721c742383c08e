"""`pyjraft.node.metrics`: the per-batch histograms and their bookkeeping."""

from __future__ import annotations

import pytest

from pyjraft.node.metrics import FOLD_AT, SIZE_BUCKETS, Histogram, NodeMetrics


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


def test_durations_are_measured_from_the_start_given() -> None:
    m = NodeMetrics()
    start = m.clock() - 0.002
    m.applied(start)
    m.appended(start)
    m.saved_meta(start)
    for h in (m.apply_seconds, m.log_append_seconds, m.meta_save_seconds):
        assert h.count == 1
        assert 0.002 <= h.sum < 10
    assert set(m.as_dict()) == set(NodeMetrics.HISTOGRAMS)


def test_observations_fold_into_buckets_when_read_or_when_many_wait() -> None:
    h = Histogram((1.0, 2.0))
    for _ in range(FOLD_AT - 1):
        h.observe(1.5)
    h.maybe_fold()
    assert len(h._pending) == FOLD_AT - 1  # not yet: folded when read
    h.observe(3.0)
    h.maybe_fold()
    assert not h._pending  # bounded memory with nobody reading
    assert h.counts == [0, FOLD_AT - 1, 1]
    h.observe(0.5)
    assert h.counts == [1, FOLD_AT - 1, 1]  # reading folds what waits
    assert h.sum == pytest.approx(1.5 * (FOLD_AT - 1) + 3.5)
