"""Every GPU path of resnest-deploy in one run, checked against the outputs PyTorch recorded at export.

    python scripts/gpu_check.py                      # on a machine with an NVIDIA GPU: under 8 minutes
    python scripts/gpu_check.py --artifacts DIR      # use exports made elsewhere (no torch needed here)

What it runs, on the bundled digits model in every input form (float, uint8-nhwc, uint8-nchw,
deepstream): the TensorRT runner on TensorRT-RTX engines (and on full-TensorRT engines where
``tensorrt`` imports), batches inside the profile and above it (pieces), CUDA graphs off and on with
shape changes between calls, ONNX Runtime's CUDA and TensorRT providers, the INT8 search for
TensorRT on the outlier fixture (what its FP32 layer costs, timed through ONNX Runtime's TensorRT
provider), and PyTorch on CUDA; each is checked (``check --reference recorded``: no PyTorch needed)
and timed (``bench``: whole call, the engine's GPU time, time to first inference). Results:
benchmarks/results/gpu_check.{json,md} with the device name and date. What cannot run here (no
GPU, no TensorRT, an ONNX Runtime without CUDA) is reported as skipped, with the reason, never as
passed. Needs: the `rtx` extra (or `tensorrt`) and cuda-python for engines; `export` (torch) only
to make the artifacts, and with `quant` (ModelOpt) the INT8 search.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnest_deploy import metadata
from resnest_deploy._cuda import device_name, gpu_count

if TYPE_CHECKING:
    from resnest_deploy.precision import ConversionReport

FORMS = ("float", "uint8-nhwc", "uint8-nchw", "deepstream")
ARCH = "resnest14d_digits"
PROFILE = (1, 8, 16)
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


class Skip(Exception):
    """A path that cannot run on this machine; the message says why."""


class Steps:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail, status = fn(), "pass"
        except Skip as e:
            detail, status = str(e), "skip"
        except Exception as e:
            detail, status = f"{type(e).__name__}: {e}"[:600], "fail"
            traceback.print_exc(limit=3)
        row = {
            "step": name,
            "status": status,
            "detail": detail,
            "seconds": round(time.monotonic() - started, 2),
        }
        self.rows.append(row)
        print(f"{status.upper():4} {name}: {detail}", flush=True)


def need_gpu() -> None:
    if gpu_count() >= 1:
        return
    if importlib.util.find_spec("cuda") is None:
        raise Skip("cuda-python is not installed (pip install 'resnest-deploy[tensorrt]' or cuda-bindings)")
    raise Skip("no CUDA GPU visible (cuda-python reports no device, or no driver)")


def make_artifacts(folder: Path) -> dict[str, Path]:
    if importlib.util.find_spec("torch") is None:
        raise Skip("torch is not installed: export the artifacts elsewhere and pass --artifacts DIR")
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model(ARCH, "pretrained")
    return {
        form: export_onnx(model, folder / f"digits.{form}.onnx", input_format=form, weights=info).path
        for form in FORMS
    }


def build(onnx: Path, backend: str) -> Path:
    from resnest_deploy.engine import build_engine
    from resnest_deploy.engine.flavour import detect

    try:
        detect(backend)
    except Exception as e:
        raise Skip(f"{backend} is not installed ({str(e)[:120]})") from None
    suffix = "rtx" if backend == "tensorrt-rtx" else "trt"
    return build_engine(onnx, onnx.with_suffix(f".{suffix}.plan"), backend=backend, batch=PROFILE).path


def checked(artifact: Path, provider: str = "cpu", chunk: int = 8) -> str:
    from resnest_deploy.check import check

    report = check([artifact], provider=provider, reference_from="recorded", batch=chunk)
    r = report.results[0]
    if not r.passed:
        raise AssertionError(f"{r.backend}: {'; '.join(r.problems)}")
    return f"{r.backend}, chunk {chunk}: cosine {r.metrics.cosine:.6f}, max abs {r.metrics.max_abs:.2e}"


def graphs_match(engine: Path) -> str:
    """CUDA graphs on and off, with the shape changing between calls, give the same outputs."""
    from resnest_deploy.artifacts import Lineup
    from resnest_deploy.runners.options import RunnerOptions

    lineup = Lineup.of([engine])
    info = lineup.infos[0]
    x, _ = lineup.inputs(None, 24)
    outs = {}
    for graphs in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with lineup.runner(info, RunnerOptions(cuda_graphs=graphs)) as runner:
                outs[graphs] = [runner.infer(x[:n]) for n in (1, 8, 3, 8, 24, 1)]
        if graphs and caught:
            raise AssertionError(f"graph capture fell back: {caught[0].message}")
    worst = max(float(np.abs(a - b).max()) for a, b in zip(outs[False], outs[True], strict=True))
    if worst > 1e-3:
        raise AssertionError(f"graphs on and off differ by {worst:.3g}")
    return f"batches 1, 8, 3, 8, 24 (pieces), 1: graphs on = off within {worst:.2e}"


def rtx_runtime_cache(engine: Path) -> str:
    """Two fresh processes over one cache root: the first writes TensorRT-RTX's runtime cache (the
    kernels it compiled), the second finds it verified and answers the same."""
    code = (
        "import sys, json, numpy as np; from resnest_deploy.loaders import open_runner\n"
        "r = open_runner(sys.argv[1]); x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), "
        "dtype=np.float32)\n"
        "with r: y = r.infer(x)\n"
        "print(json.dumps({'y': y.tolist()}))\n"
    )
    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "RESNEST_DEPLOY_CACHE": root}
        runs = []
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-c", code, str(engine)], env=env, check=True, capture_output=True, text=True
            )
            runs.append(json.loads(done.stdout.splitlines()[-1]))
        written = sorted(Path(root).rglob("runtime.cache"))
        if not written:
            raise AssertionError("no runtime.cache written under the cache root")
        if not np.allclose(runs[0]["y"], runs[1]["y"], rtol=1e-3, atol=1e-3):
            raise AssertionError("the second process, with the cache, answered differently")
        return f"{written[0].stat().st_size} bytes kept; the second process answered the same"


def timed(artifacts: list[Path], provider: str = "cpu") -> list[dict[str, Any]]:
    from resnest_deploy.bench import bench

    return [r.as_dict() for r in bench(artifacts, batches=(1, 16), iterations=50, provider=provider)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--artifacts", type=Path, help="folder of digits.<form>.onnx exports (default: export here)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="where gpu_check.{json,md} go (GPU machines)")
    args = ap.parse_args()
    steps = Steps()
    timings: dict[str, Any] = {}
    gpus = gpu_count()
    print(f"GPU: {device_name(0) if gpus else 'none'} ({gpus} visible)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.artifacts or Path(tmp)
        onnx: dict[str, Path] = {}
        engines: dict[tuple[str, str], Path] = {}

        def export() -> str:
            if args.artifacts:
                onnx.update({f: args.artifacts / f"digits.{f}.onnx" for f in FORMS})
                missing = [str(p) for p in onnx.values() if not p.is_file()]
                if missing:
                    raise AssertionError(f"missing: {', '.join(missing)}")
                return f"{len(onnx)} exports from {args.artifacts}"
            onnx.update(make_artifacts(folder))
            return f"{len(onnx)} exports, one per input form"

        steps.run("export digits in every input form", export)
        for backend in ("tensorrt-rtx", "tensorrt"):
            for form in FORMS if onnx else ():

                def make(form: str = form, backend: str = backend) -> str:
                    engines[(backend, form)] = build(onnx[form], backend)
                    side = metadata.read_sidecar(engines[(backend, form)]) or {}
                    kept = (side.get("input") or {}).get("format", {}) or {}
                    if (kept.get("name") or "float") != form:
                        raise AssertionError(f"the engine's sidecar records input form {kept.get('name')}")
                    return f"profile {PROFILE}, input form {form} kept in the sidecar"

                steps.run(f"build {backend} engine, {form}", make)
        for (backend, form), engine in engines.items():

            def inside(engine: Path = engine) -> str:
                need_gpu()
                return checked(engine, chunk=8)

            def above(engine: Path = engine) -> str:
                need_gpu()
                return checked(engine, chunk=24)  # 24 > 16: pieces within the profile

            steps.run(f"{backend} runner, {form}, batches inside the profile", inside)
            steps.run(f"{backend} runner, {form}, batches above the profile", above)
        rtx_float = engines.get(("tensorrt-rtx", "float"))
        if rtx_float is not None:

            def runtime_cache(engine: Path = rtx_float) -> str:
                need_gpu()
                return rtx_runtime_cache(engine)

            steps.run("tensorrt-rtx runtime cache: kept by one process, read back by the next", runtime_cache)
        for (backend, form), engine in engines.items():
            if form == "float":

                def graphs(engine: Path = engine) -> str:
                    need_gpu()
                    return graphs_match(engine)

                steps.run(f"{backend} runner, CUDA graphs off/on with shape changes", graphs)
        for provider in ("cuda", "tensorrt"):

            def ort(provider: str = provider) -> str:
                need_gpu()
                import onnxruntime

                wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
                if wanted not in onnxruntime.get_available_providers():
                    raise Skip(f"this onnxruntime has no {wanted} (install onnxruntime-gpu with CUDA 12)")
                return "; ".join(checked(onnx[f], provider) for f in ("float", "uint8-nhwc"))

            steps.run(f"onnxruntime {provider} provider", ort)

        def search_cost() -> str:
            need_gpu()
            for module, extra in (("torch", "export"), ("modelopt", "quant")):
                if importlib.util.find_spec(module) is None:
                    raise Skip(f"{module} is not installed (the {extra} extra)")
            made = int8_search_on_the_fixture(Path(tmp))
            found, cost = made.search, made.cost
            if found is None or cost is None or "onnxruntime-tensorrt" not in cost.backends:
                raise AssertionError(f"no TensorRT timing with a GPU at hand: {cost}")
            timings["int8_search_tensorrt"] = found.as_dict() | {"latency": cost.as_dict()}
            return f"kept {found.kept_fp32_layers}; {json.dumps(cost.as_dict()['onnxruntime-tensorrt'])}"

        steps.run("INT8 search for TensorRT, its FP32 layers timed by ORT's TensorRT provider", search_cost)

        def torch_cuda() -> str:
            need_gpu()
            if importlib.util.find_spec("torch") is None:
                raise Skip("torch is not installed")
            import torch

            if not torch.cuda.is_available():
                raise Skip("this torch build has no CUDA")
            from resnest_deploy.check import check

            report = check(["torch:cuda"], arch=ARCH, weights="pretrained")
            r = report.results[0]
            if not r.passed:
                raise AssertionError("; ".join(r.problems))
            return f"torch-cuda vs torch-cpu: cosine {r.metrics.cosine:.6f}"

        steps.run("PyTorch on CUDA", torch_cuda)

        def bench_all() -> str:
            need_gpu()
            rtx = [e for (b, f), e in engines.items() if f == "float"]
            if not rtx:
                raise Skip("no engine was built")
            timings["engines"] = timed(rtx)
            return "; ".join(
                f"{Path(r['artifact']).name} b={r['batch']}: {r['p50_ms']:.3f} ms whole call, "
                f"{r['device_p50_ms']} ms GPU, first call {r['first_call_ms']:.0f} ms"
                for r in timings["engines"]
            )

        steps.run("bench engines (whole call, GPU time, first call)", bench_all)
    report(steps.rows, timings, args.out if gpus else None)


def int8_search_on_the_fixture(folder: Path) -> ConversionReport:
    """The outlier fixture searched for TensorRT with a 0.25-point budget (its latency cost is timed
    when a GPU is at hand)."""
    from resnest_deploy.data import Transform
    from resnest_deploy.models import get_spec
    from resnest_deploy.precision import calibration
    from resnest_deploy.precision.fixtures import outlier_digits, quantize_every_conv

    calib = calibration.from_digits(Transform.from_pretrained(get_spec(ARCH).pretrained))
    src = outlier_digits(folder / "outlier.onnx")
    return quantize_every_conv(src, folder / "outlier.searched.onnx", "tensorrt", calib, max_drop=0.25)


def report(rows: list[dict[str, Any]], timings: dict[str, Any], out: Path | None) -> None:
    m = metadata.machine()
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail", "skip")}
    lines = [
        "# GPU check",
        "",
        f"{m.get('gpu') or 'no GPU'}; {m['cpu']}; {m['date']}. "
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped.",
        "",
        "| step | status | detail |",
        "|---|---|---|",
        *(f"| {r['step']} | {r['status']} | {r['detail'].replace('|', '/')} |" for r in rows),
    ]
    print("\n".join(lines))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(
            json.dumps({"machine": m, "steps": rows, "timings": timings}, indent=2) + "\n"
        )
        (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    else:
        print("no GPU: nothing written (the table above says what was skipped and why)")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(1 if counts["fail"] else 0)


if __name__ == "__main__":
    main()
