"""The zoo: every arch exported, converted, checked and timed on this machine, side by side.

For each arch: export FP32 (random or given weights), convert to the CPU-target INT8, count params,
multiply-accumulates and nodes from the exported graph, then time each backend and precision in a
process of its own (`python -m resnest_deploy.zoo`) and check its logits against FP32 in ONNX
Runtime. Results go to zoo.json (the source of truth, also what a rerun resumes from: a cell already
measured for the same file sha256 on the same machine is not measured again), zoo.csv, zoo.md and a
chart of latency against published top-1 (rendered by :mod:`resnest_deploy.reports.zoo`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy._io import read_json_object, sha256_file
from resnest_deploy.errors import ArtifactError
from resnest_deploy.reports.zoo import write_outputs
from resnest_deploy.zoo_figures import Peak, cpu_peak, machine_id, published

DEFAULT_ARCHS = ("resnest14d", "resnest50_fast_1s1x64d", "resnest50")
BACKENDS = {"onnxruntime": "cpu", "openvino": "openvino"}
PRECISIONS = ("fp32", "int8")
PARITY_SEED, PARITY_COUNT = 7, 4
CELL_TIMEOUT_S = 900.0
Say = Callable[[str], None]


@dataclass(frozen=True)
class ZooConfig:
    archs: tuple[str, ...] = DEFAULT_ARCHS
    precisions: tuple[str, ...] = PRECISIONS
    backends: tuple[str, ...] = tuple(BACKENDS)
    weights: str = "random"
    output: Path = Path("zoo")
    batches: tuple[int, int] = (1, 8)
    iterations: int = 20
    calib_count: int = 32


@dataclass(frozen=True)
class GraphStats:
    params: int
    macs: int  # multiply-accumulates per image, Conv and Gemm/MatMul, from inferred shapes
    nodes: int


@dataclass
class Cell:
    arch: str
    precision: str
    backend: str
    file_sha256: str
    machine: str
    p50_ms: dict[str, float]  # by batch
    images_per_s: float  # at the largest batch
    parity_cosine: float
    parity_top1: float
    parity_rel_max_abs: float
    fraction_of_peak: float
    nodes: int
    measured: str  # UTC

    def key(self) -> tuple[str, str, str, str, str]:
        return (self.arch, self.precision, self.backend, self.file_sha256, self.machine)


@dataclass
class ArchRow:
    arch: str
    input_size: int
    params: int
    macs: int
    published: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)


def graph_stats(path: str | os.PathLike[str]) -> GraphStats:
    """Params (float initializers), MACs of Conv and Gemm/MatMul at batch 1, and the node count."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(os.fspath(path))
    inits = {t.name: t for t in model.graph.initializer}
    params = sum(
        int(np.prod(t.dims))
        for t in inits.values()
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    )
    for d in model.graph.input[0].type.tensor_type.shape.dim[:1]:
        if not d.HasField("dim_value"):
            d.Clear()
            d.dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    for name, t in inits.items():
        shapes[name] = list(t.dims)
    macs = 0
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            out, w = shapes.get(node.output[0]), shapes.get(node.input[1])
            if out and w and all(out) and all(w):
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out and all(a) and all(out):
                macs += int(np.prod(out)) * a[-1]
    return GraphStats(params, macs, len(model.graph.node))


def estimate_s(archs: Sequence[str], cells_per_arch: int, iterations: int) -> float:
    """A rough time for a run, scaled from resnest50 on a 2-core AVX2 machine (export 35 s, INT8
    conversion 80 s, a timed cell 25 s at 20 iterations) by each arch's published GMACs (5.4 when
    none is known)."""
    total = 0.0
    for arch in archs:
        scale = (published(arch).gmacs or 5.4) / 5.4
        total += scale * (35 + 80) + cells_per_arch * (5 + scale * 20 * iterations / 20)
    return total


# --- one cell, in a process of its own ------------------------------------------------------------


def time_cell(path: str, backend: str, batches: Sequence[int], iterations: int) -> dict[str, Any]:
    """Time ``path`` on ``backend`` at each batch and return logits on the parity inputs."""
    from resnest_deploy.artifacts import Lineup
    from resnest_deploy.bench import bench
    from resnest_deploy.runners.options import RunnerOptions

    results = bench([path], batches=batches, iterations=iterations, provider=BACKENDS[backend])
    lineup = Lineup.of([path])
    from resnest_deploy.data import random_inputs

    x = random_inputs(PARITY_COUNT, lineup.size, PARITY_SEED)
    with lineup.runner(lineup.infos[0], RunnerOptions.from_provider(BACKENDS[backend])) as runner:
        logits = runner.infer(x)
    return {
        "p50_ms": {str(r.batch): r.p50_ms for r in results},
        "images_per_s": results[-1].images_per_s,
        "logits": logits.tolist(),
    }


