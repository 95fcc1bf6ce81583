"""cuda-python, checked: the one place the engine builder, the TensorRT runner and the pipeline reach
the CUDA runtime (no torch: the CPU build of PyTorch that the README installs sees no GPU even on a
GPU machine). Imports nothing of this package but its errors, so every module may import it.
"""

from __future__ import annotations

from typing import Any

from resnest_deploy.errors import ArtifactError, MissingDependencyError


def driver_problem() -> str | None:
    """Why no CUDA GPU can run anything here, asked of the driver itself (``libcuda``, through
    ctypes: no cuda-python, TensorRT or torch needed), or None when a GPU is visible. Said before
    any install hint: installing packages does not give a machine a GPU."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver here (libcuda.so.1 is not installed): this machine has no usable NVIDIA GPU"
    status = int(lib.cuInit(0))
    if status != 0:
        return (
            f"the NVIDIA driver found no usable GPU (cuInit error {status}: no GPU, a driver/kernel "
            "mismatch, or CUDA_VISIBLE_DEVICES hides it)"
        )
    count = ctypes.c_int(0)
    if int(lib.cuDeviceGetCount(ctypes.byref(count))) != 0 or count.value < 1:
        return "the NVIDIA driver sees no GPU (CUDA_VISIBLE_DEVICES may hide it)"
    return None


def cudart() -> Any:
    """cuda-python's runtime API (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        try:
            from cuda import cudart as runtime

            return runtime
        except ImportError as e:
            raise MissingDependencyError(
                f"cuda-python moves data to and from the GPU but is not installed ({e}); "
                "run: pip install 'resnest-deploy[tensorrt]'"
            ) from e


class Cuda:
    """cuda-python calls return ``(error, *values)``: every one is checked here."""

    def __init__(self) -> None:
        self.rt = cudart()

    def __call__(self, fn: str, *args: Any) -> Any:
        err, *values = getattr(self.rt, fn)(*args)
        if int(err) != 0:
            raise ArtifactError(f"CUDA {fn} failed: {err}; is a CUDA GPU visible to this process?")
        return values[0] if len(values) == 1 else tuple(values) or None


def gpu_count() -> int:
    """CUDA devices this process can use; 0 without cuda-python, a driver or a GPU."""
    try:
        err, count = cudart().cudaGetDeviceCount()
    except Exception:
        return 0
    return int(count) if int(err) == 0 else 0


def device_name(index: int = 0) -> str | None:
    try:
        err, props = cudart().cudaGetDeviceProperties(index)
    except Exception:
        return None
    if int(err) != 0:
        return None
    name = props.name
    return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\0")


def compute_capability(index: int = 0) -> str | None:
    """``sm_XY`` of a GPU (what TensorRT's timing caches and engines are specific to), or None."""
    try:
        err, props = cudart().cudaGetDeviceProperties(index)
    except Exception:
        return None
    return f"sm_{props.major}{props.minor}" if int(err) == 0 else None
