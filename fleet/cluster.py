"""Joining a Ray cluster, or starting a local one on this machine: the one place fleet/ calls ray.init.

A local cluster binds to loopback only, with no dashboard and no usage statistics. `--address` joins a running
cluster (`ray start --head` on one machine, `ray start --address HEAD:6379` on the others); an address nobody
answers at fails in one line naming it: within CONNECT_TIMEOUT_S when nothing listens there, within Ray's own
join timeout (about 20 s) when something else answers at that port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
DEFAULT_OBJECT_STORE_MB = 256
CONNECT_TIMEOUT_S = 5.0
DEFAULT_GCS_PORT = 6379
LOCAL_START_ATTEMPTS = 2


class ClusterError(RuntimeError):
    """A cluster that cannot be started or reached; the message names the address."""


@dataclass
class ClusterInfo:
    address: str  # "local" for a cluster started here
    cpus: float
    gpus: float
    nodes: int

    def line(self) -> str:
        where = "local cluster" if self.address == "local" else f"cluster at {self.address}"
        return f"{where}: {self.nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs"


def quiet_ray_environment() -> None:
    """Set before Ray starts (a local cluster's processes inherit them): no usage statistics leave the machine,
    workers at the priority of the command that started them, time for Serve's proxy on a busy machine."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Ray starts its worker processes 15 nice levels down, to keep its own daemons responsive. Here the workers are
    # the work (decoding, inference): on a shared machine they would starve behind everything else (seen on 2 busy
    # cores: a Serve proxy worker at nice 19 took 52 s to run its constructor).
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Serve gives its HTTP proxy 5 s to come up; a busy small machine needs longer (seen: three misses, then
    # the proxy killed and restarted, on 2 shared cores). Inherited by a local cluster's processes.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")


def host_and_port(address: str) -> tuple[str, int]:
    """'HOST[:PORT]' or 'ray://HOST[:PORT]' -> (host, port); ClusterError on anything else."""
    bare = address.split("://", 1)[1] if "://" in address else address
    host, _, port = bare.rpartition(":") if ":" in bare else (bare, "", "")
    host = host or bare
    if not host or (port and not port.isdigit()):
        raise ClusterError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or ray://HOST:PORT")
    default = 10001 if address.startswith("ray://") else DEFAULT_GCS_PORT
    return host, int(port) if port else default


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line, within timeout_s, when nothing listens at the address."""
    host, port = host_and_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or type(error).__name__)
        raise ClusterError(f"--address {address}: no Ray cluster reachable at {host}:{port} ({reason})") from error


def connect(address: str | None = None, num_cpus: int | None = None,
            object_store_mb: int = DEFAULT_OBJECT_STORE_MB) -> ClusterInfo:
    """Join the cluster at `address` ('auto': the one started on this machine with `ray start`), or start a local
    one with `num_cpus` logical CPUs (default: every core)."""
    quiet_ray_environment()
    import ray

    if ray.is_initialized():
        return describe("local" if address is None else address)
    if address is None:
        start_local(num_cpus or os.cpu_count() or 1, object_store_mb)
        return describe("local")
    if address != "auto":
        check_reachable(address)
    try:
        with native_stderr_silenced():  # Ray's C++ client logs a line per retry (~20 over ~20 s) before it gives up
            ray.init(address=address, logging_level="warning", log_to_driver=False)
    except Exception as error:  # noqa: BLE001
        raise ClusterError(f"--address {address}: cannot join the Ray cluster there ({first_line(error)})") from error
    return describe(address)


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the duration (what C++ libraries write to, below Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def start_local(num_cpus: int, object_store_mb: int, attempts: int = LOCAL_START_ATTEMPTS) -> None:
    """A local cluster on loopback. Ray gives its raylet a fixed 30 s to register; on a busy machine that can pass
    (seen on 2 cores under a load average of 10), and a second start then usually succeeds."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_mb * 2**20,
                     _node_ip_address=LOOPBACK, configure_logging=True, logging_level="warning", log_to_driver=False)
            return
        except Exception as error:  # noqa: BLE001 - Ray raises many types while starting its processes
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(error):
                raise ClusterError(f"cannot start a local Ray cluster ({first_line(error)})") from error


def describe(address: str) -> ClusterInfo:
    import ray

    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return ClusterInfo(address, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), nodes)


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
