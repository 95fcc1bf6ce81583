"""Errors a user can act on: each message is one line naming the problem and the fix."""

from __future__ import annotations

from collections.abc import Callable, Mapping


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A third-party exception squeezed into our one-line messages (its type if it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class ResnestDeployError(Exception):
    """Base class; the CLI prints these as one line and exits non-zero.

    A message about one parameter names it as ``{param}`` with ``param=`` given: the library's
    message reads ``threads must be ...``, and the CLI writes the option the user typed there
    (``--threads must be ...``) without the library knowing its flags."""

    exit_code = 1

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        self.template = message
        self.param = param
        super().__init__(self.naming(param) if param else message)

    def naming(self, name: str) -> str:
        """The message with the parameter called ``name`` (a CLI flag, a config field)."""
        return self.template.replace("{param}", name)


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


class SearchError(ResnestDeployError):
    """The INT8 accuracy search cannot run (no labelled images, no unit to keep) or meet its bound."""


class EqualizeError(ResnestDeployError):
    """A cross-layer equalized graph that does not compute what its source computes."""


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


class ParameterError(ResnestDeployError, ValueError):
    """A refused parameter value. The message names each parameter through a function, so the
    library says ``p99_ms`` and the CLI, through :meth:`as_flags`, says ``--p99-ms``."""

    def __init__(self, render: Callable[..., str], *, exit_code: int = 1) -> None:
        super().__init__(render(str))
        self.render, self.exit_code = render, exit_code

    def as_flags(self, flags: Mapping[str, str] | None = None) -> ParameterError:
        """The same error naming each parameter as its CLI option: ``flags`` where it names one,
        else ``--`` and the name with ``-`` for ``_``."""
        known = dict(flags or {})
        named = type(self).__new__(type(self))  # the same class: a ServeParameterError stays one
        named.__dict__.update(self.__dict__)
        named.args = (self.render(lambda p: known.get(p) or "--" + p.replace("_", "-")),)
        return named


class ServeParameterError(ParameterError, ServeError):
    """A parameter of ``serve`` refused: a port, a file it would write."""


class ArtifactParameterError(ParameterError, ArtifactError):
    """A parameter refused where an :class:`ArtifactError` was raised before (a model name, a batch
    size, a repository or manifest setting): callers that catch ArtifactError still do."""


class ClientParameterError(ParameterError, ClientError):
    """A parameter of a served prediction refused: the server's address, the model, the arch."""
