"""Errors a user can act on: each message is one line naming the problem and the fix."""

from __future__ import annotations


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


class BuildError(ResnestDeployError):
    """A TensorRT / TensorRT-RTX engine that cannot be built here."""


# --- running ------------------------------------------------------------------------------------


class ClusterError(ResnestDeployError):
    """A cluster job that cannot give a complete, exact answer (lost images, a refusing node)."""


# --- environment ---------------------------------------------------------------------------------


class MissingDependencyError(ResnestDeployError, ImportError):
    pass
