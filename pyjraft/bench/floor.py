"""The latency floor of a durable write at concurrency 1: one small write plus
fdatasync on the data directory's filesystem, plus one loopback TCP round trip.

A Raft write can not be acknowledged sooner: the leader's fdatasync runs in
parallel with the round trip to a follower and that follower's fdatasync, so
the floor is about one fdatasync plus one round trip. That holds when each
replica has its own disk; the benchmark's 3 nodes share one, so their
fdatasyncs queue behind each other, and ``fdatasync_us(..., writers=3)``
measures what one costs then (the *shared-disk floor*).

Also the disk's raw bandwidth at a given group-commit size (`raw_sync_bandwidth`),
the yardstick for large payloads: what a plain append + fdatasync loop makes
durable per second when each sync carries as many bytes as the leader's did.
"""

from __future__ import annotations

import os
import socket
import threading
import time


def fdatasync_us(directory: str, n: int = 200, size: int = 100, writers: int = 1) -> list[int]:
    """Append ``size`` bytes to a fresh file in ``directory`` and fdatasync it, ``n``
    times; return each write+fdatasync time in microseconds. With ``writers``
    > 1, that many threads do so at once, each on its own file (as the replicas
    of a cluster on one machine share its disk), and all their times are
    returned."""
    if writers < 1:
        raise ValueError("writers must be >= 1")
    data = b"x" * size
    results: list[list[int]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def loop(k: int) -> None:
        path = os.path.join(directory, f"floor-fdatasync-{k}.bin")
        out = results[k]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                start.wait()
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    os.write(fd, data)
                    os.fdatasync(fd)
                    out.append((time.perf_counter_ns() - t0) // 1000)
            finally:
                os.close(fd)
                os.unlink(path)
        except BaseException as exc:  # re-raised on the calling thread
            start.abort()
            errors.append(exc)

    if writers == 1:
        loop(0)
    else:
        # write and fdatasync release the GIL: threads sync as concurrently as processes.
        threads = [threading.Thread(target=loop, args=(k,)) for k in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        # The first real failure, not the broken barrier it left the others.
        raise next(
            (e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0]
        )
    return [us for out in results for us in out]


def tcp_rtt_us(port: int, n: int = 1000, size: int = 100, host: str = "127.0.0.1") -> list[int]:
    """Ping-pong ``size`` bytes with the echo server at ``host:port`` ``n`` times
    (TCP_NODELAY, blocking socket); return each round trip in microseconds."""
    data = b"y" * size
    out: list[int] = []
    with socket.create_connection((host, port), timeout=5.0) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t0 = time.perf_counter_ns()
            s.sendall(data)
            got = 0
            while got < size:
                chunk = s.recv(size - got)
                if not chunk:
                    raise ConnectionError("echo server closed the connection")
                got += len(chunk)
            out.append((time.perf_counter_ns() - t0) // 1000)
    return out


def raw_sync_bandwidth(
    directory: str, batch_bytes: int, seconds: float = 1.5, writers: int = 1
) -> dict[str, float]:
    """The disk's raw group-commit limit for one batch size: for about ``seconds``,
    each of ``writers`` threads ``os.pwrite``s a ``batch_bytes`` buffer at
    increasing offsets of its own fresh file in ``directory`` (appending, as the
    segment log does), ``os.fdatasync`` after each. Several writers show what
    the disk gives replicas that share it. Returns the batch size, the writers,
    the rounds, the elapsed time, syncs per second and MB/s (10**6 bytes) of
    data made durable, in all."""
    if batch_bytes < 1:
        raise ValueError("batch_bytes must be >= 1")
    if writers < 1:
        raise ValueError("writers must be >= 1")
    buf = os.urandom(batch_bytes)
    start = time.perf_counter()
    deadline = start + seconds
    done: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def loop(k: int) -> None:
        try:
            done.append(write_until(k))
        except BaseException as exc:  # re-raised on the calling thread
            errors.append(exc)

    def write_until(k: int) -> tuple[int, int]:
        path = os.path.join(directory, f"floor-bandwidth-{k}.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        rounds = 0
        offset = 0
        try:
            while True:
                written = os.pwrite(fd, buf, offset)
                while written < batch_bytes:  # short writes are rare, but possible
                    written += os.pwrite(fd, buf[written:], offset + written)
                os.fdatasync(fd)
                offset += batch_bytes
                rounds += 1
                if time.perf_counter() >= deadline:
                    break
        finally:
            os.close(fd)
            os.unlink(path)
        return rounds, offset

    # pwrite and fdatasync release the GIL: threads write as concurrently as processes.
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    rounds = sum(r for r, _ in done)
    nbytes = sum(b for _, b in done)
    return {
        "batch_bytes": batch_bytes,
        "writers": writers,
        "rounds": rounds,
        "seconds": round(elapsed, 3),
        "syncs_per_s": round(rounds / elapsed, 1),
        "mb_per_s": round(nbytes / elapsed / 1e6, 3),
    }
