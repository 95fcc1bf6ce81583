"""A DeepStream ``nvinfer`` config for a classifier artifact, with normalisation that is exact.

nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on RGB pixels ``x`` (one scale for all
channels) and feeds the network float NCHW at ``infer-dims``, resizing the frame or object to it
(no centre crop). So a file is servable when its input form is ``deepstream`` (x/255 - mean) or
``float`` with one std for all channels; anything else is refused with the export option that fixes it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy import formats, interface
from resnest_deploy._io import atomic_path, prepare_outputs
from resnest_deploy.artifacts import deployable
from resnest_deploy.engine.flavour import engine_flavour
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import MAX_BATCH, check_positive

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
    from resnest_deploy.data.classes import class_names

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
    check_positive(gie_unique_id, "gie-unique-id", maximum=2**31 - 1)
    form = formats.InputForm.of(meta)
    scale, offsets = form.nvinfer()
    io = info.io
    if io.layout != "NCHW" or io.input_dims[0] != 3:
        raise ArtifactError(f"{path} takes {io.input_dims}; nvinfer feeds 3 x H x W (re-export)")
    precision = str(meta.get("precision", "fp32"))
    if precision not in NETWORK_MODE:
        raise ArtifactError(
            f"{path} computes in {precision}, which nvinfer's network-mode cannot express; "
            "give it the FP32, FP16 or INT8 file"
        )
    batch = _batch_size(io, batch_size, path)
    props: dict[str, str] = {"gpu-id": "0", "net-scale-factor": repr(scale)}
    props["offsets"] = ";".join(f"{o:g}" for o in offsets)
    props["model-color-format"] = "0"  # RGB
    if kind == "engine":
        flavour = engine_flavour(path)
        if flavour != "tensorrt":
            raise ArtifactError(
                f"{path} was built by {flavour} (its header says so); DeepStream runs full TensorRT "
                "engines: give it the ONNX file (nvinfer builds the engine) or build with --backend tensorrt"
            )
        props["model-engine-file"] = str(path.resolve())
    else:
        props["onnx-file"] = str(path.resolve())
    props |= {
        "labelfile-path": labels_path,
        "batch-size": str(batch),
        "network-mode": str(NETWORK_MODE[precision]),
        "network-type": "1",  # classifier
        "process-mode": str(process_mode),
        "infer-dims": ";".join(str(d) for d in io.input_dims),
        "gie-unique-id": str(gie_unique_id),
        "output-blob-names": io.output_name,
        "classifier-threshold": "0.0",
        "maintain-aspect-ratio": "0",
    }
    for key, value in props.items():
        check_value(key, value)
    return NvinferConfig(props, class_labels(io.num_classes))


def check_value(key: str, value: str) -> str:
    """A value nvinfer's key file reads back as written: one line, no escapes (GKeyFile reads ``\\``
    sequences), no leading or trailing blanks. A path that is not is refused, not rewritten."""
    if _UNSAFE.search(value) or value != value.strip():
        raise ArtifactError(
            f"{key} would be {value!r}, which an nvinfer config cannot hold (control characters, a "
            "backslash or surrounding blanks); rename the file or folder"
        )
    return value


_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


def _batch_size(io: interface.Io, asked: int | None, path: Path) -> int:
    """The engine profile's maximum, a static export batch, or what was asked (dynamic ONNX)."""
    most = io.batch_max
    if asked is not None:
        check_positive(asked, "batch_size", maximum=MAX_BATCH)
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
    check_value("labelfile-path", labels.name)
    prepare_outputs([config_path, labels], [artifact], with_sidecar=False)
    config = nvinfer_config(artifact, labels_path=labels.name, **kwargs)
    with atomic_path(labels) as tmp:
        tmp.write_text(";".join(config.labels) + "\n")
    with atomic_path(config_path) as tmp:
        tmp.write_text(config.text())
    return config_path, labels, config
