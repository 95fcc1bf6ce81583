"""Several providers in one table, each timed in a process of its own: two runtimes in one process
share its threads and memory. The parent and its workers speak JSON lines (``BenchResult.as_dict``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

from resnest_deploy.bench.loop import bench
from resnest_deploy.bench.plan import BenchPlan
from resnest_deploy.bench.result import BenchResult
from resnest_deploy.errors import ResnestDeployError


def bench_providers(
    artifacts: Sequence[str | os.PathLike[str]],
    plan: BenchPlan,
    providers: Sequence[str],
    *,
    arch: str | None = None,
    weights: str | None = None,
    on_cell: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Several providers in one table, each timed in a process of its own: the first runs every
    artifact (a provider that does not apply to PyTorch or an engine is refused, as always), the
    others the .onnx files again. Each process sends a line per cell as it is timed, so progress
    shows as it goes. One provider is timed in this process."""
    if len(providers) == 1:
        return bench(
            artifacts, replace(plan, provider=providers[0]), arch=arch, weights=weights, on_cell=on_cell
        )
    rows: list[BenchResult] = []
    for k, provider in enumerate(providers):
        chosen = [os.fspath(a) for a in artifacts if k == 0 or str(a).lower().endswith(".onnx")]
        if chosen:
            job = {
                "artifacts": chosen,
                "plan": asdict(replace(plan, provider=provider)),
                "arch": arch,
                "weights": weights,
            }
            rows += _in_own_process(job, on_cell)
    return rows


def _in_own_process(job: dict[str, Any], on_cell: Callable[[BenchResult], None] | None) -> list[BenchResult]:
    """One provider's rows from ``python -m resnest_deploy.bench JOB``; its error as one line."""
    rows: list[BenchResult] = []
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "resnest_deploy.bench", json.dumps(job)],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            error: dict[str, Any] | None = None
            assert proc.stdout is not None
            for line in proc.stdout:
                message = json.loads(line)
                if "cell" in message and on_cell:
                    on_cell(BenchResult.from_dict(message["cell"]))
                elif "rows" in message:
                    rows += [BenchResult.from_dict(d) for d in message["rows"]]
                elif "error" in message:
                    error = message["error"]
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: stop our own child, by its pid
                proc.kill()
                proc.wait(10)
        if code:
            log.seek(0)
            tail = [ln for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
            raise _failed(job["plan"]["provider"], error, tail[-1] if tail else f"exit status {code}")
    return rows


def _failed(provider: str, error: dict[str, Any] | None, last_line: str) -> ResnestDeployError:
    """The worker's error as the parent raises it: its message and the parameters it names (they
    travel as the JSON line's ``template`` and ``params``), after the provider that failed."""
    named = f"{{provider={provider}}}: "
    if error is None:
        return ResnestDeployError(named + last_line, param="provider")
    params = ("provider", *(str(p) for p in error.get("params", ())))
    code = int(error.get("exit_code", 1))
    return ResnestDeployError(named + str(error["template"]), param=params, exit_code=code)


def worker(argv: Sequence[str]) -> int:
    """``python -m resnest_deploy.bench JOB``: one provider's cells, a JSON line each (stdout)."""
    job = json.loads(argv[0])

    def send(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    try:
        rows = bench(
            job["artifacts"],
            BenchPlan(**job["plan"]),
            arch=job["arch"],
            weights=job["weights"],
            on_cell=lambda r: send({"cell": r.as_dict()}),
        )
    except ResnestDeployError as e:
        send({"error": {"template": e.template, "params": list(e.params), "exit_code": e.exit_code}})
        return 1
    send({"rows": [r.as_dict() for r in rows]})
    return 0
