"""The zoo: every arch exported, converted, checked and timed on this machine, side by side.

For each arch: export FP32 (random or given weights), convert to the CPU-target INT8, count params,
multiply-accumulates and nodes from the exported graph, then time each backend and precision in a
process of its own (`python -m resnest_deploy.zoo`) and check its logits against FP32 in ONNX
Runtime. Results go to zoo.json (the source of truth, also what a rerun resumes from: a cell already
measured for the same file sha256 on the same machine is not measured again), zoo.csv, zoo.md and a
chart of latency against published top-1.
"""

from __future__ import annotations

import contextlib
import csv
import io
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

from resnest_deploy._io import atomic_path, read_json_object, sha256_file, write_json
from resnest_deploy.errors import ArtifactError, first_line
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


# --- outputs --------------------------------------------------------------------------------------

COLUMNS = [
    "arch",
    "precision",
    "backend",
    "input",
    "params_m",
    "params_m_published",
    "gmacs",
    "gmacs_published",
    "size_source",
    "nodes",
    "parity_cosine",
    "parity_top1",
    "p50_b1_ms",
    "p50_b8_ms",
    "images_per_s",
    "fraction_of_peak",
    "top1_published",
    "top1_source",
]


def flat_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    batches = [str(b) for b in result["config"]["batches"]]
    for row in result["rows"]:
        pub = row["published"]
        for c in row["cells"]:
            out.append(
                {
                    "arch": row["arch"],
                    "precision": c["precision"],
                    "backend": c["backend"],
                    "input": row["input_size"],
                    "params_m": round(row["params"] / 1e6, 2),
                    "params_m_published": pub["params_m"],
                    "gmacs": round(row["macs"] / 1e9, 2),
                    "gmacs_published": pub["gmacs"],
                    "size_source": pub["size_source"],
                    "nodes": c["nodes"],
                    "parity_cosine": c["parity_cosine"],
                    "parity_top1": c["parity_top1"],
                    "p50_b1_ms": c["p50_ms"].get(batches[0]),
                    "p50_b8_ms": c["p50_ms"].get(batches[-1]),
                    "images_per_s": c["images_per_s"],
                    "fraction_of_peak": c["fraction_of_peak"],
                    "top1_published": pub["top1"],
                    "top1_source": pub["top1_source"],
                }
            )
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(result: dict[str, Any]) -> str:
    m, peak = result["machine"], result["peak"]
    rows = flat_rows(result)
    lines = [
        "# The zoo: every arch, precision and backend on this CPU",
        "",
        f"{m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}, {m['date'][:10]}; "
        f"weights {result['config']['weights']}, {result['config']['iterations']} timed calls per batch, "
        "each backend in its own process.",
        *_load_note(result),
        "",
        "| arch | prec | backend | params M (pub.) | GMACs (pub.) | nodes | cosine / top-1 vs FP32 ORT "
        "| p50 b1 ms | p50 b8 ms | img/s | of peak | top-1 pub. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['precision']} | {r['backend']} "
            f"| {r['params_m']:.2f} ({_fmt(r['params_m_published'])}) "
            f"| {r['gmacs']:.2f} ({_fmt(r['gmacs_published'])}) | {r['nodes']} "
            f"| {r['parity_cosine']:.5f} / {r['parity_top1']:.0%} "
            f"| {_fmt(r['p50_b1_ms'])} | {_fmt(r['p50_b8_ms'])} "
            f"| {r['images_per_s']:.1f} | {r['fraction_of_peak']:.1%} | {_fmt(r['top1_published'])} |"
        )
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["arch"] not in best or r["fraction_of_peak"] > best[r["arch"]]["fraction_of_peak"]:
            best[r["arch"]] = r
    lines += ["", "Best path per arch (highest fraction of the CPU's peak):", ""]
    lines += [
        f"- {a}: {r['precision']} on {r['backend']}, {r['fraction_of_peak']:.1%} of peak, "
        f"{r['images_per_s']:.1f} img/s"
        for a, r in best.items()
    ]
    sources = sorted({s for r in rows for s in (r["size_source"], r["top1_source"]) if s})
    lines += [
        "",
        "Params and GMACs are counted from the exported FP32 graph (float initializers; Conv and "
        "Gemm/MatMul multiply-accumulates at batch 1), beside the published figure in brackets "
        "('-': none found). Published top-1 is ImageNet-1k at the arch's eval size. Sources: "
        + ("; ".join(sources) or "none for these archs")
        + ".",
        "",
        f"Fraction of peak = GMACs per image x images/s (batch {result['config']['batches'][-1]}) / "
        f"(cores x clock x MACs per cycle per core): {peak['cores']} cores x {peak['clock_mhz']:.0f} MHz "
        f"({peak['clock_source']}) x {peak['fp32_macs_per_cycle']} FP32 or "
        f"{peak['int8_macs_per_cycle']} INT8 MACs per cycle for flags {' '.join(peak['flags'])} "
        "(see docs/startup-and-zoo.md). The INT8 files keep the "
        "attention gate and classifier in FP32, so their fraction is against a peak they cannot fully use.",
        "",
        "Parity: cosine similarity and top-1 agreement of the logits against the FP32 file in ONNX Runtime, "
        "on seeded random inputs (random weights carry no accuracy to lose; real weights give real figures). "
        "The FP32 export itself is checked against PyTorch when it is written.",
    ]
    return "\n".join(lines) + "\n"


