"""A DeepStream ``nvinfer`` config for a classifier artifact, with normalisation that is exact.

nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on RGB pixels ``x`` (one scale for all
channels) and feeds the network float NCHW at ``infer-dims``, resizing the frame or object to it
(no centre crop). So a file is servable when its input form is ``deepstream`` (x/255 - mean) or
``float`` with one std for all channels; anything else is refused with the export option that fixes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy import formats
from resnest_deploy._io import atomic_path, prepare_outputs
from resnest_deploy.artifacts import deployable
from resnest_deploy.errors import ArtifactError

#: nvinfer's network-mode per precision
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}


@dataclass(frozen=True)
class NvinferConfig:
    properties: dict[str, str]
    labels: list[str]

    def text(self) -> str:
        lines = [
            "# written by resnest-deploy deepstream; see `resnest-deploy deepstream --help`",
            "[property]",
        ]
        lines += [f"{k}={v}" for k, v in self.properties.items()]
        return "\n".join(lines) + "\n"


def class_labels(num_classes: int) -> list[str]:
    from resnest_deploy.predict import class_names

    return class_names(num_classes)


def nvinfer_config(
    artifact: str | os.PathLike[str],
    *,
    labels_path: str = "labels.txt",
    process_mode: int = 1,
    batch_size: int | None = None,
    gie_unique_id: int = 1,
) -> NvinferConfig:
    """The ``[property]`` group for ``artifact`` (an ONNX file or a full-TensorRT engine)."""
    info = deployable(artifact, "an nvinfer config")
    path, kind, meta = Path(info.name), info.kind, info.meta
    if process_mode not in (1, 2):
        raise ArtifactError(f"process-mode is 1 (full frame) or 2 (objects), not {process_mode}")
    scale, offsets = formats.InputForm.of(meta).nvinfer()
    inp = meta.get("input") or {}
    shape = inp.get("shape") or (inp.get("profile") or {}).get("opt") or []
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ArtifactError(
            f"{path} has input shape {shape}; nvinfer needs fixed 3 x H x W (no --dynamic-hw)"
        )
    batch = _batch_size(meta, shape, batch_size, path)
    props: dict[str, str] = {"gpu-id": "0", "net-scale-factor": repr(scale)}
    props["offsets"] = ";".join(f"{o:g}" for o in offsets)
    props["model-color-format"] = "0"  # RGB
    if kind == "engine":
        flavour = (meta.get("tensorrt") or {}).get("flavour")
        if flavour != "tensorrt":
            raise ArtifactError(
                f"{path} was built by {flavour or 'an unknown TensorRT'}; DeepStream runs full TensorRT "
                "engines: give it the ONNX file (nvinfer builds the engine) or build with --backend tensorrt"
            )
        props["model-engine-file"] = str(path.resolve())
    else:
        props["onnx-file"] = str(path.resolve())
    props |= {
        "labelfile-path": labels_path,
        "batch-size": str(batch),
        "network-mode": str(NETWORK_MODE[str(meta.get("precision", "fp32"))]),
        "network-type": "1",  # classifier
        "process-mode": str(process_mode),
        "infer-dims": ";".join(str(d) for d in shape[1:]),
        "gie-unique-id": str(gie_unique_id),
        "output-blob-names": str((meta.get("output") or {}).get("name", formats.OUTPUT_NAME)),
        "classifier-threshold": "0.0",
        "maintain-aspect-ratio": "0",
    }
    num_classes = int(meta.get("num_classes") or 1000)
    return NvinferConfig(props, class_labels(num_classes))


def _batch_size(meta: dict[str, Any], shape: list[Any], asked: int | None, path: Path) -> int:
    """The engine profile's maximum, a static export batch, or what was asked (dynamic ONNX)."""
    profile_max = ((meta.get("input") or {}).get("profile") or {}).get("max")
    most = profile_max[0] if profile_max else shape[0] if isinstance(shape[0], int) else None
    if asked is not None and most is not None and asked > most:
        raise ArtifactError(
            f"batch-size {asked} is above what {path.name} takes ({most}); ask for at most {most}"
        )
    return asked or most or 1


def write(
    artifact: str | os.PathLike[str],
    config_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> tuple[Path, Path, NvinferConfig]:
    """Write the config and its labels file (one line, ';'-separated, as nvinfer reads classifier labels)."""
    artifact = Path(artifact)
    config_path = Path(
        config_path or artifact.with_name(f"config_infer_{artifact.stem.replace('.', '_')}.txt")
    )
    labels = config_path.with_name(f"{config_path.stem}_labels.txt")
    prepare_outputs([config_path, labels], [artifact], with_sidecar=False)
    config = nvinfer_config(artifact, labels_path=labels.name, **kwargs)
    with atomic_path(labels) as tmp:
        tmp.write_text(";".join(config.labels) + "\n")
    with atomic_path(config_path) as tmp:
        tmp.write_text(config.text())
    return config_path, labels, config
