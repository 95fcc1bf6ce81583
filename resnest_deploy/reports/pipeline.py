"""The pipeline's report as people read it: report.md from the report dict (also report.json),
with its accuracy, latency and INT8 search sections."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnest_deploy._io import atomic_path, write_json
from resnest_deploy.precision.cost import LatencyCost
from resnest_deploy.precision.results import Evaluation, Tournament
from resnest_deploy.precision.search import SearchResult, drop_from_dict
from resnest_deploy.reports.conversion import search_markdown


def int8_note(results: list[dict[str, Any]]) -> list[str]:
    """Say it when the CPU INT8 file measured slower than FP32 here, and why, rather than let a
    newcomer's first table suggest INT8 never pays."""
    p50 = {(Path(r["artifact"]).name, r["backend"], r["batch"]): r["p50_ms"] for r in results}
    slower = [
        (name, b)
        for (name, backend, b), ms in p50.items()
        if ".int8-cpu." in name
        and backend == "onnxruntime-cpu"
        and ms > p50.get((name.replace(".int8-cpu", ""), backend, b), float("inf"))
    ]
    if not slower:
        return []
    return [
        "",
        f"INT8 did not pay on this CPU for this model at batch {', '.join(str(b) for _, b in slower)}: "
        "it is small enough that quantize/dequantize overhead outweighs the cheaper convolutions. On "
        "resnest50 the same CPU INT8 path is 3-5x faster than PyTorch eager "
        "(benchmarks/results/cpu_backends.md).",
    ]


def meant_for(artifact: str) -> str:
    """Which runtime a file is made for, as the report tells a newcomer."""
    name = Path(artifact).name
    if name.endswith((".plan", ".engine")):
        return "TensorRT (GPU)"
    if ".int8-cpu." in name:
        return "CPU: ONNX Runtime, OpenVINO"
    if ".int8." in name or ".fp16." in name:
        return "TensorRT (GPU), slow on CPU"
    return "any (FP32 reference)"


