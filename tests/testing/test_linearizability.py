"""The linearizability checker against hand-made histories and, on random
small ones, against brute force over every order."""

from __future__ import annotations

import itertools
import random

import pytest

from pyjraft.testing.linearizability import Operation, check_history, check_key, step

K = b"k"


def put(v: bytes, prev: bytes | None, t0: int, t1: int | None) -> Operation:
    return Operation("put", K, v, None, prev, t0, t1)


def get(out: bytes | None, t0: int, t1: int) -> Operation:
    return Operation("get", K, None, None, out, t0, t1)


def cas(expect: bytes | None, v: bytes, ok: bool, t0: int, t1: int | None) -> Operation:
    return Operation("cas", K, v, expect, ok, t0, t1)


def delete(prev: bytes | None, t0: int, t1: int | None) -> Operation:
    return Operation("delete", K, None, None, prev, t0, t1)


def ok(ops: list[Operation], initial: bytes | None = None) -> bool | None:
    return check_key(K, ops, initial).ok


def test_sequential_histories() -> None:
    assert ok([put(b"a", None, 0, 1), get(b"a", 2, 3), delete(b"a", 4, 5), get(None, 6, 7)])
    assert ok([cas(None, b"a", True, 0, 1), cas(None, b"b", False, 2, 3), get(b"a", 4, 5)])
    assert ok([get(b"x", 0, 1)], initial=b"x")


def test_a_stale_read_is_caught() -> None:
    # The put was acknowledged before the read began: the read must see it.
    assert not ok([put(b"a", None, 0, 1), get(None, 2, 3)])
    # Overlapping, either answer is fine.
    assert ok([put(b"a", None, 0, 5), get(None, 1, 2)])
    assert ok([put(b"a", None, 0, 5), get(b"a", 1, 2)])


def test_a_lost_write_is_caught_through_the_next_previous_value() -> None:
    assert not ok([put(b"a", None, 0, 1), put(b"b", None, 2, 3)])
    assert ok([put(b"a", None, 0, 1), put(b"b", b"a", 2, 3)])


def test_a_value_may_not_come_back_after_it_was_overwritten() -> None:
    ops = [put(b"a", None, 0, 1), put(b"b", b"a", 2, 3), get(b"b", 4, 5), get(b"a", 6, 7)]
    assert not ok(ops)


def test_unknown_outcomes_may_apply_late_or_never_but_not_unapply() -> None:
    lost = put(b"a", None, 0, None)
    assert ok([lost, get(None, 5, 6), get(None, 7, 8)])  # never applied
    assert ok([lost, get(None, 5, 6), get(b"a", 7, 8)])  # applied late
    assert not ok([lost, get(b"a", 5, 6), get(None, 7, 8)])  # applied, then undone
    # An unknown cas takes effect only where the state allows it.
    assert not ok([cas(b"z", b"a", False, 0, None), get(b"a", 5, 6)])
    assert ok([cas(None, b"a", False, 0, None), get(b"a", 5, 6)])


def test_cas_semantics() -> None:
    assert not ok([put(b"a", None, 0, 1), cas(b"a", b"b", False, 2, 3)])
    assert not ok([put(b"a", None, 0, 1), cas(b"x", b"b", True, 2, 3)])
    # Two concurrent cas on the same expected value: one wins.
    assert ok([put(b"a", None, 0, 1), cas(b"a", b"b", True, 2, 5), cas(b"a", b"c", False, 3, 6)])
    assert not ok([put(b"a", None, 0, 1), cas(b"a", b"b", True, 2, 5), cas(b"a", b"c", True, 3, 6)])


def test_keys_are_checked_separately_and_bad_input_is_refused() -> None:
    other = Operation("get", b"other", None, None, b"o", 0, 1)
    results = check_history([put(b"a", None, 0, 1), other], initial={b"other": b"o"})
    assert [(r.key, r.ok) for r in results] == [(b"k", True), (b"other", True)]
    with pytest.raises(ValueError, match="kind"):
        check_key(K, [Operation("incr", K, None, None, None, 0, 1)])
    with pytest.raises(ValueError, match="before it was called"):
        check_key(K, [get(None, 5, 1)])
    assert check_key(K, [put(b"a", None, 0, 9)] * 1, budget=0).ok is None


def _brute_force(ops: list[Operation], initial: bytes | None) -> bool:
    """Some subset holding every known operation, in some order respecting
    real time, is accepted by the model."""
    known = [o for o in ops if o.returned is not None]
    unknown = [o for o in ops if o.returned is None]
    for r in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, r):
            chosen = known + list(extra)
            for order in itertools.permutations(chosen):
                if not all(
                    not (b.returned is not None and b.returned < a.called)
                    for i, a in enumerate(order)
                    for b in order[i + 1 :]
                ):
                    continue
                state, good = initial, True
                for o in order:
                    good, state = step(state, o)
                    if not good:
                        break
                if good:
                    return True
    return False


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_brute_force_on_random_small_histories(seed: int) -> None:
    rng = random.Random(seed)
    values = [None, b"a", b"b"]
    for case in range(60):
        ops = []
        for _ in range(rng.randint(1, 5)):
            t0 = rng.randint(0, 10)
            t1 = None if rng.random() < 0.2 else t0 + rng.randint(0, 6)
            kind = rng.choice(["put", "get", "cas", "delete"])
            v = rng.choice([b"a", b"b"])
            out: object = rng.choice([True, False]) if kind == "cas" else rng.choice(values)
            if kind == "get" and t1 is None:
                t1 = t0 + 1
            ops.append(
                Operation(
                    kind,
                    K,
                    v if kind in ("put", "cas") else None,
                    rng.choice(values),
                    out,
                    t0,
                    t1,
                )
            )
        initial = rng.choice(values)
        expected = _brute_force(ops, initial)
        assert check_key(K, ops, initial).ok is expected, f"seed={seed} case={case} ops={ops}"
