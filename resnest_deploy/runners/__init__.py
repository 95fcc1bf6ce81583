"""Backends behind one interface; the TensorRT runner is imported only when asked for."""

from resnest_deploy.runners.base import Runner

__all__ = ["Runner"]
