"""The models of a Triton repository written by ``triton``, as the manifests need them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from resnest_deploy.errors import ArtifactError
from resnest_deploy.serving.kubernetes.policy import require


@dataclass(frozen=True)
class RepoModel:
    """One model of a repository, as its config.pbtxt and files say."""

    name: str
    platform: str  # python, onnxruntime_onnx or tensorrt_plan
    gpu: bool
    max_batch_size: int
    instances: int
    file: Path
    bytes: int


def read_repository(repo: str | os.PathLike[str]) -> list[RepoModel]:
    """The models of a repository written by ``triton`` (each config parsed with Triton's schema)."""
    text_format = require("google.protobuf.text_format")
    model_config_pb2 = require("tritonclient.grpc.model_config_pb2")
    repo = Path(repo)
    if not repo.is_dir():
        raise ArtifactError(f"model repository not found: {repo}; write one with `resnest-deploy triton`")
    models = []
    for config in sorted(repo.glob("*/config.pbtxt")):
        try:
            cfg = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
        except Exception as e:
            raise ArtifactError(
                f"{config} is not a Triton config ({str(e)[:120]}); rewrite it with `triton`"
            ) from e
        files = [p for p in (config.parent / "1").glob("model.*") if p.suffix in (".onnx", ".plan")]
        if len(files) != 1:
            raise ArtifactError(f"{config.parent} has no single 1/model.onnx or 1/model.plan; rewrite it")
        platform = cfg.backend if cfg.backend == "python" else cfg.platform
        kinds = {g.kind for g in cfg.instance_group}
        models.append(
            RepoModel(
                cfg.name,
                platform,
                model_config_pb2.ModelInstanceGroup.KIND_GPU in kinds,
                cfg.max_batch_size,
                sum(max(1, g.count) for g in cfg.instance_group) or 1,
                files[0],
                files[0].stat().st_size,
            )
        )
    if not models:
        raise ArtifactError(
            f"{repo} holds no model (no */config.pbtxt); write one with `resnest-deploy triton`"
        )
    return models
