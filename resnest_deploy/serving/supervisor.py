"""The life of one ``tritonserver`` process and of the python-backend stubs it starts.

What this module takes care of, each learnt the hard way:

* Triton's life is tied to ours (``PR_SET_PDEATHSIG``): a SIGKILLed ``serve`` leaves no server
  holding the ports; temp repositories of dead runs (and their stubs) are removed at the next start.
* A python stub that dies is not restarted by Triton, which keeps answering ready: we watch the stubs
  and turn readiness off, so a supervisor restarts ``serve``.
* When the server dies, the cause is this run's: its exit signal and the log lines written since
  this start (``--log`` is appended to across runs).
* Triton's restricted APIs are locked with a header value no HTTP or gRPC client can send, so the
  lock's value on the command line (readable by every local user) opens nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from resnest_deploy._process import pid_alive
from resnest_deploy.errors import ServeError
from resnest_deploy.serving.triton_install import STUB, Ports, TritonInstall, free_ports

READY_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 10.0
#: the header that Triton's restricted HTTP APIs (model control, logging, trace, shared memory) check
ADMIN_HEADER = "resnest-deploy-admin"
RESTRICTED = "model-repository,logging,trace,shared-memory"
#: The lock on those APIs: a header no client can send, so it need not be secret (tritonserver 2.51
#: takes it only on its command line, which every local user can read in /proc/PID/cmdline, and has
#: no config file or environment variable for it). An HTTP/1.1 or HTTP/2 field value holds no line
#: break (RFC 9112 5.5, RFC 9113 8.2.1: such a request is malformed), and HTTP/2 field names, so gRPC
#: metadata keys, hold no capitals (RFC 9113 8.2.1).
LOCK_VALUE = "closed\nto-every-client"
GRPC_LOCK_KEY = "Closed-To-Every-Client"
RUN_PREFIX = "resnest-deploy-serve-"
_ALL_STOPPED = "All models are stopped"  # tritonserver's log, once no inference is in flight
#: error lines every CPU-only start writes: never the cause of a failure
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "GPU metrics", "CUDA driver")


class Front(Protocol):
    """What the supervisor needs of the public HTTP front (:class:`~.front.Front`)."""

    def set_ready(self, ready: bool, reason: str = "") -> None: ...
    def drain(self, timeout: float) -> object: ...
    def close(self) -> None: ...


class GrpcFront(Protocol):
    """What the supervisor needs of the public gRPC front (:class:`~.grpc_front.GrpcFront`)."""

    def close(self, grace: float = 0.0) -> None: ...


#: Starts tritonserver tied to our life (PR_SET_PDEATHSIG, kept across exec), then becomes it. Not a
#: ``preexec_fn``: that makes subprocess fork() instead of vfork(), and fork() runs gRPC's atfork
#: handlers, which (with the gRPC front's threads running) restarted a poller in the child that
#: close_fds then pulled its epoll descriptor from: tritonserver died of SIGABRT at start-up about
#: once in 70 starts. With no preexec_fn no handler runs (0 in 300).
_TIED_EXEC = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"  # 1: PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]):\n"  # we died before the tie was made
    "    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _tied_to_us(args: list[str]) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", _TIED_EXEC, str(os.getpid()), *args]


def stubs_of(run_dir: Path) -> dict[int, list[str]]:
    """Live python-backend stubs started from ``run_dir`` (pid -> argv): the stub binary is copied
    into the run's own folder, so its path names the run whatever process group or parent the stub
    has by now."""
    found: dict[int, list[str]] = {}
    binary = os.fsencode(run_dir / "backends" / "python" / STUB)
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
            m = re.match(rf"^{RUN_PREFIX}(\d+)-", entry.name)
            if m and not pid_alive(int(m.group(1))) and entry.is_dir() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    if entry.stat().st_uid == os.getuid():
                        _kill_stubs(entry)
                        shutil.rmtree(entry)
                        removed.append(entry)
    return removed


class TritonServer:
    """A ``tritonserver`` process over a model repository, its HTTP and gRPC behind fronts;
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
        self.internal_http, self.internal_grpc = free_ports(2)  # the fronts own the public ports
        self.drain_timeout = drain_timeout
        self.restricted = not admin_api  # Triton's restricted APIs locked for every client
        self.log_start = 0  # the log's size when this run started: what it wrote is after that
        self.guard: Front | None = None
        self.grpc_front: GrpcFront | None = None
        self.stubs: dict[str, int] = {}  # model name -> stub pid, once ready
        self.failure: str | None = None  # why the server can no longer answer

    def start(self, backends: Path, run_dir: Path) -> None:
        p = self.ports
        args = [
            str(self.install.server),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            f"--http-port={self.internal_http}",
            "--http-address=127.0.0.1",  # the fronts own the public ports
            f"--grpc-port={self.internal_grpc}",
            f"--metrics-port={p.metrics}",
            "--grpc-address=127.0.0.1",
            f"--metrics-address={p.host}",
            f"--exit-timeout-secs={max(1, round(self.drain_timeout))}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        if self.restricted:
            args.append(f"--http-restricted-api={RESTRICTED}:{ADMIN_HEADER}={LOCK_VALUE}")
            args.append(f"--grpc-restricted-protocol={RESTRICTED}:{GRPC_LOCK_KEY}={LOCK_VALUE}")
        with open(self.log, "ab") as log:
            self.log_start = log.seek(0, os.SEEK_END)
            self.process = subprocess.Popen(  # its own process group: the stubs it starts go with it
                _tied_to_us(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.install.environment(run_dir),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
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
        """This run's lines: ``--log`` may hold older runs' lines, whose errors are not this one's."""
        return [ln for ln in self._log_tail(self.log_start).splitlines() if ln.strip()]

    def _log_tail(self, offset: int) -> str:
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
        return ""

    def exit_status(self) -> str | None:
        """How the process ended (its signal or exit code), or None while it runs."""
        code = None if self.process is None else self.process.poll()
        if code is None:
            return None
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exited with code {code}"

    def why_not_ready(self) -> str:
        """The cause, as this run's log tells it: a model's load failure first, then the last error
        line; with the exit signal or code once the process has ended."""
        ended = self.exit_status()
        said = self._log_cause()
        return f"{ended}; {said}" if ended and said else ended or said or "(no output)"

    def _log_cause(self) -> str | None:
        lines = [ln for ln in self._log_lines() if not any(n in ln for n in _NOISE)]
        for line in lines:
            m = re.search(r"failed to load '([^']+)' version \d+: (.*)", line)
            if m:
                cause = m.group(2).encode("latin-1", "replace").decode("unicode_escape", "replace")
                cause = cause.strip().strip('"').split("\n")[0]
                cause = re.sub(r"^(Internal|Invalid argument|Unavailable): ", "", cause)
                return f"model {m.group(1)!r} did not load: {cause[:300]}"
        errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower() or "terminate" in ln]
        return errors[-1][:300] if errors else None

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
                if not pid_alive(pid) or _zombie(pid):
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
        if self.grpc_front is not None:
            self.grpc_front.close(self.drain_timeout)
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


@dataclass
class Watch:
    """Checks the server's health in the background, so readiness turns off within a second."""

    server: TritonServer
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Watch:
        threading.Thread(target=self._run, name="resnest-deploy-watch", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(0.25) and self.server.check_alive() is None:
            pass

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
