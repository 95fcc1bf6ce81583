"""Errors a user can act on: each message is one line naming the problem and the fix."""

from __future__ import annotations


class ResnestDeployError(Exception):
    """Base class; the CLI prints these as one line and exits non-zero."""

    exit_code = 1


class UnknownArchError(ResnestDeployError, ValueError):
    exit_code = 2


class WeightsError(ResnestDeployError):
    pass


class ArtifactError(ResnestDeployError):
    """An input file (ONNX, engine, image folder) is missing, unreadable or not what was expected."""


class ExportError(ResnestDeployError):
    pass


class ParityError(ResnestDeployError):
    """A converted artifact no longer computes what its source computes."""


class MissingDependencyError(ResnestDeployError, ImportError):
    pass
