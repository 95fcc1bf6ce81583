"""What a user reads about a conversion: the calibration tournament, the search (what was kept in
FP32 and what it costs) and the sensitivity chart, from the typed results of ``precision``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.precision.calibration import HOLDOUT
from resnest_deploy.precision.cost import LatencyCost, Timing
from resnest_deploy.precision.equalize import counted_kind
from resnest_deploy.precision.results import ConversionReport, Evaluation, Tournament
from resnest_deploy.precision.search import ACCEPTANCE, SearchResult, Sensitivity
from resnest_deploy.precision.search_result import drop_from_dict
from resnest_deploy.stats import Drop


def kept_summary(found: SearchResult | Any) -> str:
    """What a search kept in FP32, for people: units, then layers. Also takes a recorded search
    (metadata: untrusted), read defensively."""
    if isinstance(found, SearchResult):
        kept, layers = found.kept_fp32, found.kept_fp32_layers
    else:
        found = found if isinstance(found, dict) else {}
        kept = [u for u in found.get("kept_fp32") or [] if isinstance(u, str)]
        layers = [n for n in found.get("kept_fp32_layers") or [] if isinstance(n, str)]
    if not kept:
        return "none"
    text = ", ".join(kept)
    if layers:
        shown = ", ".join(layers[:4]) + (", ..." if len(layers) > 4 else "")
        text += f" ({len(layers)} layer{'s' if len(layers) != 1 else ''}: {shown})"
    return text


def latency_summary(cost: LatencyCost | Any) -> str | None:
    """The cost of the units kept in FP32, for people, if measured. Also takes a recorded search
    (metadata: untrusted: its ``latency``), read defensively."""
    if not isinstance(cost, LatencyCost):
        recorded = cost.get("latency") if isinstance(cost, dict) else None
        if not isinstance(recorded, dict):
            return None
        cost = LatencyCost(1, [], _timings(recorded))
    parts = [
        f"{backend} {t.plain_ms:.3f} -> {t.searched_ms:.3f} ms ({t.searched_ms / max(t.plain_ms, 1e-9):.2f}x)"
        for backend, t in cost.backends.items()
        if isinstance(t, Timing)
    ]
    return f"latency at batch 1, plain -> searched: {', '.join(parts)}" if parts else None


def _timings(recorded: dict[str, Any]) -> dict[str, Timing | str]:
    keys = ("plain_ms", "searched_ms")
    return {
        backend: Timing(float(t["plain_ms"]), float(t["searched_ms"]), 0.0)
        for backend, t in recorded.items()
        if isinstance(t, dict) and all(isinstance(t.get(k), (int, float)) for k in keys)
    }


def tournament_line(tried: Tournament) -> str:
    return (
        f"calibration ({tried.metric} on held-out images): "
        + ", ".join(f"{r.method} {r.metric:.2f}" for r in tried.results)
        + f"; kept {tried.chosen}"
    )


def search_line(found: SearchResult, plot: os.PathLike[str] | str | None = None) -> str:
    top = ", ".join(f"{s.unit} +{s.gain:.2f}" for s in found.ranking[:3])
    return (
        f"INT8 search ({found.metric_name}): FP32 {found.fp32_metric:.2f}, "
        f"plain INT8 {found.int8_metric:.2f}, "
        f"chosen {found.metric:.2f}, kept in FP32: {kept_summary(found)}{why_kept(found)}; "
        f"most sensitive: {top}" + (f"; chart: {plot}" if plot else "")
    )


def why_kept(found: SearchResult) -> str:
    """Why the kept units stayed FP32: each one's gain alone, and the rule that accepted them."""
    if not found.kept_fp32:
        return ""
    gains = {s.unit: s.gain for s in found.ranking}
    alone = ", ".join(f"{u} {gains[u]:+.2f} alone" for u in found.kept_fp32 if u in gains)
    rule = (
        "until the budget and the parity gate both held"
        if found.acceptance == ACCEPTANCE
        else "until the budget held"
    )
    return f" ({alone}; kept {rule})"


def drop_line(evaluation: Evaluation | None, drop: Drop | None, metric: str | None = None) -> str | None:
    """The evaluation set and the drop measured on it, with its interval: what a person judges by."""
    if drop is None:
        return None
    name = metric or (evaluation.metric if evaluation is not None else "top-1")
    where = f" on {evaluation}" if evaluation is not None else ""
    cached = (evaluation.references.get("from") == "cache") if evaluation is not None else False
    return f"INT8 {name} drop against FP32{where}: {drop}" + (
        "; FP32 references from the cache" if cached else ""
    )


