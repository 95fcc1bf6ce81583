"""``serve``: artifacts behind a real Triton Inference Server, until a signal or a failure.

Every artifact becomes a python-backend model that runs it through this package's runners, with
Triton's dynamic batching, classification extension, metadata, health and statistics endpoints.
Where the server comes from is :mod:`.triton_install`; its process life, stubs and stale runs are
:mod:`.supervisor`; this module writes the repository, puts the fronts (:mod:`.front` for HTTP,
:mod:`.grpc_front` for gRPC: a request declaring a huge shape aborts tritonserver) before Triton's
private ports, and runs the serve loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from resnest_deploy._io import refuse_overwrite, write_json
from resnest_deploy.errors import ArtifactError, ServeError
from resnest_deploy.serving.front import Front, FrontLimits
from resnest_deploy.serving.grpc_front import GrpcFront
from resnest_deploy.serving.repository import ModelEntry, write_repository
from resnest_deploy.serving.supervisor import (
    ADMIN_HEADER,
    DRAIN_TIMEOUT_S,
    READY_TIMEOUT_S,
    RUN_PREFIX,
    TritonServer,
    Watch,
    clean_stale_runs,
    stubs_of,
)
from resnest_deploy.serving.triton_install import Ports, TritonInstall, free_ports

__all__ = [
    "ADMIN_HEADER",
    "Ports",
    "ServeError",
    "TritonInstall",
    "TritonServer",
    "clean_stale_runs",
    "free_ports",
    "running",
    "serve_forever",
    "stubs_of",
]


def _model_limits(entries: list[ModelEntry]) -> dict[str, int]:
    return {e.name: e.max_batch_size * e.sample_elements for e in entries}


def refuse_outputs(
    artifacts: Sequence[str | os.PathLike[str]], *, log: Path | None, status_file: Path | None
) -> None:
    """``log`` and ``status_file`` never name a served file (or its sidecar), nor each other:
    the status file is removed on exit, the log appended to."""
    for option, path in (("log", log), ("status_file", status_file)):
        if path is None:
            continue
        try:
            refuse_overwrite([path], artifacts)
        except ArtifactError:
            raise ServeError(
                (f"{{{option}}} {path} is one of the served files (or its sidecar); choose another path"),
                param=option,
            ) from None
    if log is not None and status_file is not None and _same_file(log, status_file):
        raise ServeError(
            f"{{log}} and {{status_file}} both name {log}; give each its own file",
            param=("log", "status_file"),
        )


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    return False


@contextlib.contextmanager
def running(
    artifacts: Sequence[str | os.PathLike[str]],
    ports: Ports,
    *,
    names: list[str] | None = None,
    max_batch_size: int | None = None,
    queue_delay_us: int = 500,
    provider: str = "cpu",
    instances: int = 1,
    ready_timeout: float = READY_TIMEOUT_S,
    drain_timeout: float = DRAIN_TIMEOUT_S,
    admin_api: bool = False,
    log: Path | None = None,
    front: FrontLimits | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    say: Callable[[str], None] = lambda _m: None,
) -> Iterator[tuple[TritonServer, list[ModelEntry]]]:
    """A ready Triton server serving ``artifacts`` (python-backend models), stopped on exit."""
    install = TritonInstall.find()
    refuse_outputs(artifacts, log=log, status_file=None)
    ports.check_free()
    clean_stale_runs()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))
    try:
        entries = write_repository(
            list(artifacts),
            run_dir / "models",
            names=names,
            python_backend=True,
            max_batch_size=max_batch_size,
            queue_delay_us=queue_delay_us,
            provider=provider,
            instances=instances,
        )
        server = TritonServer(
            run_dir / "models",
            ports,
            log or run_dir / "tritonserver.log",
            install,
            drain_timeout=drain_timeout,
            admin_api=admin_api,
        )
        bounds = front or FrontLimits()
        guard = Front(ports.host, ports.http, server.internal_http, _model_limits(entries), bounds=bounds)
        try:
            guard.bind()
        except OSError as e:
            why = e.strerror
            raise ServeError(
                f"cannot listen on HTTP {why}; choose another {{http_port}}",
                param="http_port",
            ) from None
        server.guard = guard
        guard.start()  # answers not-ready until Triton is
        say(f"starting tritonserver with {', '.join(e.name for e in entries)}")
        try:
            server.grpc_front = GrpcFront(
                ports.host,
                ports.grpc,
                server.internal_grpc,
                _model_limits(entries),
                max_message=bounds.max_body,
                first_message_s=bounds.body_timeout_s,
                stream_idle_s=bounds.idle_timeout_s,
            )
            try:
                server.grpc_front.start()
            except OSError as e:
                why = str(e)
                raise ServeError(f"{why}; choose another {{grpc_port}}", param="grpc_port") from None
            server.start(install.backend_dir(run_dir / "backends"), run_dir)
            server.wait_ready(ready_timeout, should_stop)
            guard.set_ready(True)
            with Watch(server):
                yield server, entries
        finally:
            server.stop()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def start_to_ready_s() -> float | None:
    """Seconds from this process's start (interpreter and imports included) until now."""
    from resnest_deploy.startup import process_age_s

    age = process_age_s()
    return None if age is None else round(age, 3)


def serve_forever(
    artifacts: Sequence[str | os.PathLike[str]],
    ports: Ports,
    *,
    on_ready: Callable[[list[ModelEntry]], None],
    status_file: Path | None = None,
    **options: Any,
) -> int:
    """Serve until SIGINT/SIGTERM (then drain and stop) or until the server can no longer answer
    (then stop and raise, so a supervisor restarts us)."""
    refuse_outputs(artifacts, log=options.get("log"), status_file=status_file)
    stop = {"signal": 0}

    def handle(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with running(artifacts, ports, should_stop=lambda: bool(stop["signal"]), **options) as (
            server,
            entries,
        ):
            if status_file is not None:
                write_json(
                    status_file,
                    {
                        "pid": os.getpid(),
                        "http": ports.url,
                        "grpc": ports.grpc,
                        "metrics": ports.metrics,
                        "models": [e.name for e in entries],
                        "start_to_ready_s": start_to_ready_s(),
                    },
                )
            on_ready(entries)
            while not stop["signal"]:
                failure = server.failure  # the watch in `running` checks every 0.25 s
                if failure:
                    raise ServeError(f"{failure}; stopped so that a supervisor can restart serve")
                time.sleep(0.2)
        return 0
    finally:
        if status_file is not None:
            with contextlib.suppress(OSError):
                status_file.unlink()
        for s, h in previous.items():
            signal.signal(s, h)
