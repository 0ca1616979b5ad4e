"""Gunicorn settings for every PSI function container (OpenFaaS and Knative alike).

    gunicorn --config gunicorn.conf.py shared_lib.wsgi:app

Shutdown: Kubernetes sends SIGTERM, the master asks each worker to stop accepting,
in-flight requests get up to ``graceful_timeout`` seconds to finish, then every worker
closes its pools (``shared_lib.bootstrap.shutdown``) in ``worker_exit`` before it exits.
Keep ``graceful_timeout`` below the pod's ``terminationGracePeriodSeconds`` (30 s default).

Workers are gevent's (shared_lib.serving.Worker): one greenlet per connection, so slow or
stalled clients cost memory, not threads, and cannot keep health checks or other callers
waiting; every connection's reads time out after GUNICORN_READ_TIMEOUT seconds.

Knobs (all optional; the names are listed in tests/deploy/manifests/loading.py RUNTIME_ENV):
PORT, WEB_CONCURRENCY, GUNICORN_WORKER_CONNECTIONS, GUNICORN_READ_TIMEOUT, GUNICORN_TIMEOUT,
GUNICORN_GRACEFUL_TIMEOUT, GUNICORN_SHUTDOWN_HOOK ("module:function", default
shared_lib.bootstrap:shutdown).
Gunicorn's own GUNICORN_CMD_ARGS still overrides anything here (tests bind to loopback so).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

DEFAULT_SHUTDOWN_HOOK = "shared_lib.bootstrap:shutdown"
SHUTDOWN_HOOK = os.environ.get("GUNICORN_SHUTDOWN_HOOK", "").strip() or DEFAULT_SHUTDOWN_HOOK

bind = [f"0.0.0.0:{int(os.environ.get('PORT', '8080'))}"]
# Greenlets, not processes, carry concurrency: pools are per process and the work is I/O.
worker_class = "shared_lib.serving.Worker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# connections a worker serves at once, kept-alive and slow ones included
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "64"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "25"))
keepalive = 5
# Each worker builds its own pools after the fork: sockets must not be shared across it.
preload_app = False
# Heartbeat files in memory: the image's file system may be read-only.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# No runtime control socket: the platform, not an operator shell, manages the process.
control_socket_disable = True
errorlog = "-"
accesslog = None


def on_starting(server: Any) -> None:
    """Several workers share one /metrics: prometheus-client's multiprocess mode adds them
    up (the workers inherit the variable). Start with an empty directory: files of an
    earlier run would be added in."""
    if workers > 1 and worker_tmp_dir and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(worker_tmp_dir, "psi-metrics")
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def load_shutdown_hook(spec: str) -> Callable[[], Any]:
    """Resolve "package.module:function"; ImportError/AttributeError if it is not there."""
    module_name, _, attribute = spec.partition(":")
    hook = getattr(importlib.import_module(module_name), attribute or "shutdown")
    if not callable(hook):
        raise AttributeError(f"{spec} is not callable")
    return hook


def worker_exit(server: Any, worker: Any) -> None:
    """Runs in the worker once it has stopped serving: close its DB, Redis, Kafka pools."""
    try:
        hook = load_shutdown_hook(SHUTDOWN_HOOK)
    except (ImportError, AttributeError) as exc:
        server.log.error(
            "psi: worker %s cannot close its pools: %s is not available (%s)",
            worker.pid,
            SHUTDOWN_HOOK,
            exc,
        )
        return
    try:
        hook()
    except Exception:
        server.log.exception("psi: worker %s failed while closing its pools", worker.pid)
        return
    server.log.info("psi: worker %s closed its pools", worker.pid)


def on_exit(server: Any) -> None:
    server.log.info("psi: server stopped")
