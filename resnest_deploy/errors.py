"""Errors a user can act on: each message is one line naming the problem and the fix."""

from __future__ import annotations

import re
from collections.abc import Callable


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A third-party exception squeezed into our one-line messages (its type if it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


#: how a parameter is written: ``(name, value)`` -> text; the library writes ``name`` / ``name=value``
Naming = Callable[[str, str | None], str]


def as_parameter(name: str, value: str | None = None) -> str:
    """The library's way to write a parameter: ``cpu_isa``, ``target=cpu``."""
    return name if value is None else f"{name}={value}"


class ResnestDeployError(Exception):
    """Base class; the CLI prints these as one line and exits non-zero (``exit_code``).

    A message may name parameters, as ``{name}`` or ``{name=value}`` placeholders, each listed in
    ``param``: ``str(error)`` reads ``threads must be ...`` / ``use target=cpu``, and the CLI,
    through :meth:`naming`, writes the options a user typed there (``--threads``, ``--target cpu``)
    without the library knowing its flags. The template and its names are strings, so an error
    pickles and travels as JSON (a worker's error reads the same in the parent)."""

    exit_code = 1

    def __init__(
        self, message: str = "", *, param: str | tuple[str, ...] = (), exit_code: int | None = None
    ) -> None:
        self.template = message
        self.params = (param,) if isinstance(param, str) else tuple(param)
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.naming(as_parameter))

    def naming(self, name: Naming) -> str:
        """The message with each of its parameters written by ``name`` (a CLI flag, a field)."""
        if not self.params:
            return self.template
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, self.params)) + r")(?:=([^{}]*))?\}")
        return pattern.sub(lambda m: name(m[1], m[2]), self.template)


class UnknownArchError(ResnestDeployError, ValueError):
    exit_code = 2


class WeightsError(ResnestDeployError):
    pass


# --- inputs -------------------------------------------------------------------------------------


class ArtifactError(ResnestDeployError):
    """An input file (ONNX, engine, image folder) is missing, unreadable or not what was expected."""


class ImageError(ResnestDeployError, ValueError):
    """An image that decodes but cannot be turned into model input without guessing."""


class LimitError(ResnestDeployError, ValueError):
    """A size, count or time outside what the tool accepts (memory, engine limits, sanity)."""

    exit_code = 2


# --- making artifacts ----------------------------------------------------------------------------


class ExportError(ResnestDeployError):
    pass


class ParityError(ResnestDeployError):
    """A converted artifact no longer computes what its source computes."""


class ConversionError(ResnestDeployError):
    """An FP16 / INT8 conversion that cannot run or whose result is refused."""


class EqualizeError(ResnestDeployError):
    """The equalized graph does not compute what its source computes."""


class SearchError(ResnestDeployError):
    """The INT8 accuracy search cannot run (no labelled images, no unit to keep) or meet its bound."""


class BuildError(ResnestDeployError):
    """A TensorRT / TensorRT-RTX engine that cannot be built here."""


# --- running ------------------------------------------------------------------------------------


class ClusterError(ResnestDeployError):
    """A cluster job that cannot give a complete, exact answer (lost images, a refusing node)."""


# --- environment ---------------------------------------------------------------------------------


class MissingDependencyError(ResnestDeployError, ImportError):
    pass


# --- serving (H4, issue 30): moved here from resnest_deploy/serving/*; imported at their old sites


class ServeError(ResnestDeployError):
    """``serve`` cannot start, or its server stopped answering."""


class ClientError(ResnestDeployError):
    """The server cannot be reached, or what it serves or answers is not what a classifier serves."""


class RequestRejected(ResnestDeployError):
    """A request the front answers itself, with ``status`` and Triton's ``{"error": ...}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpRejected(ResnestDeployError):
    """A request the HTTP front answers here; ``close`` when the connection cannot be trusted to
    stay in step, ``retry`` to send Retry-After."""

    def __init__(self, status: int, message: str, *, close: bool = False, retry: bool = False) -> None:
        super().__init__(message)
        self.status, self.close, self.retry = status, close, retry


class GrpcRejected(ResnestDeployError):
    """A gRPC call the front ends itself (INVALID_ARGUMENT) before anything reaches Triton."""
