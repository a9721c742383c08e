"""An in-process transport with seeded fault injection, for tests.

`LocalNetwork` connects any number of `LocalTransport` endpoints living on one
asyncio loop. Messages are delivered with ``loop.call_soon`` (or
``call_later`` when a delay is configured), so handlers run on the loop just
as they would with `TcpTransport`, never re-entrantly inside `send`. Every
fault decision -- drop, delay, duplicate -- draws from the one injected
`random.Random`, so given the same order of calls the same messages are
lost, doubled and delayed by the same amounts. Without delays the delivery
order is exact too; with delays, deliveries due at nearly the same instant
are ordered by the loop's real clock (a fully deterministic schedule needs a
virtual-time loop, as in `pyjraft.testing.sim`).

By default every message is pushed through the real codec at send time, so a
message a real receiver would reject raises `ProtocolError` in the sender's
test instead of passing silently; the receiver gets the decoded copy.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

from pyjraft.core.messages import Message
from pyjraft.transport.base import HandlerRegistry, TransportStats
from pyjraft.transport.codec import (
    decode_messages,
    decode_request,
    decode_response,
    encode_messages,
    encode_request,
    encode_response,
)
from pyjraft.transport.errors import RemoteError, RpcTimeoutError, TransportError
from pyjraft.transport.tls import Identity

log = logging.getLogger("pyjraft.transport")


class LocalNetwork:
    """The simulated network between `LocalTransport` endpoints.

    Faults apply to each message (and to each RPC request and response)
    independently: dropped with probability ``drop_rate``, delivered after a
    delay drawn uniformly from ``delay`` seconds (so messages may be
    reordered when the range is not a single point), and delivered twice with
    probability ``duplicate_rate``. The attributes may be changed at any time.
    Links are cut by `partition`, `isolate` and `block`, restored by `heal`;
    a message is judged when it is sent, so messages already in flight still
    arrive.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        drop_rate: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        duplicate_rate: float = 0.0,
        check_codec: bool = True,
    ) -> None:
        self.rng = rng
        """The source of every fault decision."""
        self.drop_rate = drop_rate
        """Probability that a message is lost."""
        self.delay = delay
        """``(min, max)`` delivery delay in seconds."""
        self.duplicate_rate = duplicate_rate
        """Probability that a message is delivered twice."""
        self.check_codec = check_codec
        """Round-trip every message through the wire codec."""
        self._nodes: dict[str, LocalTransport] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._sides: dict[str, int] = {}
        self._isolated: set[str] = set()

    # -- topology -----------------------------------------------------------

    def partition(self, *sides: Iterable[str]) -> None:
        """Replace the current partition: addresses in different ``sides``
        cannot reach each other; addresses in no side reach everyone.

        ``partition({"a", "b"}, {"c"})`` splits a three-node cluster 2/1.
        Links cut by `block` and `isolate` are kept.
        """
        self._sides = {}
        for i, side in enumerate(sides):
            for addr in side:
                self._sides[addr] = i

    def isolate(self, addr: str) -> None:
        """Cut ``addr`` off from everyone, both ways."""
        self._isolated.add(addr)

    def block(self, src: str, dst: str) -> None:
        """Cut the one-way link ``src -> dst`` (for asymmetric faults)."""
        self._blocked.add((src, dst))

    def heal(self) -> None:
        """Restore every link."""
        self._sides = {}
        self._isolated.clear()
        self._blocked.clear()

    def reachable(self, src: str, dst: str) -> bool:
        """Whether a message from ``src`` to ``dst`` passes the cut links."""
        if src == dst:
            return True
        if src in self._isolated or dst in self._isolated or (src, dst) in self._blocked:
            return False
        a = self._sides.get(src)
        b = self._sides.get(dst)
        return a is None or b is None or a == b

    # -- internals ------------------------------------------------------------------

    def _attach(self, t: LocalTransport) -> None:
        old = self._nodes.get(t.address)
        if old is not None and not old._closed:
            raise ValueError(f"address {t.address} is already in use")
        self._nodes[t.address] = t

    def _detach(self, t: LocalTransport) -> None:
        if self._nodes.get(t.address) is t:
            del self._nodes[t.address]

    def _fate(self, src: str, dst: str) -> list[float] | None:
        """None when the packet is lost; else its delivery delays (one per copy)."""
        if not self.reachable(src, dst):
            return None
        rng = self.rng
        if self.drop_rate and rng.random() < self.drop_rate:
            return None
        copies = 2 if self.duplicate_rate and rng.random() < self.duplicate_rate else 1
        lo, hi = self.delay
        return [rng.uniform(lo, hi) if hi > 0 else 0.0 for _ in range(copies)]

    def _route(self, src: LocalTransport, msg: Message) -> None:
        if self.check_codec:
            (msg,) = decode_messages(encode_messages([msg]))
        dst = self._nodes.get(msg.dst)
        fate = None if dst is None or dst._closed else self._fate(src.address, msg.dst)
        if dst is None or fate is None:
            src.stats.dropped_sends += 1
            return
        src.stats.messages_out += 1
        loop = asyncio.get_running_loop()
        for d in fate:
            if d > 0:
                loop.call_later(d, dst._deliver, msg)
            else:
                loop.call_soon(dst._deliver, msg)

    async def _travel(self, src: str, dst: str) -> None:
        """Wait out one packet's trip; a lost packet never arrives."""
        fate = self._fate(src, dst)
        if fate is None:
            await asyncio.get_running_loop().create_future()  # until the caller times out
        elif fate[0] > 0:
            await asyncio.sleep(fate[0])


