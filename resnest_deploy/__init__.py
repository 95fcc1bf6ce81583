"""resnest-deploy: ResNeSt from checkpoint to verified ONNX, FP16/INT8 and TensorRT artifacts.

Importing the package loads nothing heavy; see ``resnest_deploy.models``, ``resnest_deploy.export``
and ``resnest_deploy.engine``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resnest-deploy")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"
