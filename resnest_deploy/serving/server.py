"""A real Triton Inference Server for any artifact: the ``tritonserver`` that ``nvidia-pytriton`` bundles.

That wheel carries a genuine ``tritonserver`` (2.51, python backend only) that runs on a CPU-only
machine, with a python-backend stub for each Python version. We use those files and not pytriton's
Python API, whose metadata pins ``numpy<2``; so it is installed with ``pip install --no-deps
nvidia-pytriton``, and this project keeps numpy 2. Every artifact becomes a python-backend model that
runs it through this package's runners, with Triton's dynamic batching, classification extension,
metadata, health and statistics endpoints.

What this module takes care of, each learnt the hard way:

* The stub embeds Python: it must load *this* interpreter's libpython (``LD_LIBRARY_PATH``), and it
  ignores ``PYTHONPATH``: it finds its packages by resolving ``python3`` on ``PATH``. So ``PATH``
  starts with this interpreter's own folder, and ``model.py`` adopts this interpreter's ``sys.path``
  and site folders (``.pth`` files, editable installs) from a file we write: ``serve`` started by path,
  from cron or systemd, sees exactly the packages of the interpreter that runs it.
* Triton's HTTP port sits behind :mod:`.guard` (a request declaring a huge shape aborts tritonserver).
* Triton's life is tied to ours (``PR_SET_PDEATHSIG``): a SIGKILLed ``serve`` leaves no server
  holding the ports; temp repositories of dead runs are removed at the next start.
* A python stub that dies is not restarted by Triton, which keeps answering ready: we watch the stubs
  and turn readiness off and stop, so a supervisor restarts ``serve``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnest_deploy._io import _alive, refuse_overwrite, write_json
from resnest_deploy.errors import MissingDependencyError, ResnestDeployError
from resnest_deploy.serving.guard import Guard
from resnest_deploy.serving.repository import ModelEntry, write_repository

INSTALL_HINT = "pip install --no-deps 'nvidia-pytriton>=0.7'"
READY_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 10.0
#: the environment variable that tells model.py where this interpreter's environment is described
ENV_FILE_VAR = "RESNEST_DEPLOY_PYTHON_ENV"
#: the header that unlocks Triton's restricted APIs (model control, logging, trace, shared memory)
ADMIN_HEADER = "resnest-deploy-admin"
RESTRICTED = "model-repository,logging,trace,shared-memory"
_RUN_PREFIX = "resnest-deploy-serve-"
_STUB = "triton_python_backend_stub"
_ALL_STOPPED = "All models are stopped"  # tritonserver's log, once no inference is in flight


class ServeError(ResnestDeployError):
    pass


def python_environment() -> dict[str, Any]:
    """What model.py needs to see exactly this interpreter's packages."""
    site_dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        site_dirs.append(site.getusersitepackages())
    paths = [p for p in sys.path if p and Path(p).exists()]
    spec = importlib.util.find_spec("resnest_deploy")
    return {
        "executable": sys.executable,
        "sys_path": paths,
        "site_dirs": [d for d in site_dirs if Path(d).is_dir()],
        "package": spec.origin if spec else None,
    }


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
            root / "python_backend_stubs" / version / _STUB,
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
        shutil.copy2(self.stub, python / _STUB)
        return into

    def environment(self, run_dir: Path) -> dict[str, str]:
        """tritonserver's environment: this libpython, and a ``python3`` on ``PATH`` that is this
        interpreter (a venv's ``bin`` makes the stub read its ``pyvenv.cfg``)."""
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        here = Path(sys.executable).parent
        if not (here / "python3").exists():
            here = run_dir / "bin"
            here.mkdir(exist_ok=True)
            (here / "python3").symlink_to(sys.executable)
        env["PATH"] = os.pathsep.join(p for p in (str(here), env.get("PATH", "")) if p)
        env.pop("PYTHONPATH", None)  # the stub ignores it; model.py adopts sys.path from the file below
        env_file = run_dir / "python-environment.json"
        env_file.write_text(json.dumps(python_environment()))
        env[ENV_FILE_VAR] = str(env_file)
        env["PYTHONNOUSERSITE"] = "1"
        return env


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002
    host: str = "127.0.0.1"

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
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton binds: TIME_WAIT is free
                try:
                    s.bind((self.host, port))
                except OSError as e:
                    raise ServeError(
                        f"cannot listen on {self.host}:{port} ({e.strerror}); choose another {option} "
                        "or --host (or stop what holds the port)"
                    ) from None

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> Ports:
        """Three ports nothing listens on now (for tests and benchmarks on loopback)."""
        http, grpc, metrics = free_ports(3, host)
        return cls(http, grpc, metrics, host)

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        return f"[{host}]:{self.http}" if ":" in host and not host.startswith("[") else f"{host}:{self.http}"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def stubs_of(run_dir: Path) -> dict[int, list[str]]:
    """Live python-backend stubs started from ``run_dir`` (pid -> argv): the stub binary is copied
    into the run's own folder, so its path names the run whatever process group or parent the stub
    has by now."""
    found: dict[int, list[str]] = {}
    binary = os.fsencode(run_dir / "backends" / "python" / _STUB)
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[0] == binary and len(argv) > 1 and not _zombie(int(entry.name)):
                    found[int(entry.name)] = [os.fsdecode(a) for a in argv if a]
    return found


