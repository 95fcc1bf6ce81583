"""Turning failures into one ``error:`` line and an exit code: usage errors, library errors,
library warnings, and output that cannot be written."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click; before, it used click itself
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[assignment]

from resnest_deploy.cli._console import err, styled
from resnest_deploy.errors import ResnestDeployError

P = ParamSpec("P")
R = TypeVar("R")


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, a value out of range, a bad choice) read like every other
    error: one ``error:`` line and exit 2, instead of a framed usage box."""

    def main(  # type: ignore[override]  # same parameters, named
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kwargs: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:
            e.show()
            code = 0
        except UsageError as e:
            where = e.ctx.command_path if e.ctx else "resnest-deploy"
            message = e.format_message().replace("Value error, ", "")
            err.print(styled(("error:", "bold red"), f" {message} (see `{where} --help`)"), highlight=False)
            code = 2
        except typer.Abort:
            err.print("interrupted; no partial files were kept")
            code = 130
        else:
            if not standalone_mode:
                return rv
            code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            raise SystemExit(code)
        sys.exit(code)


#: library parameters whose option is not ``--`` + the name with dashes (the one table)
_FLAGS: dict[str, str] = {
    "onnx_path": "--onnx",
    "ray_address": "--ray",
    "workspace_gib": "--workspace",
    "compute_capabilities": "--compute-capability",
    "keep_fp32_nodes": "--keep-fp32",
    "method": "--calibration",
    "names": "--name",
    "seconds": "--time",
    "batch": "--batch-profile",
}


def flag_for(param: str, value: str | None = None) -> str:
    """The option a library parameter comes from: ``input_format`` -> ``--input-format``, and
    ``target=cpu`` -> ``--target cpu``. Every command renders library errors through it."""
    flag = _FLAGS.get(param, "--" + param.replace("_", "-"))
    return flag if value is None else f"{flag} {value}"


def fail(message: str, code: int) -> NoReturn:
    err.print(styled(("error:", "bold red"), " ", message), highlight=False)
    raise typer.Exit(code) from None


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Known failures become ``error: <one line>`` and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ResnestDeployError as e:
            fail(e.naming(flag_for), e.exit_code)
        except MemoryError:
            fail("out of memory; use fewer or smaller inputs (--count, --chunk-size, --batch-sizes)", 1)
        except OSError as e:  # a full disk, a read-only folder, a file-size limit: name the path and why
            where = e.filename or "the output"
            fail(f"cannot read or write {where}: {e.strerror or e}; free space or choose another path", 1)
        except KeyboardInterrupt:
            err.print("interrupted; no partial files were kept")
            raise typer.Exit(130) from None

    return wrapper


def _show_warning(message: Warning | str, *_args: Any, **_kwargs: Any) -> None:
    """A library warning is one line on stderr, not a source location and a code line."""
    err.print(styled(("warning: ", "yellow"), str(message)))


def run_app(app: Callable[[], Any]) -> None:
    """The console script: output that cannot be written (stdout closed, a broken pipe, a full
    disk) is an error on stderr and a non-zero exit, not a traceback or a silent success."""
    if sys.stdout is None or sys.stdout.fileno() < 0:
        sys.stderr.write("error: standard output is closed; run with stdout open (or > /dev/null)\n")
        sys.exit(2)
    warnings.showwarning = _show_warning
    code: int | str | None = 0
    try:
        app()
    except SystemExit as e:
        code = e.code
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError) as e:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail again
        if not isinstance(e, BrokenPipeError):
            sys.stderr.write(f"error: cannot write standard output: {e.strerror or e}\n")
        code = code or (141 if isinstance(e, BrokenPipeError) else 1)
    sys.exit(code)
