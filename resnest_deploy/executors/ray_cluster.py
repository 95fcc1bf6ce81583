"""The Ray executor: a job's images classified by an actor pool across a Ray cluster (Ray Data).

The driver lists the images and ships the artifact's bytes (and its sidecar) once through the object
store; each actor (``ray_actor``) checks their sha256 before keeping a node-local copy (``ray_node``),
opens the tool's own runner once (an ONNX file: one actor per CPU slot; an engine: one per GPU, and
a cluster without a GPU refuses it up front), then reads, decodes and preprocesses its batches with
the tool's own transform. Ray restarts dead actors and retries their batches, so a batch can run
twice: outcomes are deduplicated by image index, never counted by arrival, and a job that cannot
account for every image stops with one line (``ray_connect``). ``predict -o`` rows are written by
Ray Data's writers (``ray_write``).

``ray`` is imported only in these modules, lazily (the ``[ray]`` extra).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.artifacts import artifact_kind
from resnest_deploy.errors import ArtifactError
from resnest_deploy.executors import Classified, ClusterError, Progress, R, S, T, WriteReport, exactly_once
from resnest_deploy.executors.meter import Meter
from resnest_deploy.executors.ray_actor import ClassifyActor, outcome
from resnest_deploy.executors.ray_connect import configure, connect, one_line_errors
from resnest_deploy.executors.ray_node import Sidecar, sha256
from resnest_deploy.executors.work import ClassifyJob, ImageOutcome
from resnest_deploy.loaders import check_engine_options

#: images per block handed to the pool: a few batches, so a lost actor loses little work
BATCHES_PER_BLOCK = 4
#: CPUs an engine actor holds beside its GPU: it reads, decodes and preprocesses its batches
ENGINE_ACTOR_CPUS = 1.0
#: a job with no progress this long stops with one line instead of waiting for lost nodes
STALL_TIMEOUT_S = 600.0


class RayExecutor:
    """Runs jobs on the Ray cluster at ``address`` (``auto``: the one ``ray start`` left on this
    machine, or ``RAY_ADDRESS``). ``report`` receives progress lines (images done, images/s)."""

    name = "ray"

    def __init__(
        self,
        address: str,
        *,
        cpus_per_actor: float = 1.0,
        report: Callable[[str], None] | None = None,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        self.ray = _deps.require("ray")
        self.cpus_per_actor = cpus_per_actor
        self.report = report
        self._owns = connect(self.ray, address)
        configure(self.ray, stall_timeout_s)

    def actors(self) -> int:
        """As many actors as the cluster has CPUs for, at least one."""
        cpus = float(self.ray.cluster_resources().get("CPU", 0.0))
        return max(1, int(cpus // self.cpus_per_actor))

    def gpus(self) -> int:
        """Whole GPUs the cluster has (``ray.cluster_resources()["GPU"]``): one engine actor each."""
        return int(float(self.ray.cluster_resources().get("GPU", 0.0)))

    def _pool(self, job: ClassifyJob) -> dict[str, Any]:
        """How many actors and what each holds: one per CPU slot for an ONNX file, one per GPU
        (and a CPU to decode its images) for an engine. A cluster with no GPU refuses an engine
        here, before anything is shipped: Ray would wait for one forever."""
        if not job.artifact.is_file:
            raise ArtifactError("the Ray executor runs files; export the model to ONNX first")
        kind = artifact_kind(job.artifact.path)
        if kind != "engine":
            return {"size": self.actors(), "num_cpus": self.cpus_per_actor}
        check_engine_options(job.options)  # a user's mistake, said before the cluster's
        gpus = self.gpus()
        if gpus < 1:
            raise ClusterError(
                f"{Path(job.artifact.path).name} is a TensorRT engine, which runs on a GPU, and the Ray "
                "cluster has none; add a GPU worker group (`ray start --num-gpus N` on GPU nodes, "
                "`k8s --ray-job --worker-gpus N`) or run it without {ray_address}",
                param="ray_address",
            )
        return {"size": gpus, "num_cpus": ENGINE_ACTOR_CPUS, "num_gpus": 1}

    def _dataset(self, job: ClassifyJob, items: Sequence[tuple[int, str]]) -> Any:
        """The images as a Ray Dataset of (index, path), classified by the actor pool."""
        pool = self._pool(job)
        blob = Path(job.artifact.path).read_bytes()
        if sha256(blob) != job.artifact.sha256:
            raise ArtifactError(f"{job.artifact.path} changed since it was measured; run the job again")
        blob_ref = self.ray.put(blob)
        data = self.ray.data
        size = job.options.batch * BATCHES_PER_BLOCK
        blocks = min(max(1, math.ceil(len(items) / size)), 100_000)
        ds = data.from_items([{"index": i, "path": p} for i, p in items], override_num_blocks=blocks)
        return ds.map_batches(
            ClassifyActor,
            fn_constructor_args=(job, [blob_ref], Sidecar.of(job.artifact.path)),
            batch_size=job.options.batch,
            batch_format="pyarrow",
            compute=data.ActorPoolStrategy(min_size=1, max_size=pool.pop("size")),
            **pool,
        )

    def classify(
        self, job: ClassifyJob, items: Sequence[tuple[int, str]], advance: Progress | None = None
    ) -> Classified:
        seen: dict[int, ImageOutcome] = {}
        backend = ""
        meter = Meter(len(items), self.report)
        with one_line_errors():
            for batch in self._dataset(job, items).iter_batches(batch_format="pyarrow", batch_size=None):
                new = 0
                for row in batch.to_pylist():
                    backend = backend or row["backend"]
                    if row["index"] not in seen:  # a retried batch comes back twice: count it once
                        seen[row["index"]] = outcome(row)
                        new += 1
                meter.add(new)
                if advance:
                    advance(new)
        meter.done()
        return Classified(exactly_once(items, seen.values()), backend)

    def write(
        self,
        job: ClassifyJob,
        items: Sequence[tuple[int, str]],
        output: Path,
        advance: Progress | None = None,
    ) -> WriteReport:
        """Rows written by Ray Data's writers into the folder ``output`` (one part file per block),
        after every image is accounted for exactly once; nothing is left behind on failure."""
        from resnest_deploy.executors.ray_write import write_dataset
        from resnest_deploy.executors.rows import format_of

        fmt = format_of(output)
        if output.exists():
            raise ArtifactError(f"{output} exists; Ray writes a new folder there: remove it or pick another")
        tmp = output.with_name(f".{output.name}.{os.getpid()}.partial")
        start = time.monotonic()
        try:
            with one_line_errors():
                errors = write_dataset(
                    self.ray, self._dataset(job, items), len(items), str(tmp), fmt, job.topk
                )
            os.replace(tmp, output)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if self.report:
            elapsed = time.monotonic() - start
            self.report(
                f"{len(items)} images in {elapsed:.1f} s ({len(items) / max(elapsed, 1e-9):.1f} images/s)"
            )
        if advance:
            advance(len(items))
        return WriteReport(len(items) - len(errors), errors, str(output))

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T]) -> list[R]:
        """One Ray task per item (one CPU each), ``shared`` put in the object store once; results
        by position, so a retried task (Ray retries those of a lost node) is never counted twice."""
        remote = self.ray.remote(num_cpus=self.cpus_per_actor, max_retries=3)(fn)
        with one_line_errors():
            ref = self.ray.put(shared)
            futures = [remote.remote(ref, item) for item in items]
            results: list[R] = []
            meter = Meter(len(items), self.report, "trials")
            for future in futures:
                results.append(self.ray.get(future))
                meter.add(1)
            meter.done()
        return results

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