def _run_cell(path: Path, backend: str, cfg: ZooConfig) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "resnest_deploy.zoo", str(path), backend, ",".join(map(str, cfg.batches))]
    cmd.append(str(cfg.iterations))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CELL_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ArtifactError(f"timing {path.name} on {backend} took over {CELL_TIMEOUT_S:.0f} s") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArtifactError(f"timing {path.name} on {backend} failed: {last}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- files ----------------------------------------------------------------------------------------


def _files(arch: str, cfg: ZooConfig, say: Say) -> dict[str, Path]:
    """The arch's FP32 export and INT8 conversion under the output folder, made when missing (a
    file with its sidecar is reused: its sha256 keys the measured cells)."""
    from resnest_deploy.compare import UNCHECKED
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import get_spec, load_model
    from resnest_deploy.precision import ConversionConfig, calibration, convert

    folder = cfg.output / "models"
    fp32 = folder / f"{arch}.onnx"
    files: dict[str, Path] = {}
    if not (fp32.is_file() and Path(f"{fp32}.json").is_file()):
        say(f"  exporting {arch} ({cfg.weights} weights)")
        model, info = load_model(arch, cfg.weights)
        export_onnx(model, fp32, weights=info)
        del model
    files["fp32"] = fp32
    if "int8" in cfg.precisions:
        int8 = folder / f"{arch}.int8-cpu.onnx"
        if not (int8.is_file() and Path(f"{int8}.json").is_file()):
            say(f"  converting {arch} to INT8 (CPU target, {cfg.calib_count} random calibration inputs)")
            size = get_spec(arch).pretrained.input_size
            rng = np.random.default_rng(0)
            x = rng.standard_normal((cfg.calib_count + 8, 3, size, size), dtype=np.float32)
            calib = calibration.CalibrationData(
                x[: cfg.calib_count], x[cfg.calib_count :], {"kind": "random", "count": cfg.calib_count}
            )
            convert(fp32, int8, ConversionConfig("int8", "cpu", tolerance=UNCHECKED), calib)
        files["int8"] = int8
    return files


def _load_previous(path: Path) -> dict[tuple[str, ...], Cell]:
    if not path.is_file():
        return {}
    try:
        data = read_json_object(path, "zoo results", "")
        cells = [Cell(**c) for row in data.get("rows", []) for c in row.get("cells", [])]
    except (ArtifactError, TypeError):  # unreadable or another version's: measure again
        return {}
    return {c.key(): c for c in cells}


@contextlib.contextmanager
def _output_folder(folder: Path) -> Iterator[None]:
    """``folder``, made if missing, and removed again if a run that made it fails before writing
    anything into it (a missing checkpoint, say): no empty output is left behind."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if made and not any(folder.iterdir()):
            folder.rmdir()
        raise


def run_zoo(cfg: ZooConfig, say: Say = lambda _m: None) -> dict[str, Any]:
    """Measure every cell of ``cfg`` not already in ``cfg.output``/zoo.json; write all outputs."""
    from resnest_deploy.compare import compare
    from resnest_deploy.data import random_inputs
    from resnest_deploy.metadata import machine, now
    from resnest_deploy.models import get_spec
    from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

    for arch in cfg.archs:
        get_spec(arch)  # an unknown arch fails before anything runs
    unknown = [b for b in cfg.backends if b not in BACKENDS]
    if unknown:
        raise ArtifactError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    bad = [p for p in cfg.precisions if p not in PRECISIONS]
    if bad:
        raise ArtifactError(f"unknown precision {bad[0]!r}; choose from {', '.join(PRECISIONS)}")
    with _output_folder(cfg.output):
        previous = _load_previous(cfg.output / "zoo.json")
        peak, here = cpu_peak(), machine_id()
        rows: list[ArchRow] = []
        for i, arch in enumerate(cfg.archs, 1):
            started = time.perf_counter()
            say(f"[{i}/{len(cfg.archs)}] {arch}")
            files = _files(arch, cfg, say)
            stats = graph_stats(files["fp32"])
            size = get_spec(arch).pretrained.input_size
            row = ArchRow(arch, size, stats.params, stats.macs, asdict(published(arch)))
            x = random_inputs(PARITY_COUNT, (size, size), PARITY_SEED)
            reference = None
            for precision in cfg.precisions:
                path = files[precision]
                digest = sha256_file(path)
                nodes = graph_stats(path).nodes if precision != "fp32" else stats.nodes
                for backend in cfg.backends:
                    key = (arch, precision, backend, digest, here)
                    if key in previous:
                        say(f"  {precision} {backend}: measured before, kept")
                        row.cells.append(previous[key])
                        continue
                    say(f"  {precision} {backend}: timing in a fresh process")
                    got = _run_cell(path, backend, cfg)
                    if reference is None:
                        with OnnxRuntimeRunner(files["fp32"], cache=None) as ref:
                            reference = ref.infer(x)
                    m = compare(reference, np.asarray(got["logits"], dtype=np.float32))
                    per_s = float(got["images_per_s"])
                    row.cells.append(
                        Cell(
                            arch,
                            precision,
                            backend,
                            digest,
                            here,
                            {k: float(v) for k, v in got["p50_ms"].items()},
                            per_s,
                            round(m.cosine, 6),
                            round(m.top1, 4),
                            round(m.rel_max_abs, 6),
                            round(stats.macs * per_s / peak.macs_per_s(precision), 4)
                            if peak.clock_mhz
                            else 0.0,
                            nodes,
                            now(),
                        )
                    )
            rows.append(row)
            say(f"  {arch} done in {time.perf_counter() - started:.0f} s")
            result = _result(rows, cfg, peak, machine())
            write_outputs(result, cfg.output)  # after every arch: an interrupted run keeps what it measured
        return _result(rows, cfg, peak, machine())


def _result(rows: list[ArchRow], cfg: ZooConfig, peak: Peak, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "machine": m,
        "machine_id": machine_id(),
        "peak": peak.as_dict(),
        "config": {
            "archs": list(cfg.archs),
            "precisions": list(cfg.precisions),
            "backends": list(cfg.backends),
            "weights": cfg.weights,
            "batches": list(cfg.batches),
            "iterations": cfg.iterations,
        },
        "rows": [asdict(r) for r in rows],
        #: 1-minute load average when written: above the core count, other work ran beside the timings
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


if __name__ == "__main__":  # one cell: python -m resnest_deploy.zoo FILE BACKEND BATCHES ITERATIONS
    file_arg, backend_arg, batches_arg, iterations_arg = sys.argv[1:5]
    cell = time_cell(file_arg, backend_arg, [int(b) for b in batches_arg.split(",")], int(iterations_arg))
    print(json.dumps(cell), flush=True)
