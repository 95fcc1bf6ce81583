"""What every command shares: option types, output, and turning errors into one line."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click; before, it used click itself
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[assignment]

from resnest_deploy.errors import ResnestDeployError
from resnest_deploy.precision import config as _config

#: control characters (C0, DEL, C1) and bidi overrides: shown escaped, never sent to the terminal
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def visible(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``): a file name or a metadata
    string can move the cursor, retitle the window or clear the screen otherwise."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text with styles from plain parts: ``styled(("error:", "bold red"), " ", message)``."""
    return Text.assemble(*((visible(p[0]), p[1]) if isinstance(p, tuple) else visible(p) for p in parts))


class SafeConsole(Console):
    """The one place untrusted text reaches the terminal: markup is off (a path holding ``[/x]`` is a
    path, ``[red]b.png`` prints as written) and control characters are escaped, in plain strings and
    table cells alike. Styles come from :func:`styled` ``Text`` and ``style=``."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs["markup"] = False
        super().print(*(_clean(o) for o in objects), **kwargs)


def _clean(obj: Any) -> Any:
    if isinstance(obj, str):
        return visible(obj)
    if isinstance(obj, Table):
        if isinstance(obj.title, str):
            obj.title = visible(obj.title)
        for column in obj.columns:
            column._cells = [visible(c) if isinstance(c, str) else c for c in column._cells]
    return obj


out = SafeConsole(soft_wrap=True, markup=False)
err = SafeConsole(stderr=True, soft_wrap=True, markup=False)

P = ParamSpec("P")
R = TypeVar("R")

ArchOpt = Annotated[
    str, typer.Option("--arch", "-a", help="Model name, e.g. resnest50 (see `resnest-deploy models`).")
]
WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        "-w",
        help="'pretrained' (published weights, downloaded once and cached), 'random' (seeded, offline), "
        "a .pth/.pt/.safetensors file, or a URL.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", help="Let the quantizers' own progress bars and logs through.")
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Where to write; default under models/<arch>/.")
]

RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        envvar="RAY_ADDRESS",
        show_envvar=True,
        metavar="ADDRESS|auto",
        help="Run on a Ray cluster (pip install 'resnest-deploy\\[ray]'): its address (HOST:6379) or "
        "'auto' for the one `ray start` runs here. Images are read and classified on the workers.",
    ),
]
#: ``--ray`` of the INT8 search (quantize --max-drop, pipeline -p int8): only its trials go there
RaySearchOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        envvar="RAY_ADDRESS",
        show_envvar=True,
        metavar="ADDRESS|auto",
        help="INT8 search: run its per-unit sensitivity trials on a Ray cluster (pip install "
        "'resnest-deploy\\[ray]'), its address (HOST:6379) or 'auto'; calibration and the search's later, "
        "sequential steps stay here. Without a search, RAY_ADDRESS is ignored and --ray refused.",
    ),
]

ArtifactsArg = Annotated[
    list[str], typer.Argument(help="ONNX files (any precision), engines (.plan), or 'torch' / 'torch:cuda'.")
]
ArchOptional = Annotated[
    str | None, typer.Option("--arch", "-a", help="Default: the arch the artifacts record.")
]
WeightsOptional = Annotated[
    str | None, typer.Option("--weights", "-w", help="Default: the weights the artifacts record.")
]


class Provider(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    openvino = "openvino"
    openvino_bf16 = "openvino-bf16"


class InputFormat(str, Enum):
    float = "float"
    uint8_nhwc = "uint8-nhwc"
    uint8_nchw = "uint8-nchw"
    deepstream = "deepstream"


class OvHint(str, Enum):
    latency = "latency"
    throughput = "throughput"


# the conversion's choices are defined once, in the library; the options take them from there
Precision = _config.Precision
Reduced = _config.Reduced
Target = _config.Target
Method = _config.Method
CpuIsa = _config.CpuIsa


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    tensorrt_rtx = "tensorrt-rtx"


ProviderOpt = Annotated[
    Provider,
    typer.Option(
        help="What runs .onnx files: ONNX Runtime on cpu, cuda or tensorrt; or OpenVINO on the CPU in "
        "f32 ('openvino') or bf16 ('openvino-bf16', CPUs with AVX-512-BF16/AMX). Never a silent BF16."
    ),
]
CountOpt = Annotated[int, typer.Option(min=1, help="How many inputs.")]
ChunkOpt = Annotated[
    int, typer.Option("--chunk-size", min=1, help="Inputs per inference call (memory, engine maximum).")
]
BatchSizesOpt = Annotated[
    str, typer.Option("--batch-sizes", "-b", help="Batch sizes to time, comma-separated, e.g. 1,8,32.")
]

ARTIFACT_ROOT = Path("models")


def default_path(arch: str | None, name: str) -> Path:
    return ARTIFACT_ROOT / (arch or "custom") / name


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


def reflow(doc: str) -> str:
    """A command's docstring as --help shows it: each prose paragraph one line, so the terminal wraps
    it at any width (hard line breaks came out ragged); example blocks keep their lines."""
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    kept = []
    for paragraph in paragraphs:
        lines = paragraph.splitlines()
        if lines and (lines[0].rstrip().endswith(":") or any(ln.startswith("  ") for ln in lines)):
            kept.append(paragraph)
        else:
            kept.append(" ".join(ln.strip() for ln in lines))
    return "\n\n".join(kept)


def deprecated(old: str, new: str) -> None:
    """An old spelling that still works for one release, said once on stderr."""
    err.print(
        styled(("deprecated:", "yellow"), f" {old} still works this release; write {new}"), highlight=False
    )


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
            fail(str(e), e.exit_code)
        except MemoryError:
            fail("out of memory; use fewer or smaller inputs (--count, --chunk-size, --batch-sizes)", 1)
        except OSError as e:  # a full disk, a read-only folder, a file-size limit: name the path and why
            where = e.filename or "the output"
            fail(f"cannot read or write {where}: {e.strerror or e}; free space or choose another path", 1)
        except KeyboardInterrupt:
            err.print("interrupted; no partial files were kept")
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def progress(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr whose text the library's ``progress`` callback updates."""
    if not enabled or not err.is_terminal:
        yield lambda msg: err.print(msg, style="dim", highlight=False)
        return
    with err.status("starting") as status:
        yield lambda msg: status.update(msg)