class LocalTransport(HandlerRegistry):
    """An endpoint on a `LocalNetwork`, with `TcpTransport`'s surface."""

    def __init__(self, network: LocalNetwork, address: str) -> None:
        """Attach to ``network`` as ``address`` (any unique string, usually host:port)."""
        self.network = network
        self._address = address
        self.stats = TransportStats()
        """Counters, as for `TcpTransport`."""
        HandlerRegistry.__init__(self)
        self.identity: Identity | None = None
        """Who this endpoint's calls are from, as a TLS certificate would say
        (services registered with ``register_caller_service`` see it); None:
        unauthenticated, as in plaintext."""
        self._tasks: set[asyncio.Task[tuple[bool, Any]]] = set()
        self._closed = False
        network._attach(self)

    @property
    def address(self) -> str:
        """This endpoint's address."""
        return self._address

    def flush(self) -> None:
        """Nothing to do: `send` delivers (or schedules) at once."""

    def send(self, msgs: Sequence[Message]) -> None:
        """Send raft messages to their ``dst``; never blocks, never raises for
        network reasons (`ProtocolError` means the message itself is invalid)."""
        if self._closed:
            self.stats.dropped_sends += len(msgs)
            return
        for m in msgs:
            self.network._route(self, m)

    def _deliver(self, msg: Message) -> None:
        if self._closed:
            return
        handler = self._groups.get(msg.group)
        if handler is None:
            self.stats.unknown_group += 1
            return
        self.stats.messages_in += 1
        try:
            handler(msg)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("raft handler of group %r failed on %s", msg.group, type(msg).__name__)

    async def call(self, addr: str, service: str, request: Any, timeout: float = 5.0) -> Any:
        """Call ``service`` on the endpoint ``addr``, with the errors of
        `RpcClient.call`: `RemoteError`, `TransportError` (no such endpoint,
        or closed) and `RpcTimeoutError` (lost request or response, or slow
        handler). The request and response go through msgpack, as on the wire.
        """
        if self._closed:
            raise TransportError("transport is closed")
        body = encode_request(0, service, request)
        (_, _, req) = decode_request(body)
        net = self.network
        try:
            async with asyncio.timeout(timeout):
                dst = net._nodes.get(addr)
                if dst is None or dst._closed:
                    raise TransportError(f"cannot connect to {addr}: no such endpoint")
                await net._travel(self.address, addr)
                limit = dst._service_limits.get(service)
                if limit is not None and len(body) > limit:
                    # As TcpTransport answers it (counting the envelope too).
                    raise RemoteError(
                        f"request of {len(body)} bytes exceeds service {service!r}'s limit "
                        f"of {limit}"
                    )
                task = dst._serve(service, req, self.identity)
                try:
                    ok, payload = await asyncio.shield(task)
                except asyncio.CancelledError:
                    me = asyncio.current_task()
                    if task.cancelled() and me is not None and not me.cancelling():
                        # The server closed under the call, not our caller
                        # giving up: over TCP that is a lost connection.
                        raise TransportError(f"connection to {addr} lost") from None
                    raise
                await net._travel(addr, self.address)
        except TimeoutError:
            raise RpcTimeoutError(
                f"call to {service!r} at {addr} timed out after {timeout} s"
            ) from None
        if not ok:
            raise RemoteError(payload)
        return payload

    def _serve(
        self, service: str, request: Any, caller: Identity | None = None
    ) -> asyncio.Task[tuple[bool, Any]]:
        # A task of the server, not of the caller, so that a caller giving up
        # does not cancel the handler -- as with TCP.
        if self._closed:
            raise TransportError(f"connection to {self.address} lost")
        task = asyncio.get_running_loop().create_task(self._answer(service, request, caller))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _answer(
        self, service: str, request: Any, caller: Identity | None
    ) -> tuple[bool, Any]:
        self.stats.requests_in += 1
        handler = self._services.get(service)
        caller_handler = self._caller_services.get(service)
        if handler is None and caller_handler is None:
            self.stats.request_errors += 1
            return False, f"unknown service {service!r}"
        try:
            if handler is not None:
                value = await handler(request)
            else:
                assert caller_handler is not None
                value = await caller_handler(request, caller)
            body = encode_response(0, True, value)
        except Exception as e:
            self.stats.request_errors += 1
            return False, f"{type(e).__name__}: {e}"
        _, ok, payload = decode_response(body)
        return ok, payload

    async def remove_peer(self, addr: str) -> None:
        """Nothing is held per peer in process; present for `Transport` parity."""

    async def close(self) -> None:
        """Detach from the network; messages in flight to us are dropped and
        running service handlers are cancelled."""
        if self._closed:
            return
        self._closed = True
        self.network._detach(self)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