def gate_lines(gate: dict[str, Any], inputs: str) -> list[str]:
    """What a person must read about how a converted file was judged: never silent."""
    lines = []
    if gate.get("note"):
        lines.append(str(gate["note"]))
    elif gate.get("tolerance_from") == "user" and gate.get("outside_default"):
        lines.append(
            "accepted outside the default tolerance by your bar ("
            + "; ".join(gate["outside_default"])
            + "); recorded in the file's metadata"
        )
    held_out = inputs.split(" ", 1)[0]
    if held_out.isdigit() and "held-out" in inputs and int(held_out) < HOLDOUT:
        lines.append(
            f"parity measured on only {inputs} (a fifth of the images when there are few, else those "
            f"beyond --calib-count); --calib-count + {HOLDOUT} images or more hold out {HOLDOUT}"
        )
    return lines


def summary_lines(report: ConversionReport, plot: os.PathLike[str] | str | None = None) -> list[str]:
    """The lines `quantize` prints under its parity table: the tournament and the search."""
    lines = []
    if report.tournament is not None:
        lines.append(tournament_line(report.tournament))
    if report.search is not None:
        lines.append(search_line(report.search, plot))
    judged = drop_line(report.evaluation, report.drop)
    if judged:
        lines.append(judged)
    return lines


def search_markdown(
    found: SearchResult,
    tried: Tournament | None,
    cost: LatencyCost | None,
    evaluation: Evaluation | None = None,
    drop: Drop | None = None,
) -> list[str]:
    """A search as markdown: the calibration table, the outcome and its cost, the evaluation set and
    the drop with its interval, the top units."""
    kept = kept_summary(found)
    kept = "none (INT8 everywhere)" if kept == "none" else kept
    lines = []
    if tried is not None:
        lines += [
            "| calibration | plain INT8 |",
            "|---|---|",
            *(
                f"| {r.method}{' (kept)' * (r.method == tried.chosen)} | {r.metric:.2f} |"
                for r in tried.results
            ),
            "",
        ]
    summary = latency_summary(cost) if cost is not None else None
    return [
        *lines,
        f"FP32 {found.fp32_metric:.2f}, plain INT8 {found.int8_metric:.2f}, chosen {found.metric:.2f}; "
        f"kept in FP32: {kept}{why_kept(found)}." + (f" Its cost: {summary}." if summary else ""),
        *(
            ["", f"{drop_line(evaluation, drop or found.drop, found.metric_name)}."]
            if drop or found.drop
            else []
        ),
        "",
        "| unit | with only it in FP32 | recovers |",
        "|---|---|---|",
        *(f"| {s.unit} | {s.metric_fp32_alone:.2f} | {s.gain:+.2f} |" for s in found.ranking[:8]),
    ]


