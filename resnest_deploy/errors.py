"""Errors a user can act on: each message is one line naming the problem and the fix."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A third-party exception squeezed into our one-line messages (its type if it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


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
