"""The registry as plain rows, for tables, JSON and docs."""

from __future__ import annotations

from typing import Any

from resnest_deploy.models.registry import get_spec, list_models


def catalog() -> list[dict[str, Any]]:
    """Every variant as plain data; parameter counts come from the configs (no torch)."""
    rows = []
    for arch in list_models():
        spec = get_spec(arch)
        p, a = spec.pretrained, spec.arch
        rows.append(
            {
                "arch": arch,
                "params": a.num_params(),
                "layers": list(a.layers),
                "radix": a.radix,
                "cardinality": a.cardinality,
                "base_width": a.base_width,
                "stem_width": a.stem_width,
                "avd_first": a.avd_first,
                "input_size": p.input_size,
                "crop_pct": p.crop_pct,
                "interpolation": p.interpolation,
                "mean": list(p.mean),
                "std": list(p.std),
                "num_classes": p.num_classes,
                "weights_source": p.source,
                "weights_url": p.url,
            }
        )
    return rows
