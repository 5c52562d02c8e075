"""A dask.distributed client for batch jobs (scalar batches, training sweeps), set up for JAX.

Local workers are processes started by spawn (never fork: the client has JAX loaded), one thread
each, so every worker holds one JAX runtime; XLA's Eigen pool and BLAS run single-threaded
inside a worker (`WORKER_ENV`), so N workers use N cores without oversubscription. Local workers
share a persistent XLA compilation cache for the batch, so a program is compiled once, not per task.
`scheduler=ADDR` connects to an existing cluster instead (`dask scheduler` / `dask worker ADDR`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator

__all__ = ["WORKER_ENV", "usable_cores", "worker_env", "batch_client", "dashboard_line"]

WORKER_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several workers may share one GPU
}
XLA_WORKER_FLAGS = "--xla_cpu_multi_thread_eigen=false"
CONNECT_TIMEOUT_S = 5.0


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, as JAX sizes its own pool)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_env() -> dict[str, str]:
    """Environment for each local worker: single-threaded XLA/BLAS, the client's XLA_FLAGS kept."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        flags = f"{flags} {XLA_WORKER_FLAGS}".strip()
    return {**WORKER_ENV, "XLA_FLAGS": flags}


def _check_reachable(address: str, timeout: float) -> None:
    """ValueError unless a TCP connection to the scheduler opens within `timeout` seconds."""
    from distributed.comm import parse_address, parse_host_port

    hint = ("start one with `dask scheduler` and `dask worker ADDR`, or drop --scheduler to use a local "
            "cluster")
    try:
        scheme, loc = parse_address(address if "://" in address else f"tcp://{address}")
        host, port = parse_host_port(loc)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad scheduler address {address!r} ({exc}); pass tcp://HOST:PORT") from None
    if scheme not in ("tcp", "tls"):
        return  # other transports: let distributed connect (with the same timeout)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ValueError(f"cannot reach the dask scheduler at {address} ({reason} within {timeout:g}s); "
                         f"{hint}") from None


@contextlib.contextmanager
def batch_client(
    *, workers: int | None = None, scheduler: str | None = None, timeout: float = CONNECT_TIMEOUT_S,
    log: Callable[[str], None] | None = None,
) -> Iterator["distributed.Client"]:  # noqa: F821
    """A Client on an existing cluster (`scheduler`) or on a new LocalCluster of `workers` processes.

    An unreachable scheduler, or one with no workers, is a ValueError within about `timeout` seconds.
    The LocalCluster is closed (its workers stopped) on exit, also after Ctrl-C.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        _check_reachable(scheduler, timeout)
        try:
            client = Client(scheduler, timeout=f"{timeout}s", set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - anything here means "cannot use this scheduler"
            raise ValueError(f"cannot connect to the dask scheduler at {scheduler} ({exc}); check the address "
                             "and that `dask scheduler` is running there") from None
        with client:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise ValueError(f"the dask scheduler at {scheduler} has no workers; start some with "
                                 f"`dask worker {scheduler} --nthreads 1`") from None
            if log:
                log(f"using the dask cluster at {scheduler} ({len(client.scheduler_info()['workers'])} workers)"
                    f"{dashboard_line(client)}")
            yield client
        return
    n = workers or usable_cores()
    if n < 1:
        raise ValueError(f"--workers must be at least 1, got {n}")
    with contextlib.ExitStack() as stack:
        env = worker_env()
        if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # share compiled programs between tasks and workers
            env["JAX_COMPILATION_CACHE_DIR"] = stack.enter_context(tempfile.TemporaryDirectory(prefix="scalars-xla-"))
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
            cluster = stack.enter_context(LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, env=env, dashboard_address=":0",
                silence_logs=logging.ERROR))
        client = stack.enter_context(Client(cluster, set_as_default=False))
        if log:
            log(f"started a local dask cluster: {n} worker processes x 1 thread{dashboard_line(client)}")
        yield client


def dashboard_line(client) -> str:
    """'; dashboard http://...' (or how to get one) for log lines."""
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard configured
        link = None
    if importlib.util.find_spec("bokeh") is None:
        return "; dashboard: install bokeh (`pip install bokeh`) to serve one" if link is None else \
            f"; dashboard {link} (needs bokeh on the scheduler)"
    return f"; dashboard {link}" if link else ""