def _kill_stubs(run_dir: Path) -> None:
    for pid in stubs_of(run_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def clean_stale_runs(root: Path | None = None) -> list[Path]:
    """Temp repositories that ``serve`` runs killed with SIGKILL left behind (their pid is gone), and
    any python stub of theirs still running."""
    removed = []
    root = root or Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            m = re.match(rf"^{_RUN_PREFIX}(\d+)-", entry.name)
            if m and not _alive(int(m.group(1))) and entry.is_dir() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    if entry.stat().st_uid == os.getuid():
                        _kill_stubs(entry)
                        shutil.rmtree(entry)
                        removed.append(entry)
    return removed


class TritonServer:
    """A ``tritonserver`` process over a model repository, its HTTP behind a :class:`Guard`;
    stopped (by its own pid) on exit, and killed by the kernel if this process dies first."""

    def __init__(
        self,
        repo: Path,
        ports: Ports,
        log: Path,
        install: TritonInstall | None = None,
        *,
        drain_timeout: float = DRAIN_TIMEOUT_S,
        admin_api: bool = False,
    ) -> None:
        self.repo, self.ports, self.log = repo, ports, log
        self.install = install or TritonInstall.find()
        self.process: subprocess.Popen[bytes] | None = None
        self.internal_http = free_ports(1)[0]
        self.drain_timeout = drain_timeout
        self.admin_key = None if admin_api else secrets.token_hex(16)
        self.guard: Guard | None = None
        self.stubs: dict[str, int] = {}  # model name -> stub pid, once ready
        self.failure: str | None = None  # why the server can no longer answer

    def start(self, backends: Path, run_dir: Path) -> None:
        p = self.ports
        args = [
            str(self.install.server),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            f"--http-port={self.internal_http}",
            "--http-address=127.0.0.1",  # the guard is the public HTTP port
            f"--grpc-port={p.grpc}",
            f"--metrics-port={p.metrics}",
            f"--grpc-address={p.host}",
            f"--metrics-address={p.host}",
            f"--exit-timeout-secs={max(1, round(self.drain_timeout))}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        if self.admin_key:
            args.append(f"--http-restricted-api={RESTRICTED}:{ADMIN_HEADER}={self.admin_key}")
            args.append(f"--grpc-restricted-protocol={RESTRICTED}:{ADMIN_HEADER}={self.admin_key}")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(  # its own process group: the stubs it starts go with it
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.install.environment(run_dir),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def wait_ready(
        self, timeout: float = READY_TIMEOUT_S, should_stop: Callable[[], bool] = lambda: False
    ) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.internal_http}/v2/health/ready"
        while time.monotonic() < deadline:
            if should_stop():
                raise ServeError("stopped by a signal before the server was ready")
            if self.process is None or self.process.poll() is not None:
                raise ServeError(f"tritonserver exited before it was ready: {self.why_not_ready()}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(url, timeout=2) as r,
            ):
                if r.status == 200:
                    self.stubs = self._stub_pids()
                    return
            time.sleep(0.1)
        raise ServeError(f"tritonserver was not ready after {timeout:.0f} s: {self.why_not_ready()}")

    def _log_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        return []

    def _log_tail(self, offset: int) -> str:
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
        return ""

    def why_not_ready(self) -> str:
        """The cause, as the log tells it: a model's load failure first, then the last error line."""
        lines = self._log_lines()
        for line in lines:
            m = re.search(r"failed to load '([^']+)' version \d+: (.*)", line)
            if m:
                cause = m.group(2).encode("latin-1", "replace").decode("unicode_escape", "replace")
                cause = cause.strip().strip('"').split("\n")[0]
                cause = re.sub(r"^(Internal|Invalid argument|Unavailable): ", "", cause)
                return f"model {m.group(1)!r} did not load: {cause[:300]}"
        errors = [ln for ln in lines if ln.startswith("E") or "error:" in ln.lower()]
        return (errors or lines or ["(no output)"])[-1][:300]

    def _stub_pids(self) -> dict[str, int]:
        """The python-backend stub of each model, by the model.py it runs."""
        return {Path(argv[1]).parent.parent.name: pid for pid, argv in stubs_of(self.repo.parent).items()}

    def check_alive(self) -> str | None:
        """Why the server can no longer answer (it exited, or a model's stub died), or None."""
        if self.failure:
            return self.failure
        if self.process is None or self.process.poll() is not None:
            self.failure = f"tritonserver stopped: {self.why_not_ready()}"
        else:
            for model, pid in self.stubs.items():
                if not _alive(pid) or _zombie(pid):
                    self.failure = (
                        f"the python backend process of model {model!r} (pid {pid}) died and Triton does "
                        "not restart it"
                    )
        if self.failure and self.guard is not None:
            self.guard.set_ready(False, self.failure)
        return self.failure

    def stop(self) -> None:
        """Drain (the guard's requests in flight), SIGTERM (Triton waits for its own, then exits),
        SIGKILL after the drain timeout; then whatever is left of its process group, by its pid."""
        if self.guard is not None:
            self.guard.drain(self.drain_timeout)
        if self.process is not None:
            if self.process.poll() is None:
                seen = self.log.stat().st_size if self.log.exists() else 0
                self.process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + self.drain_timeout + 5
                # Triton then polls once a second (connections, in-flight inferences, model unloads);
                # once nothing is in flight, what is left is unloading, which a kill does as well
                while self.process.poll() is None and time.monotonic() < deadline:
                    if _ALL_STOPPED in self._log_tail(seen):
                        break
                    time.sleep(0.05)
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait(10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            _kill_stubs(self.repo.parent)  # a stub spawned while the server was killed outlives its group
        if self.guard is not None:
            self.guard.close()


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def _model_limits(entries: list[ModelEntry]) -> dict[str, int]:
    return {e.name: e.max_batch_size * e.sample_elements for e in entries}


@dataclass
class _Watch:
    """Checks the server's health in the background, so readiness turns off within a second."""

    server: TritonServer
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> _Watch:
        threading.Thread(target=self._run, name="resnest-deploy-watch", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(0.25) and self.server.check_alive() is None:
            pass

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


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
    should_stop: Callable[[], bool] = lambda: False,
    say: Callable[[str], None] = lambda _m: None,
) -> Iterator[tuple[TritonServer, list[ModelEntry]]]:
    """A ready Triton server serving ``artifacts`` (python-backend models), stopped on exit."""
    install = TritonInstall.find()
    if log is not None:
        refuse_overwrite([log], artifacts)
    ports.check_free()
    clean_stale_runs()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{_RUN_PREFIX}{os.getpid()}-"))
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
        guard = Guard(ports.host, ports.http, server.internal_http, _model_limits(entries))
        try:
            guard.bind()
        except OSError as e:
            raise ServeError(f"cannot listen on HTTP {e.strerror}; choose another --http-port") from None
        server.guard = guard
        guard.start()  # answers not-ready until Triton is
        say(f"starting tritonserver with {', '.join(e.name for e in entries)}")
        try:
            server.start(install.backend_dir(run_dir / "backends"), run_dir)
            server.wait_ready(ready_timeout, should_stop)
            guard.set_ready(True)
            with _Watch(server):
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
