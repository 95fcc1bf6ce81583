"""Optional heavy dependencies, imported only inside the functions that need them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from resnest_deploy.errors import MissingDependencyError

# module -> (pip extra of resnest-deploy, what the module does for us)
_EXTRAS = {
    "torch": ("export", "runs the PyTorch model (export, the PyTorch reference)"),
    "onnxscript": ("export", "is torch.onnx's exporter backend"),
    "tensorrt": ("tensorrt", "builds and runs TensorRT engines"),
    "tensorrt_rtx": ("rtx", "builds TensorRT-RTX engines"),
    "polygraphy": ("rtx", "drives TensorRT builds and runs"),
    "modelopt": ("quant", "converts ONNX to FP16/INT8 for TensorRT"),
    "cuda": ("tensorrt", "moves data to and from the GPU"),
    "huggingface_hub": ("export", "downloads timm weights"),
    "matplotlib": ("plot", "draws the latency plot"),
    "openvino": ("openvino", "runs ONNX files on CPUs with OpenVINO"),
    "safetensors": ("export", "reads .safetensors checkpoints"),
    "tritonclient": ("serve", "talks to Triton servers (predict --server) and reads their config schema"),
    "httptools": ("serve", "parses HTTP (llhttp) for serve's front"),
    "grpc": ("serve", "runs serve's gRPC front"),
    "kubernetes_validate": ("k8s", "validates Kubernetes manifests offline"),
    "yaml": ("k8s", "writes Kubernetes manifests"),
    "jsonschema": ("k8s", "checks a RayJob against KubeRay's CRD schema"),
    "ray": ("ray", "runs eval and predict on a Ray cluster"),
    "pyarrow": ("ray", "writes Parquet prediction files"),
}


def has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an error that names the pip extra providing it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        root = module.split(".")[0]
        extra, purpose = _EXTRAS.get(root, (None, "is needed here"))
        fix = f"pip install 'resnest-deploy[{extra}]'" if extra else f"pip install {root}"
        raise MissingDependencyError(f"{root} {purpose} but is not installed ({e}); run: {fix}") from e
