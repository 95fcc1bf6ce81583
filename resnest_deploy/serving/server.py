"""A real Triton Inference Server for any artifact: the ``tritonserver`` that ``nvidia-pytriton`` bundles.

That wheel carries a genuine ``tritonserver`` (2.51, python backend only) that runs on a CPU-only
machine, with a python-backend stub for each Python version. We use those files and not pytriton's
Python API, whose metadata pins ``numpy<2``; so it is installed with ``pip install --no-deps
nvidia-pytriton``, and this project keeps numpy 2. Every artifact becomes a python-backend model that
runs it through this package's runners, with Triton's dynamic batching, classification extension,
metadata, health and statistics endpoints.

Two traps handled here: the stub embeds Python and must load *this* interpreter's libpython
(``LD_LIBRARY_PATH`` gets the interpreter's LIBDIR first), and it must see this environment's
packages (``PYTHONPATH`` gets our site-packages).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy.errors import MissingDependencyError, ResnestDeployError
from resnest_deploy.serving.repository import ModelEntry, write_repository

INSTALL_HINT = "pip install --no-deps 'nvidia-pytriton>=0.7'"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


class ServeError(ResnestDeployError):
    pass


@dataclass(frozen=True)
class TritonInstall:
    server: Path
    python_backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python
    libs: Path  # the wheel's bundled shared libraries

    @classmethod
    def find(cls) -> TritonInstall:
        """The bundled server, located without importing pytriton's Python API."""
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(
                f"serving needs the tritonserver that nvidia-pytriton bundles; run: {INSTALL_HINT}"
            )
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        found = cls(
            root / "bin" / "tritonserver",
            root / "backends" / "python",
            root / "python_backend_stubs" / version / "triton_python_backend_stub",
            root.parent.parent / "nvidia_pytriton.libs",
        )
        for path in (found.server, found.python_backend, found.stub):
            if not path.exists():
                raise MissingDependencyError(
                    f"{path} is missing from nvidia-pytriton (no stub for Python {version}?); "
                    f"run: {INSTALL_HINT}"
                )
        return found

    def backend_dir(self, into: Path) -> Path:
        """A backend directory whose python backend uses the stub for this interpreter."""
        python = into / "python"
        python.mkdir(parents=True)
        for item in self.python_backend.iterdir():
            (python / item.name).symlink_to(item)
        shutil.copy2(self.stub, python / "triton_python_backend_stub")
        return into

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        paths = [p for p in sys.path if p and Path(p).is_dir()]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths, env.get("PYTHONPATH", "")]))
        env["PYTHONNOUSERSITE"] = "1"
        return env


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002
    host: str = "0.0.0.0"

    def check_free(self) -> None:
        """Refuse, in one line, a port something else holds (Triton would fail less clearly)."""
        if len({self.http, self.grpc, self.metrics}) != 3:
            raise ServeError(f"--http-port, --grpc-port and --metrics-port must differ ({self})")
        for option, port in (
            ("--http-port", self.http),
            ("--grpc-port", self.grpc),
            ("--metrics-port", self.metrics),
        ):
            if not 1 <= port <= 65535:
                raise ServeError(f"{option} {port} is not a port number")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton binds: TIME_WAIT is free
                try:
                    s.bind((self.host, port))
                except OSError:
                    raise ServeError(
                        f"port {port} on {self.host} is in use; choose another {option} "
                        "(or stop what holds it)"
                    ) from None

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> Ports:
        """Three ports nothing listens on now (for tests and benchmarks on loopback)."""
        socks = [socket.socket() for _ in range(3)]
        try:
            for s in socks:
                s.bind((host, 0))
            http, grpc, metrics = (int(s.getsockname()[1]) for s in socks)
        finally:
            for s in socks:
                s.close()
        return cls(http, grpc, metrics, host)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        return f"{host}:{self.http}"


class TritonServer:
    """A ``tritonserver`` process over a model repository; stopped (by its own pid) on exit."""

    def __init__(self, repo: Path, ports: Ports, log: Path, install: TritonInstall | None = None) -> None:
        self.repo, self.ports, self.log = repo, ports, log
        self.install = install or TritonInstall.find()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, backends: Path) -> None:
        p = self.ports
        args = [
            str(self.install.server),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            f"--http-port={p.http}",
            f"--grpc-port={p.grpc}",
            f"--metrics-port={p.metrics}",
            f"--http-address={p.host}",
            f"--grpc-address={p.host}",
            f"--metrics-address={p.host}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(  # its own process group: the stubs it starts go with it
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.install.environment(),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.ports.url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServeError(f"tritonserver exited before it was ready: {self.last_log_line()}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(url, timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.25)
        raise ServeError(f"tritonserver was not ready after {timeout:.0f} s: {self.last_log_line()}")

    def last_log_line(self) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
            return (errors or lines or ["(no output)"])[-1][:300]
        return "(no log)"

    def stop(self) -> None:
        """SIGTERM (Triton drains in-flight requests), SIGKILL after STOP_TIMEOUT_S; then whatever is
        left of its process group (python-backend stubs outlive a crashed server), by the server's pid."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(
    artifacts: Sequence[str | os.PathLike[str]],
    ports: Ports,
    *,
    names: list[str] | None = None,
    max_batch_size: int | None = None,
    queue_delay_us: int = 500,
    provider: str = "cpu",
    ready_timeout: float = READY_TIMEOUT_S,
    log: Path | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> Iterator[tuple[TritonServer, list[ModelEntry]]]:
    """A ready Triton server serving ``artifacts`` (python-backend models), stopped on exit."""
    install = TritonInstall.find()
    ports.check_free()
    with tempfile.TemporaryDirectory(prefix="resnest-deploy-serve-") as tmp:
        root = Path(tmp)
        entries = write_repository(
            list(artifacts),
            root / "models",
            names=names,
            python_backend=True,
            max_batch_size=max_batch_size,
            queue_delay_us=queue_delay_us,
            provider=provider,
        )
        server = TritonServer(root / "models", ports, log or root / "tritonserver.log", install)
        say(f"starting tritonserver with {', '.join(e.name for e in entries)}")
        server.start(install.backend_dir(root / "backends"))
        try:
            server.wait_ready(ready_timeout)
            yield server, entries
        finally:
            server.stop()


def serve_forever(
    artifacts: Sequence[str | os.PathLike[str]],
    ports: Ports,
    *,
    on_ready: Callable[[list[ModelEntry]], None],
    **options: Any,
) -> int:
    """Serve until SIGINT/SIGTERM (then drain and stop) or until the server dies; its exit code."""
    stop = {"signal": 0}

    def handle(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with running(artifacts, ports, **options) as (server, entries):
            on_ready(entries)
            assert server.process is not None
            while not stop["signal"] and server.process.poll() is None:
                time.sleep(0.2)
            if server.process.poll() is not None and not stop["signal"]:
                raise ServeError(f"tritonserver stopped: {server.last_log_line()}")
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
