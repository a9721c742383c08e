"""`RouteTable`: per raft group, the known peers and the cached leader.

The peers are what the application configured, or the group's
configuration as a member reported it (`RouteTable.update_configuration`).
A leader is only ever cached from among them: a not-leader hint naming any
other address is refused, because a hint is only as trustworthy as the
member that relays it, and a member can be fooled (by forged traffic in a
plaintext deployment, or by a bug) into naming a stranger that would then
"acknowledge" writes it never replicated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Route:
    peers: list[str]
    leader: str = ""
    next_peer: int = 0


class RouteTable:
    """Where to send a group's requests: its peers and its last known leader.

    Plain bookkeeping, no IO. Shared by clients of the same process when one
    is passed to several `RaftClient`s.
    """

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}

    def update_configuration(self, group: str, peers: Iterable[str]) -> None:
        """Set ``group``'s peers (keeps the cached leader if it is still one of them)."""
        plist = _dedup(peers)
        if not plist:
            raise ValueError(f"group {group!r}: no peers")
        route = self._routes.get(group)
        if route is None:
            self._routes[group] = _Route(plist)
            return
        route.peers = plist
        if route.leader and route.leader not in plist:
            route.leader = ""
        route.next_peer %= len(plist)

    def peers_of(self, group: str) -> list[str]:
        """The known peers of ``group`` (a copy); `KeyError` if the group is unknown."""
        return list(self._route(group).peers)

    def groups(self) -> list[str]:
        """Every group with a route."""
        return list(self._routes)

    def leader_of(self, group: str) -> str:
        """The cached leader of ``group``, or ``""`` when unknown."""
        return self._route(group).leader

    def update_leader(self, group: str, leader: str) -> bool:
        """Cache ``leader`` (``""`` forgets it) if it is one of the group's
        peers; return whether it was taken. A stranger is never cached, nor
        added to the peers: update the configuration first
        (`update_configuration`) when a member reports a new one."""
        route = self._route(group)
        if leader and leader not in route.peers:
            return False
        route.leader = leader
        return True

    def forget_leader(self, group: str, leader: str | None = None) -> None:
        """Forget the cached leader (only if it is still ``leader``, when given)."""
        route = self._route(group)
        if leader is None or route.leader == leader:
            route.leader = ""

    def next_target(self, group: str) -> str:
        """Where to send next: the cached leader, else the next peer round-robin."""
        route = self._route(group)
        if route.leader:
            return route.leader
        return self.next_peer(group)

    def next_peer(self, group: str) -> str:
        """The next peer of ``group`` in round-robin order (ignores the leader)."""
        route = self._route(group)
        addr = route.peers[route.next_peer % len(route.peers)]
        route.next_peer = (route.next_peer + 1) % len(route.peers)
        return addr

    def _route(self, group: str) -> _Route:
        try:
            return self._routes[group]
        except KeyError:
            raise KeyError(f"no route for group {group!r}") from None


def _dedup(peers: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in peers:
        p = p.strip()
        if p and p not in out:
            out.append(p)
    return out


__all__ = ["RouteTable"]
