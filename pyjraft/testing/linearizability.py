"""A linearizability checker for key-value histories recorded by real clients.

Theory of operation
-------------------
A history is a list of `Operation`: what a client asked (put, get,
compare-and-set, delete on one key), what it was told, and when it called
and when the answer arrived (one clock, the client's). An operation whose
outcome the client does not know (`UnknownOutcomeError`: it may or may not
have been applied) has no return time: it may take effect at any moment
after its call, or never. An operation the client knows was not applied
(`DeadlineExceededError`) is left out of the history by the recorder, and a
read whose answer never came is left out too (it changed nothing).

Linearizability is local (Herlihy and Wing): a history is linearizable iff
each key's sub-history is, so each key is checked on its own against a
register model. The search is Wing and Gong's, with Lowe's memoization (the
algorithm behind Knossos and Porcupine): walk the calls and returns in time
order; linearize a pending call whenever the model accepts its output from
the current state; at a return whose operation is not yet linearized,
backtrack. A (set of linearized operations, state) pair already explored
is never explored again. An unknown-outcome operation's return is placed
after every other event, which lets it be linearized last: as if it took
effect after everything observed, or never, as far as any answer can tell.

The model (`step`), with the register's state the key's value or None:

* ``put(v)`` answered with the previous value: that must be the state; then v;
* ``get`` answered with a value: that must be the state;
* ``cas(expect, v)`` answered with success: the state must be ``expect``,
  then v; answered with failure: the state must not be ``expect``;
* ``delete`` answered with the previous value: that must be the state; then None.

An unknown-outcome operation is accepted from any state (a cas then takes
effect only if the state is ``expect``, as the server would decide).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

INFINITY = 1 << 62
"""The return time given to an operation of unknown outcome: after everything."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key; see the module docstring."""

    kind: str
    """``put``, ``get``, ``cas`` or ``delete``."""
    key: bytes
    value: bytes | None
    """What a put or cas writes (None for get and delete)."""
    expect: bytes | None
    """What a cas compares against (None: the key is absent)."""
    output: Any
    """The answer: previous value (put, delete), value (get), success (cas);
    ignored when ``returned`` is None."""
    called: int
    """When the client called (nanoseconds, the client's monotonic clock)."""
    returned: int | None
    """When the answer arrived; None: the outcome is unknown."""
    client: int = 0
    """Which client task asked (for reports)."""


KINDS = frozenset({"put", "get", "cas", "delete"})


def step(state: bytes | None, op: Operation) -> tuple[bool, bytes | None]:
    """Whether the register model accepts ``op`` in ``state``, and the state after."""
    known = op.returned is not None
    kind = op.kind
    if kind == "put":
        return (not known or op.output == state), op.value
    if kind == "get":
        return (not known or op.output == state), state
    if kind == "delete":
        return (not known or op.output == state), None
    if kind == "cas":
        matches = state == op.expect
        if not known:
            return True, op.value if matches else state
        if op.output:
            return matches, op.value
        return not matches, state
    raise ValueError(f"unknown operation kind {kind!r}")


class _Event:
    __slots__ = ("call", "ident", "match", "next", "op", "prev")

    def __init__(self, op: Operation | None, ident: int, call: bool) -> None:
        self.op = op
        self.ident = ident
        self.call = call
        self.match: _Event | None = None
        self.prev: _Event | None = None
        self.next: _Event | None = None


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict on one key's history."""

    key: bytes
    ok: bool | None
    """True: linearizable; False: not; None: the search ran out of its budget."""
    operations: int
    explored: int
    """States the search visited."""


def check_key(
    key: bytes,
    ops: list[Operation],
    initial: bytes | None = None,
    budget: int | None = None,
) -> KeyResult:
    """Whether ``ops`` (all on ``key``) are linearizable from ``initial``.

    ``budget`` bounds the events the search visits (default: 500 per
    operation, at least 5 million); past it the verdict is None. Operations
    of unknown outcome stay candidates to the end, so each one adds a visit
    per step: the keys of a 30-minute soak (about 378,000 operations each,
    175 of them unknown) needed 8.3 to 38.5 million."""
    if budget is None:
        budget = max(5_000_000, 500 * len(ops))
    for op in ops:
        if op.kind not in KINDS:
            raise ValueError(f"unknown operation kind {op.kind!r}")
    events: list[tuple[int, int, int, _Event]] = []
    for i, op in enumerate(ops):
        call, ret = _Event(op, i, True), _Event(op, i, False)
        call.match = ret
        returned = INFINITY if op.returned is None else op.returned
        if returned < op.called:
            raise ValueError(f"operation returned before it was called: {op}")
        # At equal times a call sorts before a return: the two overlap.
        events.append((op.called, 0, i, call))
        events.append((returned, 1, i, ret))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Event(None, -1, False)
    last = head
    for *_, ev in events:
        last.next, ev.prev, last = ev, last, ev

    def lift(ev: _Event) -> None:
        for e in (ev, ev.match):
            assert e is not None and e.prev is not None
            e.prev.next = e.next
            if e.next is not None:
                e.next.prev = e.prev

    def unlift(ev: _Event) -> None:
        for e in (ev.match, ev):
            assert e is not None and e.prev is not None
            e.prev.next = e
            if e.next is not None:
                e.next.prev = e

    state = initial
    # The linearized set, kept small for long histories: every operation
    # below ``base`` is linearized, ``window`` has bit j set when operation
    # base + j is (bit 0, ``base`` itself, is always clear). Operations are
    # numbered in call order and a search rarely holds more than the clients'
    # concurrency open, so the pair stays small where a plain bitset of a
    # 100,000-operation history would not.
    base, window = 0, 0
    seen: set[tuple[int, int, bytes | None]] = set()
    stack: list[tuple[_Event, bytes | None, int, int]] = []
    explored = 0
    entry = head.next
    while head.next is not None:
        explored += 1
        if explored > budget:
            return KeyResult(key, None, len(ops), explored)
        assert entry is not None
        if entry.call:
            assert entry.op is not None
            accepted, after = step(state, entry.op)
            if accepted:
                b, w = _with(base, window, entry.ident)
                if (b, w, after) not in seen:
                    seen.add((b, w, after))
                    stack.append((entry, state, base, window))
                    state, base, window = after, b, w
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return whose operation could not be placed before it: undo the
            # latest choice and try the next candidate after it.
            if not stack:
                return KeyResult(key, False, len(ops), explored)
            top, state, base, window = stack.pop()
            unlift(top)
            entry = top.next
    return KeyResult(key, True, len(ops), explored)


def _with(base: int, window: int, ident: int) -> tuple[int, int]:
    """The (base, window) of a linearized set with ``ident`` added (it was not in it)."""
    if ident != base:
        return base, window | (1 << (ident - base))
    ones = window | 1  # bits 0.. of base, base + 1, ...: skip the run now linearized
    run = ((ones + 1) & -(ones + 1)).bit_length() - 1
    return base + run, ones >> run


def check_history(
    ops: Iterable[Operation],
    initial: dict[bytes, bytes] | None = None,
    budget: int | None = None,
) -> list[KeyResult]:
    """`check_key` for every key of ``ops`` (P-compositionality), keys in order."""
    by_key: dict[bytes, list[Operation]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    start = initial or {}
    return [check_key(k, by_key[k], start.get(k), budget=budget) for k in sorted(by_key)]


__all__ = ["INFINITY", "KINDS", "KeyResult", "Operation", "check_history", "check_key", "step"]
