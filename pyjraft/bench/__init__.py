"""`python -m pyjraft.bench`: throughput and latency of a 3-process pyjraft cluster.

The driver (`pyjraft.bench.driver`) starts three `pyjraft.bench.server`
processes on loopback, waits for a leader, measures the latency floor (one
fdatasync on the data directory's filesystem plus one loopback TCP round
trip), drives a closed-loop workload and prints committed writes/s and
latency percentiles. With ``--compare`` the same run drives PySyncObj 0.3.17
(`pyjraft.bench.pso_server`) at its defaults, tuned (5 ms periods) and
unbatched (tuned plus ``appendEntriesUseBatch=False``), and prints a side by
side table. ``--idle SECONDS`` measures an idle cluster's CPU and RSS instead.
The last line of output is one JSON object with every figure.

Placements:

* ``leader``: the load generator runs inside the leader's process and calls
  `pyjraft.node.Node.apply` directly (like PySyncObj, whose writers are
  always cluster members);
* ``client``: the driver process calls a small RPC service (``bench.apply``)
  registered on the leader's `pyjraft.transport.tcp.TcpTransport`.

Profiling: the driver prints ``pyjraft leader ADDR pid PID`` on stderr once a
leader is known; attach ``py-spy record --gil --native --pid PID`` to it
(``--gil``: only samples holding the GIL, a proxy for CPU), or pass
``--profile FILE`` to cProfile the leader's measured run. The JSON reports
the leader's CPU per write (``leader_cpu_us_per_write``), its garbage
collection pauses (``leader_gc``) and transport counters.
"""

from pyjraft.bench.stats import LatencySummary, percentile, summarize

__all__ = ["LatencySummary", "percentile", "summarize"]
