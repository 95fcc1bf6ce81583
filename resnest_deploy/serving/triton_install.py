"""Where the bundled ``tritonserver`` is and how it must be started: the install, its environment
and the ports it gets.

``nvidia-pytriton`` carries a genuine ``tritonserver`` (2.51, python backend only) that runs on a
CPU-only machine, with a python-backend stub for each Python version. We use those files and not
pytriton's Python API, whose metadata pins ``numpy<2``; so it is installed with ``pip install --no-deps
nvidia-pytriton``, and this project keeps numpy 2.

The stub embeds Python: it must load *this* interpreter's libpython (``LD_LIBRARY_PATH``), and it
ignores ``PYTHONPATH``: it finds its packages by resolving ``python3`` on ``PATH``. So ``PATH`` starts
with this interpreter's own folder, and ``model.py`` adopts this interpreter's ``sys.path`` and site
folders (``.pth`` files, editable installs) from a file we write: ``serve`` started by path, from cron
or systemd, sees exactly the packages of the interpreter that runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import socket
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy.errors import MissingDependencyError, ServeError

INSTALL_HINT = "pip install --no-deps 'nvidia-pytriton>=0.7'"
#: the environment variable that tells model.py where this interpreter's environment is described
ENV_FILE_VAR = "RESNEST_DEPLOY_PYTHON_ENV"
STUB = "triton_python_backend_stub"


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
            root / "python_backend_stubs" / version / STUB,
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
        shutil.copy2(self.stub, python / STUB)
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
            raise ServeError(
                f"{{http_port}}, {{grpc_port}} and {{metrics_port}} must differ ({self})",
                param=("http_port", "grpc_port", "metrics_port"),
            )
        for option, port in (
            ("http_port", self.http),
            ("grpc_port", self.grpc),
            ("metrics_port", self.metrics),
        ):
            if not 1 <= port <= 65535:
                raise ServeError(f"{{{option}}} {port} is not a port number", param=option)
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton binds: TIME_WAIT is free
                try:
                    s.bind((self.host, port))
                except OSError as e:
                    where, why = f"{self.host}:{port}", e.strerror
                    raise ServeError(
                        (
                            f"cannot listen on {where} ({why}); choose another {{{option}}} "
                            f"or {{host}} (or stop what holds the port)"
                        ),
                        param=(option, "host"),
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
