"""TensorRT engines: build (TensorRT 10/11, TensorRT-RTX) and describe."""

from resnest_deploy.engine.build import BuildError, BuildReport, build_engine, parse_batch_range
from resnest_deploy.engine.flavour import Flavour, detect

__all__ = ["BuildError", "BuildReport", "Flavour", "build_engine", "detect", "parse_batch_range"]
