"""The zoo's tables: zoo.json (the source of truth), zoo.csv, zoo.md and the latency/top-1 chart,
rendered from the result :func:`resnest_deploy.zoo.run_zoo` returns."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

from resnest_deploy._io import atomic_path, write_json
from resnest_deploy.errors import first_line

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
