"""Time to first inference: how long a fresh process takes to answer, with and without its cache.

A restart (a reboot, a new pod, a new node) pays for everything a warm process has already done:
imports, reading the file, the runtime's compilation. The runtime caches of :mod:`resnest_deploy.cache`
save the compilation. Each figure here comes from a process of its own, so nothing a previous
measurement loaded or compiled is still in memory: *cold* starts with an empty cache root, *warm*
with the cache the cold process filled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resnest_deploy.errors import ArtifactError, first_line

#: a child that takes longer than this is stopped: a bounded measurement
CHILD_TIMEOUT_S = 600.0


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc), so start-up figures include the
    interpreter and the imports; ``None`` where the kernel does not say."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class StartRun:
    """One fresh process: what it took to answer once."""

    open_ms: float  # from opening the artifact to its first answer, in the process
    process_ms: float  # from the process's start (interpreter, imports) to its first answer
    cache: str | None  # the cache kind the runner was handed, if any
    hit: bool  # whether that cache held a verified entry


@dataclass(frozen=True)
class FirstInference:
    artifact: str
    backend: str
    batch: int
    cold: StartRun  # empty cache root
    warm: StartRun  # the cache the cold process filled

    @property
    def speedup(self) -> float:
        return round(self.cold.process_ms / max(self.warm.process_ms, 1e-9), 2)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"speedup": self.speedup}


def first_answer(artifact: str, provider: str = "cpu", batch: int = 1) -> dict[str, Any]:
    """Open ``artifact`` and answer one batch, in this process; what ``measure`` runs in a child."""
    from resnest_deploy.artifacts import Lineup
    from resnest_deploy.data import random_inputs
    from resnest_deploy.runners.options import RunnerOptions

    started = time.perf_counter()
    lineup = Lineup.of([artifact])
    with lineup.runner(lineup.infos[0], RunnerOptions.from_provider(provider)) as runner:
        runner.infer(random_inputs(batch, lineup.size))
        open_ms = (time.perf_counter() - started) * 1e3
        age = process_age_s()
        inner = getattr(runner, "inner", runner)
        folder = getattr(inner, "cache_folder", None)
        return {
            "open_ms": round(open_ms, 1),
            "process_ms": round(age * 1e3, 1) if age is not None else None,
            "backend": runner.backend,
            "cache": getattr(folder, "kind", None),
            "hit": bool(getattr(folder, "hit", False)),
        }


def _child(artifact: str, provider: str, batch: int, cache_root: Path) -> dict[str, Any]:
    from resnest_deploy.cache import CACHE_ENV

    env = os.environ | {CACHE_ENV: str(cache_root)}
    cmd = [sys.executable, "-m", "resnest_deploy.startup", artifact, provider, str(batch)]
    spawned = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ArtifactError(f"opening {artifact} took over {CHILD_TIMEOUT_S:.0f} s; not measured") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArtifactError(f"a fresh process could not run {artifact}: {last}")
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise ArtifactError(f"the timing process for {artifact} printed no result ({first_line(e)})") from e
    if result.get("process_ms") is None:  # no /proc: the spawn-to-exit wall time is the bound
        result["process_ms"] = round((time.perf_counter() - spawned) * 1e3, 1)
    return result


def measure(artifact: str | os.PathLike[str], provider: str = "cpu", batch: int = 1) -> FirstInference:
    """Cold then warm first inference of ``artifact``, each in a fresh process, against a cache
    root of their own (removed after): the user's cache is neither read nor changed."""
    text = os.fspath(artifact)
    root = Path(tempfile.mkdtemp(prefix="resnest-deploy-firstinf-"))
    try:
        cold = _child(text, provider, batch, root)
        warm = _child(text, provider, batch, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    runs = [
        StartRun(float(r["open_ms"]), float(r["process_ms"]), r.get("cache"), bool(r.get("hit")))
        for r in (cold, warm)
    ]
    return FirstInference(text, str(cold.get("backend")), batch, runs[0], runs[1])


if __name__ == "__main__":  # the child of `measure`: one JSON line on stdout
    artifact_arg, provider_arg, batch_arg = sys.argv[1:4]
    print(json.dumps(first_answer(artifact_arg, provider_arg, int(batch_arg))), flush=True)
