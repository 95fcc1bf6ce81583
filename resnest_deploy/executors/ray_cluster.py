"""The Ray executor: a job's images classified by an actor pool across a Ray cluster (Ray Data).

The driver lists the images and ships the artifact's bytes once through the object store; each actor
checks their sha256 before keeping a node-local copy, opens the tool's own runner once (one ONNX
Runtime or OpenVINO session, its threads set to the actor's CPUs), then reads, decodes and
preprocesses its batches with the tool's own transform. Ray restarts dead actors and retries their
batches, so a batch can run twice: outcomes are deduplicated by image index, never counted by
arrival, and a job that cannot account for every image stops with one line.

``ray`` is imported only here, lazily (the ``[ray]`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError, ResnestDeployError, first_line
from resnest_deploy.executors import (
    Classified,
    ClusterError,
    Progress,
    R,
    S,
    T,
    WriteReport,
    exactly_once,
)
from resnest_deploy.executors.work import ArtifactRef, Classifier, ClassifyJob, ImageOutcome

#: where a node keeps the artifacts it was sent, by sha256 (checked again on every use)
NODE_CACHE = Path(tempfile.gettempdir()) / "resnest-deploy-ray"
#: artifacts a node keeps (the most recently used); older copies are removed when a job starts
KEEP_ARTIFACTS = 4
#: a copy used this recently is kept whatever its rank: a job running beside this one may still open it
KEEP_RECENT_S = 600.0
#: images per block handed to the pool: a few batches, so a lost actor loses little work
BATCHES_PER_BLOCK = 4
#: a job with no progress this long stops with one line instead of waiting for lost nodes
STALL_TIMEOUT_S = 600.0


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def node_copy(blob: bytes, ref: ArtifactRef, cache: Path = NODE_CACHE, keep: int = KEEP_ARTIFACTS) -> Path:
    """The artifact as a file on this node, its content checked: the bytes received must hash to
    the sha256 the driver measured, and a copy already on the node is used only if it still does.
    The node keeps the ``keep`` most recently used artifacts (``prune``): without a bound, every
    model a cluster ever evaluated stayed in its nodes' /tmp."""
    node = socket.gethostname()
    got = _sha256(blob)
    if got != ref.sha256:
        raise ArtifactError(
            f"node {node} received {Path(ref.path).name} with sha256 {got[:16]}, not {ref.sha256[:16]} "
            "as the driver measured; the file changed during the job: refusing it, run it again"
        )
    dest = cache / ref.sha256 / Path(ref.path).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.utime(dest.parent)  # used now: the newest, whatever prune removes
    if not (dest.is_file() and _file_sha256(dest) == ref.sha256):
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        try:
            tmp.write_bytes(blob)
            if _file_sha256(tmp) != ref.sha256:
                raise ArtifactError(
                    f"node {node} could not write an intact copy of {dest.name}; check its disk"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    prune(cache, keep)
    return dest


def prune(cache: Path, keep: int = KEEP_ARTIFACTS, recent_s: float = KEEP_RECENT_S) -> list[Path]:
    """Remove the node's artifact copies beyond the ``keep`` most recently used, except those used
    within ``recent_s`` (another job may be opening one). Only folders named by a sha256 are
    touched, never a link or anything else in ``cache``; returns what was removed."""
    try:
        entries = [p for p in cache.iterdir() if _SHA256.fullmatch(p.name)]
    except OSError:
        return []
    folders = []
    for p in entries:
        try:
            st = p.lstat()
        except OSError:
            continue  # removed meanwhile by another actor's prune
        if stat.S_ISDIR(st.st_mode):
            folders.append((st.st_mtime, p))
    folders.sort(reverse=True)
    now = time.time()
    removed = []
    for mtime, p in folders[keep:]:
        if now - mtime >= recent_s:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


class ClassifyActor:
    """One per actor slot: the artifact checked and opened once, then batches of (index, path)."""

    def __init__(self, job: ClassifyJob, blob_box: list[Any]) -> None:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        path = node_copy(ray.get(blob_box[0]), job.artifact)
        self.classifier = Classifier(job, str(path), threads=max(1, int(cpus)))

    def __call__(self, batch: Any) -> Any:
        items = list(zip(batch.column("index").to_pylist(), batch.column("path").to_pylist(), strict=True))
        return table(self.classifier.classify(items), self.classifier.backend)


def table(outcomes: Sequence[ImageOutcome], backend: str) -> Any:
    """Outcomes as an Arrow table: a fixed schema, whatever a batch holds."""
    pa = _deps.require("pyarrow")
    rows = [
        {
            "index": o.index,
            "path": o.path,
            "classes": list(o.classes),
            "labels": list(o.labels),
            "probabilities": list(o.probabilities),
            "error": o.error,
            "backend": backend,
        }
        for o in outcomes
    ]
    return pa.Table.from_pylist(rows, schema=_schema())


def _schema() -> Any:
    pa = _deps.require("pyarrow")
    return pa.schema(
        [
            ("index", pa.int64()),
            ("path", pa.string()),
            ("classes", pa.list_(pa.int64())),
            ("labels", pa.list_(pa.string())),
            ("probabilities", pa.list_(pa.float64())),
            ("error", pa.string()),
            ("backend", pa.string()),
        ]
    )


def _outcome(row: dict[str, Any]) -> ImageOutcome:
    return ImageOutcome(
        int(row["index"]),
        row["path"],
        tuple(row["classes"] or ()),
        tuple(row["labels"] or ()),
        tuple(row["probabilities"] or ()),
        row["error"],
    )


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that accepts no connection is refused in seconds (``ray.init`` retries for
    minutes); ``auto`` is left to Ray, which answers at once when no cluster runs here."""
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address!r} ({e.strerror or e}); start one with "
            "`ray start --head` or give its address (--ray HOST:6379, or RAY_ADDRESS)"
        ) from None


def _user_error(exc: BaseException) -> ResnestDeployError | None:
    """Our own error inside Ray's wrappers (a task error, a user-code exception), if there is one."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ResnestDeployError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _one_line(e: ResnestDeployError) -> str:
    return str(e.args[0]) if e.args else first_line(e)


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
        self.stall_timeout_s = stall_timeout_s
        self._owns = not self.ray.is_initialized()
        if self._owns:
            _check_reachable(address)
            try:
                with _quiet_stdout():
                    self.ray.init(
                        address=address,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                        include_dashboard=False,
                    )
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ClusterError(
                    f"cannot reach a Ray cluster at {address!r} ({first_line(e)}); start one with "
                    "`ray start --head` or give its address (--ray HOST:6379, or RAY_ADDRESS)"
                ) from None
        self._configure()

    def _configure(self) -> None:
        ctx = self.ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results in the images' order
        ctx.enable_progress_bars = False  # the driver reports its own progress on stderr
        ctx.execution_no_progress_timeout_s = self.stall_timeout_s
        ctx.log_internal_stack_trace = False
        logging.getLogger("ray").setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    def actors(self) -> int:
        """As many actors as the cluster has CPUs for, at least one."""
        cpus = float(self.ray.cluster_resources().get("CPU", 0.0))
        return max(1, int(cpus // self.cpus_per_actor))

    def _dataset(self, job: ClassifyJob, items: Sequence[tuple[int, str]]) -> Any:
        if not job.artifact.is_file:
            raise ArtifactError("the Ray executor runs files; export the model to ONNX first")
        if Path(job.artifact.path).suffix.lower() != ".onnx":
            raise ArtifactError(
                f"{job.artifact.path}: the Ray executor runs .onnx files (ONNX Runtime, OpenVINO); "
                "run engines without --ray"
            )
        blob = Path(job.artifact.path).read_bytes()
        if _sha256(blob) != job.artifact.sha256:
            raise ArtifactError(f"{job.artifact.path} changed since it was measured; run the job again")
        blob_ref = self.ray.put(blob)
        data = self.ray.data
        size = job.options.batch * BATCHES_PER_BLOCK
        blocks = min(max(1, math.ceil(len(items) / size)), 100_000)
        ds = data.from_items([{"index": i, "path": p} for i, p in items], override_num_blocks=blocks)
        actors = self.actors()
        return ds.map_batches(
            ClassifyActor,
            fn_constructor_args=(job, [blob_ref]),
            batch_size=job.options.batch,
            batch_format="pyarrow",
            compute=data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=self.cpus_per_actor,
        )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Ray's failures as one line: our own error as it was raised on the node, anything else
        (a lost node Ray could not recover from, a stalled job) as what happened and what to do."""
        try:
            with _quiet_stdout():
                yield
        except ResnestDeployError:
            raise
        except Exception as e:
            ours = _user_error(e)
            if ours is not None:
                raise ClusterError(_one_line(ours)) from None
            raise ClusterError(
                f"the Ray job failed ({type(e).__name__}: {first_line(e)}); no result was kept: "
                "check the cluster (`ray status`) and run it again"
            ) from None

    def classify(
        self, job: ClassifyJob, items: Sequence[tuple[int, str]], advance: Progress | None = None
    ) -> Classified:
        seen: dict[int, ImageOutcome] = {}
        backend = ""
        meter = _Meter(len(items), self.report)
        with self._errors():
            for batch in self._dataset(job, items).iter_batches(batch_format="pyarrow", batch_size=None):
                new = 0
                for row in batch.to_pylist():
                    backend = backend or row["backend"]
                    if row["index"] not in seen:  # a retried batch comes back twice: count it once
                        seen[row["index"]] = _outcome(row)
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
        from resnest_deploy.executors.rows import format_of

        fmt = format_of(output)
        if output.exists():
            raise ArtifactError(f"{output} exists; Ray writes a new folder there: remove it or pick another")
        tmp = output.with_name(f".{output.name}.{os.getpid()}.partial")
        start = time.monotonic()
        try:
            with self._errors():
                ds = self._dataset(job, items).materialize()
                got = ds.select_columns(["index"]).to_arrow_refs()
                indices = [i for t in self.ray.get(got) for i in t.column("index").to_pylist()]
                if len(indices) != len(items) or len(set(indices)) != len(items):
                    raise ClusterError(
                        f"the cluster returned {len(indices)} results for {len(items)} images "
                        f"({len(indices) - len(set(indices))} repeated); nothing was written: run it again"
                    )
                errors = [
                    f"{r['path']}: {r['error']}"
                    for r in ds.filter(lambda r: r["error"] is not None).iter_rows()
                ]
                good = ds.filter(lambda r: r["error"] is None).select_columns(
                    ["path", "classes", "labels", "probabilities"]
                )
                good = good.map_batches(_cut(job.topk), batch_format="pyarrow")
                if fmt == "jsonl":
                    good.write_datasink(_jsonl_sink(str(tmp)))
                else:
                    good.write_parquet(str(tmp))
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
        with self._errors():
            ref = self.ray.put(shared)
            futures = [remote.remote(ref, item) for item in items]
            results: list[R] = []
            meter = _Meter(len(items), self.report, "trials")
            for i in range(len(futures)):
                results.append(self.ray.get(futures[i]))
                meter.add(1)
            meter.done()
        return results

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def _cut(topk: int) -> Callable[[Any], Any]:
    """Keep the top-k the user asked for (outcomes carry at least five)."""

    def cut(batch: Any) -> Any:
        pc = _deps.require("pyarrow.compute")
        for name in ("classes", "labels", "probabilities"):
            batch = batch.set_column(
                batch.schema.get_field_index(name), name, pc.list_slice(batch.column(name), 0, topk)
            )
        return batch

    return cut


def _jsonl_sink(path: str) -> Any:
    """Ray Data's file writer with our JSON Lines rows: pandas' ``to_json`` rounds floats to ten
    digits, and the rows must read back exactly as the local file's."""
    from ray.data.datasource import BlockBasedFileDatasink

    from resnest_deploy.executors.rows import json_line

    class JsonLinesDatasink(BlockBasedFileDatasink):
        def write_block_to_file(self, block: Any, file: Any) -> None:
            text = "".join(json_line(row) for row in block.to_arrow().to_pylist())
            file.write(text.encode("utf-8"))

    return JsonLinesDatasink(path, file_format="jsonl")


class _Meter:
    """Images done and images/s, at most every two seconds, to the report callback."""

    def __init__(self, total: int, report: Callable[[str], None] | None, what: str = "images") -> None:
        self.total, self.report, self.what = total, report, what
        self.done_count, self.start, self.last = 0, time.monotonic(), 0.0

    def add(self, n: int) -> None:
        self.done_count += n
        now = time.monotonic()
        if self.report and now - self.last >= 2.0:
            self.last = now
            self.report(self._line(now))

    def _line(self, now: float) -> str:
        rate = self.done_count / max(now - self.start, 1e-9)
        return f"{self.done_count}/{self.total} {self.what}, {rate:.1f} {self.what}/s"

    def done(self) -> None:
        if self.report:
            self.report(self._line(time.monotonic()))


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Whatever Ray prints while connecting or running goes to stderr: stdout stays the command's,
    one JSON document with --json."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