def _load_note(result: dict[str, Any]) -> list[str]:
    load, cores = result.get("load_average"), result["machine"].get("cores") or 1
    if load is None or load <= cores:
        return []
    return [
        "",
        f"Other work ran beside these timings: the 1-minute load average was {load} on {cores} cores "
        "when they were written; compare figures within one run only.",
    ]


def to_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(flat_rows(result))
    return buf.getvalue()


def chart(result: dict[str, Any], path: Path) -> Path | None:
    """p50 latency at batch 1 against published top-1, one series per backend and precision; archs
    without a published top-1 are left out of the chart (they stay in the tables)."""
    from resnest_deploy import _deps

    if not _deps.has("matplotlib"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in flat_rows(result) if r["top1_published"] is not None and r["p50_b1_ms"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for series in dict.fromkeys((r["backend"], r["precision"]) for r in rows):
        pts = sorted(
            (r for r in rows if (r["backend"], r["precision"]) == series), key=lambda r: r["p50_b1_ms"]
        )
        ax.plot(
            [r["p50_b1_ms"] for r in pts],
            [r["top1_published"] for r in pts],
            marker="o",
            label=f"{series[0]} {series[1]}",
        )
        for r in pts:
            ax.annotate(r["arch"], (r["p50_b1_ms"], r["top1_published"]), fontsize=6, alpha=0.7)
    ax.set(
        xlabel="p50 latency at batch 1 (ms, this CPU)", ylabel="published ImageNet top-1 (%)", xscale="log"
    )
    ax.set_title(f"ResNeSt variants on {result['machine']['cpu']}", fontsize=9)
    if rows:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no arch here has a published top-1", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], folder: Path) -> list[Path]:
    write_json(folder / "zoo.json", result)
    with atomic_path(folder / "zoo.csv") as tmp:
        tmp.write_text(to_csv(result))
    with atomic_path(folder / "zoo.md") as tmp:
        tmp.write_text(markdown(result))
    written = [folder / "zoo.json", folder / "zoo.csv", folder / "zoo.md"]
    try:
        png = chart(result, folder / "zoo.png")
    except Exception as e:  # a chart is a picture of the tables: never lose the measurements to it
        print(f"warning: no chart: {first_line(e)}", file=sys.stderr)
        png = None
    return written + ([png] if png else [])


if __name__ == "__main__":  # one cell: python -m resnest_deploy.zoo FILE BACKEND BATCHES ITERATIONS
    file_arg, backend_arg, batches_arg, iterations_arg = sys.argv[1:5]
    cell = time_cell(file_arg, backend_arg, [int(b) for b in batches_arg.split(",")], int(iterations_arg))
    print(json.dumps(cell), flush=True)
