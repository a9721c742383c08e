"""Operating pyjraft: one opt-in HTTP endpoint per process (Prometheus
``/metrics``, the ``/status`` page, ``/status.json``, ``/health``), the
SIGUSR2 describe dump, structured logging, and the cluster status table of
``pyjraft status``."""

from pyjraft.ops.collector import RaftCollector
from pyjraft.ops.describe import install_describe_signal, log_describe
from pyjraft.ops.logs import FORMATS, parse_log_levels, setup_logging
from pyjraft.ops.loop_lag import LoopLagMonitor
from pyjraft.ops.server import OpsServer, is_loopback, node_health, status_snapshot
from pyjraft.ops.status_page import render_status_page

__all__ = [
    "FORMATS",
    "LoopLagMonitor",
    "OpsServer",
    "RaftCollector",
    "install_describe_signal",
    "is_loopback",
    "log_describe",
    "node_health",
    "parse_log_levels",
    "render_status_page",
    "setup_logging",
    "status_snapshot",
]
