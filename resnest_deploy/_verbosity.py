"""Whether third-party tools (ONNX Runtime, ModelOpt) may write their own log lines to the terminal:
only with ``--verbose``. Our own line says what went wrong; theirs stay off unless asked for. Kept in
the environment too, so processes we start (bench workers, Triton models) follow the same choice."""

from __future__ import annotations

import os

ENV = "RESNEST_DEPLOY_VERBOSE"


def set_verbose(on: bool) -> None:
    os.environ[ENV] = "1" if on else "0"


def verbose() -> bool:
    return os.environ.get(ENV, "0") == "1"


def ort_severity() -> int:
    """ONNX Runtime's log severity: 4 (fatal only) keeps even its coloured error lines off, which it
    writes before failing over (a CUDA provider that cannot load); 2 (warnings) with --verbose."""
    return 2 if verbose() else 4