def write_reports(report: dict[str, Any], out: Path) -> None:
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    """The human summary: what was made, how close it is, how fast it runs."""
    steps = report["steps"]
    arch = report["arch"]

    def short(artifact: str) -> str:  # names fit an 80-column terminal: * stands for the arch
        name = Path(artifact).name
        return f"*{name.removeprefix(arch)}" if name.startswith(f"{arch}.") else name

    lines = [f"# {arch} ({report['precision']}, {report['target']}): {report['status']}", ""]
    if report.get("note"):
        lines += [f"**Note:** {report['note'][0].upper()}{report['note'][1:]}.", ""]
    lines += ["| step | status | detail |", "|---|---|---|"]
    for name, s in steps.items():
        detail = s.get("reason") or s.get("path") or ""
        gate = (s.get("parity") or {}).get("gate") or {}
        if gate.get("tolerance_from") == "user" and gate.get("outside_default") and gate.get("judged"):
            detail += f" (accepted outside the default tolerance: {'; '.join(gate['outside_default'])})"
        lines.append(f"| {name} | {s['status']} | {detail} |")
    checks = [(k, steps[k]) for k in ("check", "check-bf16") if steps.get(k, {}).get("results")]
    if checks or steps.get("bench", {}).get("results"):
        lines += ["", f"Files: `*` stands for `{arch}` in `{report.get('out_dir', '.')}`."]
    for key, check in checks:
        inputs = check["inputs"]
        how = "computed in BF16 by OpenVINO, " if key == "check-bf16" else ""
        lines += [
            "",
            f"## Accuracy against PyTorch FP32 ({how}{inputs.get('kind')}: {inputs.get('count', '?')})",
            "",
            "| artifact | for | ran in | precision | max abs | cosine | top-1 agree | top-5 agree |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in check["results"]:
            m = r["metrics"]
            lines.append(
                f"| {short(r['artifact'])} | {meant_for(r['artifact'])} | {r['backend']} "
                f"| {r['precision']}{'' if r.get('judged', True) else ' (not judged)'} "
                f"| {m['max_abs']:.3g} | {m['cosine']:.6f} | {m['top1']:.1%} | {m['top5']:.1%} |"
            )
    lines += _latency_section(steps.get("bench", {}), short)
    for key in ("convert", "convert-cpu"):
        lines += _search_section(key, steps.get(key, {}), short)
    machine = report.get("machine")
    if machine:
        lines += [
            "",
            f"Measured on {machine.get('gpu') or machine['cpu']} ({machine['cores']} cores), "
            f"{machine['date']}.",
        ]
    return "\n".join(lines) + "\n"


#: how a report names the set a search was judged on (``Evaluation.kind``)
_SET_WORDS = {"eval_dir": "evaluation images", "held-out npy": "held-out inputs"}


def _search_section(key: str, step: dict[str, Any], short: Callable[[str], str]) -> list[str]:
    """A conversion step's INT8 search (read back into typed results), as a markdown section."""
    conversion = step.get("conversion") or {}
    recorded = conversion.get("search")
    if not recorded:
        return []
    found = SearchResult.from_dict(recorded)
    tried = conversion.get("calibration_methods")
    latency = recorded.get("latency")
    evaluation, drop = conversion.get("evaluation"), conversion.get("drop")
    judged = Evaluation.from_dict(evaluation) if isinstance(evaluation, dict) else None
    where = f"{judged.count} {_SET_WORDS.get(judged.kind, judged.kind)}" if judged else "held-out images"
    # the file's own target (a `pipeline --target cpu` run converts for the CPU in its first step)
    target = conversion.get("target") or ("cpu" if key == "convert-cpu" else "tensorrt")
    lines = [
        "",
        f"## INT8 search for {'the CPU' if target == 'cpu' else 'TensorRT'}: "
        f"{short(step.get('path', ''))} ({found.metric_name} on {where}, "
        f"budget {recorded['max_drop_points']} points)",
        "",
        *search_markdown(
            found,
            Tournament.from_dict(tried) if tried else None,
            LatencyCost.from_dict(latency) if isinstance(latency, dict) else None,
            judged,
            drop_from_dict(drop) if isinstance(drop, dict) else None,
        ),
    ]
    chart = step.get("sensitivity_chart")
    if chart:
        lines += ["", f"![INT8 sensitivity]({Path(chart).name})"]
    return lines


def _latency_section(bench: dict[str, Any], short: Callable[[str], str]) -> list[str]:
    """bench's rows as a markdown table, each flagged figure marked and its cause said."""
    if not bench.get("results"):
        return []
    lines: list[str] = []
    lines += [
        "",
        "## Latency",
        "",
        "| artifact | backend | batch | p50 ms | p10-p90 ms | p99 ms | images/s | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    flagged = [r for r in bench["results"] if r.get("flags")]
    for r in bench["results"]:
        spread = f"{r['p10_ms']:.2f}-{r['p90_ms']:.2f}" if "p10_ms" in r else f"{r['p90_ms']:.2f}"
        mark = f"!{flagged.index(r) + 1}" if r in flagged else ""
        lines.append(
            f"| {short(r['artifact'])} | {r['backend']} | {r['batch']} | {r['p50_ms']:.2f} "
            f"| {spread} | {r['p99_ms']:.2f} | {r['images_per_s']:.1f} | {mark} |"
        )
    for i, r in enumerate(flagged, 1):  # the figures that cannot be trusted, and why (as bench says)
        cause = f" Likely cause: {r['cause']}" if r.get("cause") else ""
        lines += [
            "",
            f"!{i} {short(r['artifact'])} {r['backend']} batch {r['batch']}: {'; '.join(r['flags'])}.{cause}",
        ]
    if bench.get("note"):
        lines += ["", bench["note"]]
    lines += int8_note(bench["results"])
    return lines