@contextmanager
def executor(ray_address: str | None, show_progress: bool = True) -> Iterator[Any]:
    """The executor the user chose (local, or the Ray cluster at ``ray_address``), closed after."""
    from resnest_deploy.executors import executor_for

    def report(line: str) -> None:
        err.print(line, style="dim", highlight=False)

    chosen = executor_for(ray_address, report if show_progress else None)
    try:
        yield chosen
    finally:
        chosen.close()


def ray_typed(ray_address: str | None) -> bool:
    """Whether ``--ray`` was given on the command line: the same value in ``RAY_ADDRESS`` is the
    environment's, which is no request to use Ray for a command that runs none (typer's context does
    not say where a value came from here)."""
    return bool(ray_address) and ray_address != os.environ.get("RAY_ADDRESS")


@contextmanager
def search_executor(ray_address: str | None, searching: bool, show_progress: bool = True) -> Iterator[Any]:
    """The executor for the INT8 search's trials: the Ray cluster's when one is named and a search
    runs, else None (here, one trial after another). ``--ray`` given where no search runs is
    refused; ``RAY_ADDRESS`` from the environment is then ignored, as for any command without Ray."""
    if not searching and ray_typed(ray_address):
        raise typer.BadParameter(
            "--ray runs the INT8 search's trials: add --max-drop with -p int8 (pipeline: -p int8), "
            "or drop --ray",
            param_hint="--ray",
        )
    if not (ray_address and searching):
        yield None
        return
    with executor(ray_address, show_progress) as chosen:
        yield chosen


@contextmanager
def counting_bar(
    label: str, enabled: bool = True
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar on stderr for the library's ``on_total``/``advance`` callbacks."""
    if not enabled or not err.is_terminal:
        yield (lambda _n: None), (lambda _n: None)
        return
    from rich.progress import Progress

    with Progress(*Progress.get_default_columns(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield (lambda n: bar.update(task, total=n)), (lambda n: bar.advance(task, n))


def metrics_table(
    title: str,
    rows: dict[str, Any],
    failures: dict[str, list[str]] | None = None,
    unjudged: Sequence[str] = (),
) -> Any:
    """Parity metrics (``compare.Metrics``) per artifact, as check and quantize print them; rows in
    ``unjudged`` (random weights) say so instead of ok."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("artifact", "max abs", "mean abs", "cosine", "top-1", "top-5", "n"):
        table.add_column(col, justify="left" if col == "artifact" else "right", overflow="fold")
    if failures is not None:
        table.add_column("result")
    for name, m in rows.items():
        cells: list[str | Text] = [
            name,
            f"{m.max_abs:.3g}",
            f"{m.mean_abs:.3g}",
            f"{m.cosine:.6f}",
            f"{m.top1:.1%}",
            f"{m.top5:.1%}",
        ]
        cells.append(str(m.samples))
        if failures is not None:
            problems = failures.get(name) or []
            cells.append(
                styled(("FAIL", "red"), " " + "; ".join(problems))
                if problems
                else styled(("not judged", "yellow"))
                if name in unjudged
                else styled(("ok", "green"))
            )
        table.add_row(*cells)
    return table


def parse_batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a comma-separated list of batch sizes, e.g. 1,8,32", param_hint="--batch-sizes"
        ) from None
    if not values or min(values) < 1:
        raise typer.BadParameter("batch sizes must be positive, e.g. 1,8,32", param_hint="--batch-sizes")
    return values


def strict_json(data: Any) -> Any:
    """``data`` with NaN and infinities as null: ``--json`` is RFC 8259 JSON, which has neither."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {str(k): strict_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [strict_json(v) for v in data]
    return data


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(strict_json(data), indent=2, default=str, allow_nan=False) + "\n")


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