def plot(ranking: Sequence[Sensitivity], path: str | os.PathLike[str], metric_name: str = "top-1") -> Path:
    """The ranking as a bar chart (PNG): points recovered by leaving each unit alone in FP32."""
    from resnest_deploy._io import atomic_path

    _deps.require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(ranking)[:20]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.2))
    gains = [s.gain for s in shown][::-1]
    colors = ["#4c72b0" if g > 0 else "#b0b0b0" for g in gains]  # grey: FP32 there recovers nothing
    ax.barh([s.unit for s in shown][::-1], gains, color=colors)
    ax.axvline(0, color="black", linewidth=0.8)
    # at least a point either side: a tenth of a point (one image of 899) must not fill the chart
    ax.set_xlim(min(-1.0, 1.1 * min(gains, default=0.0)), max(1.0, 1.1 * max(gains, default=0.0)))
    title = "INT8 sensitivity"
    if not any(g > 0 for g in gains):
        title += "\nno unit recovers anything: INT8 costs nothing here"
    ax.set(xlabel=f"{metric_name} points recovered with only this unit in FP32", title=title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


# --- what a converted file records, for `inspect` (metadata: untrusted, read defensively) ---------


def module_name(node: str) -> str:
    """The module path of an exported node (``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``)."""
    parts = node.strip("/").split("/")[:-1] or [node]
    if len(parts) > 1 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    return ".".join(parts)


def _few(names: Sequence[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def recorded_lines(section: Any) -> list[str]:
    """How a converted file was made and judged, from its ``conversion`` metadata: what stayed FP32
    and why, the search, the set it was judged on and the drop with its interval. A field that does
    not read as written is left out, not guessed."""
    if not isinstance(section, Mapping):
        return []
    lines = []
    keep = [k for k in section.get("keep_fp32_nodes") or [] if isinstance(k, str)]
    if section.get("precision") == "int8" and keep:
        from resnest_deploy.models.config import RESNEST_PARTS

        defaults = {
            RESNEST_PARTS.keep_fp32_nodes: "the default: the attention gates and the classifier",
            RESNEST_PARTS.searched_keep_fp32_nodes: "where a search starts: the radix softmax",
        }
        why = defaults.get(tuple(keep), "asked")
        lines.append(f"kept in FP32 by name ({why}): nodes matching {', '.join(keep)}")
    found = _read(SearchResult.from_dict, section.get("search"))
    if found is not None:
        lines.append(recorded_search_line(found))
        cost = latency_summary(section["search"])
        if cost:
            lines.append(cost)
    evaluation = _read(Evaluation.from_dict, section.get("evaluation"))
    drop = _read(drop_from_dict, section.get("drop"))
    judged = drop_line(evaluation, drop)
    if judged:
        lines.append(judged)
    elif evaluation is not None:
        lines.append(f"judged on {evaluation}")
    if evaluation is not None and evaluation.resolves is False and found is not None:
        lines.append(
            f"{evaluation.count} images cannot resolve the {found.max_drop:g}-point budget; "
            f"{evaluation.images_needed} would"
        )
    return lines


def _read(parse: Any, data: Any) -> Any:
    """``parse(data)`` for a recorded mapping; ``None`` when it is absent or does not read."""
    if not isinstance(data, Mapping):
        return None
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError):
        return None


def recorded_search_line(found: SearchResult) -> str:
    """A recorded search: the units kept in FP32 and why (each one's gain alone, the rule), and the
    metric before and after."""
    return (
        f"INT8 search: units kept in FP32: {kept_summary(found)}{why_kept(found)}; "
        f"{found.metric_name} {found.metric:.2f} (FP32 {found.fp32_metric:.2f}, "
        f"plain INT8 {found.int8_metric:.2f}, budget {found.max_drop:g} points)"
    )


def equalization_lines(meta: Mapping[str, Any], sidecar: Mapping[str, Any], conversion: Any) -> list[str]:
    """What cross-layer equalization did, from the metadata: of an equalized FP32 file (its own
    ``equalization``) or of a conversion that equalized its source first (``conversion.equalization``):
    how many groups of which kinds, which convolutions, the ranges before and after."""
    record = meta.get("equalization") or sidecar.get("equalization")
    if not isinstance(record, Mapping) and isinstance(conversion, Mapping):
        record = conversion.get("equalization")
    if not isinstance(record, Mapping):
        return []
    lines = []
    results = record.get("results")
    if isinstance(results, list):
        tried = ", ".join(
            f"{r.get('equalize')} {float(r.get('metric') or 0):.2f}"
            for r in results
            if isinstance(r, Mapping)
        )
        lines.append(
            f"equalization auto ({record.get('metric')}, plain INT8): {tried} -> {record.get('chosen')}"
        )
    if record.get("skipped") and isinstance(record["skipped"], str):
        lines.append(f"equalization: {record.get('chosen', 'off')} ({record['skipped']})")
    elif record.get("chosen", "on") == "on":
        groups = record.get("groups", len(record.get("equalized") or []))
        before, after = record.get("imbalance_before"), record.get("imbalance_after")
        skipped = record.get("skipped") or []
        kinds = record.get("kinds")
        if not isinstance(kinds, Mapping):  # an equalized FP32 file records each group
            found = [p.get("kind") for p in record.get("equalized") or [] if isinstance(p, Mapping)]
            kinds = {k: found.count(k) for k in dict.fromkeys(found) if isinstance(k, str)}
        detail = ", ".join(counted_kind(int(n), str(k)) for k, n in kinds.items() if isinstance(n, int))
        lines.append(
            f"equalized: {groups} convolution group(s){f' ({detail})' if detail else ''}, worst range ratio "
            f"{float(before or 1):.3g} -> {float(after or 1):.3g}, {len(skipped)} left alone; logits moved "
            f"{float(record.get('relative_change') or 0):.2g} of their scale"
        )
        firsts = record.get("convolutions")
        if not isinstance(firsts, list):
            firsts = [p.get("first") for p in record.get("equalized") or [] if isinstance(p, Mapping)]
        names = [module_name(n) for n in firsts if isinstance(n, str)]
        if names:
            lines.append(f"equalized convolutions (each with the ones reading it): {_few(names)}")
    return lines
