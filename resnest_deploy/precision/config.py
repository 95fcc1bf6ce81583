"""What a conversion is asked to make, validated once when made; the choices are defined here once.

``ConversionConfig`` travels unchanged from the CLI (which derives its option choices from these
enums) through ``pipeline`` and ``precision.convert`` to ``Job``, whose cache key is made of its
fields. Messages name parameters (``max_drop``, ``cpu_isa``, ``target=cpu``); the CLI maps them to
its flags (``cli._errors.flag_for``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnest_deploy.errors import ConversionError, Naming, ResnestDeployError, as_parameter

if TYPE_CHECKING:
    from resnest_deploy.compare import Tolerance
    from resnest_deploy.executors import Executor


class Choice(str, Enum):
    """A fixed choice that prints and formats as its value (``int8``, not ``Precision.int8``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Precision(Choice):
    """What a file computes in."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Reduced(Choice):
    """What ``convert`` makes: an FP32 file is what ``export`` makes."""

    fp16 = "fp16"
    int8 = "int8"


class Target(Choice):
    """Who runs the file: TensorRT (ModelOpt Q/DQ, strongly typed FP16) or the CPU (ONNX Runtime)."""

    tensorrt = "tensorrt"
    cpu = "cpu"


class Method(Choice):
    """INT8 calibration; ``auto`` tries every method the target's quantizer offers."""

    max = "max"
    entropy = "entropy"
    percentile = "percentile"
    distribution = "distribution"
    auto = "auto"


class Equalize(Choice):
    """INT8: cross-layer equalization of the FP32 source before calibration (``precision.equalize``);
    ``auto`` converts with and without it and keeps the better on the held-out metric."""

    off = "off"
    on = "on"
    auto = "auto"


class CpuIsa(Choice):
    """CPU target: the CPUs the file will run on (7-bit weights on ``any``, 8-bit on ``vnni``)."""

    any = "any"
    vnni = "vnni"


#: the calibration methods each target's quantizer offers (ONNX Runtime's; ModelOpt's)
#: calibration images used when the user gives no ``--calib-count``
DEFAULT_COUNT = 256
#: FP16: op types kept in FP32 unless the caller says otherwise
FP16_KEEP_FP32_OPS: tuple[str, ...] = ("Softmax",)
#: FP16: node-name patterns kept in FP32 by default (``--keep-fp32`` adds some): none, the classifier
#: included, since FP16 logits of the digits model match FP32 to a cosine of 0.9999997
FP16_KEEP_FP32_NODES: tuple[str, ...] = ()
CPU_METHODS: tuple[str, ...] = ("max", "entropy", "percentile", "distribution")
TENSORRT_METHODS: tuple[str, ...] = ("max", "entropy", "percentile")
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Reduced)
TARGETS: tuple[str, ...] = tuple(t.value for t in Target)
CPU_ISAS: tuple[str, ...] = tuple(i.value for i in CpuIsa)
EQUALIZE: tuple[str, ...] = tuple(e.value for e in Equalize)


def _choice(kind: type[Choice], value: Any, name: str) -> Any:
    try:
        return kind(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(c.value for c in kind)
        raise ConversionError(f"unknown {{{name}}} {value!r}; choose one of {choices}", param=name) from None


@dataclass(frozen=True)
class ConversionConfig:
    """One conversion's settings. ``keep_fp32_nodes`` None: the precision's default (INT8: the
    attention gate and the classifier). ``max_drop`` (points, 0..100): INT8 search budget, None: no
    search. ``tolerance``: replaces the precision's default parity bar (recorded). ``equalize``: INT8,
    cross-layer equalization of the source first (``auto``: kept where the held-out metric says it
    helps)."""

    precision: Reduced | str
    target: Target | str = Target.tensorrt
    method: Method | str = Method.max
    keep_fp32_nodes: tuple[str, ...] | None = None
    keep_fp32_ops: tuple[str, ...] = FP16_KEEP_FP32_OPS
    tolerance: Tolerance | None = None
    max_drop: float | None = None
    cpu_isa: CpuIsa | str = CpuIsa.any
    equalize: Equalize | str = Equalize.off

    def __post_init__(self) -> None:
        precision = _choice(Reduced, self.precision, "precision")
        target = _choice(Target, self.target, "target")
        cpu_isa = _choice(CpuIsa, self.cpu_isa, "cpu_isa")
        if cpu_isa != CpuIsa.any and (target, precision) != (Target.cpu, Reduced.int8):
            raise ConversionError(
                "{cpu_isa} is for {target=cpu} INT8 files (their weights); drop it here",
                param=("cpu_isa", "target"),
            )
        if precision == Reduced.fp16 and target == Target.cpu:
            raise ConversionError(
                "FP16 is a GPU format (ONNX Runtime's CPU kernels run it slower than FP32); "
                "use {target=tensorrt}, or {precision=int8} {target=cpu} for a faster CPU model",
                param=("target", "precision"),
            )
        method = str(self.method.value if isinstance(self.method, Enum) else self.method)
        if precision == Reduced.fp16:
            _refuse_int8_only(method, self.max_drop)
        allowed = CPU_METHODS if target == Target.cpu else TENSORRT_METHODS
        if precision == Reduced.int8 and method not in (*allowed, "auto"):
            raise ConversionError(
                f"calibration method {method!r} is not available for {target}; use {', '.join(allowed)}"
            )
        equalize = _choice(Equalize, self.equalize, "equalize")
        if equalize != Equalize.off and precision != Reduced.int8:
            raise ConversionError(
                "{equalize} balances INT8 ranges; an FP16 file has none to balance: drop it here",
                param="equalize",
            )
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise ConversionError(
                f"{{max_drop}} is in points of top-1, 0..100; got {self.max_drop}", param="max_drop"
            )
        set_ = object.__setattr__
        set_(self, "precision", precision)
        set_(self, "target", target)
        set_(self, "cpu_isa", cpu_isa)
        set_(self, "equalize", equalize)
        set_(self, "method", _choice(Method, method, "method"))
        if self.keep_fp32_nodes is not None:
            set_(self, "keep_fp32_nodes", tuple(self.keep_fp32_nodes))
        set_(self, "keep_fp32_ops", tuple(self.keep_fp32_ops))

    @property
    def methods(self) -> tuple[str, ...]:
        """The calibration methods this target's quantizer offers (what ``auto`` tries, in order)."""
        return CPU_METHODS if self.target == Target.cpu else TENSORRT_METHODS

    @property
    def auto(self) -> bool:
        return self.precision == Reduced.int8 and self.method == Method.auto

    def keep(self) -> list[str]:
        """The node-name regexes kept in FP32: the given ones, else the precision's default. A
        searched INT8 conversion (``max_drop``) starts from every unit in INT8 and lets the
        evaluation set say which to keep in FP32; unsearched, INT8 keeps the gates and classifier."""
        if self.keep_fp32_nodes is not None:
            return list(self.keep_fp32_nodes)
        if self.precision == Reduced.fp16:
            return list(FP16_KEEP_FP32_NODES)
        from resnest_deploy.models.config import RESNEST_PARTS

        if self.max_drop is not None:
            return list(RESNEST_PARTS.searched_keep_fp32_nodes)
        return list(RESNEST_PARTS.keep_fp32_nodes)

    def with_method(self, method: str) -> ConversionConfig:
        return replace(self, method=method)

    def key(self) -> list[Any]:
        """The fields that change the converted graph, as the cache key lists them."""
        return [
            str(self.precision),
            str(self.target),
            str(self.method),
            self.keep(),
            list(self.keep_fp32_ops),
            str(self.cpu_isa) if self.target == Target.cpu else None,  # decides reduce_range
            str(self.equalize),  # auto is resolved to on or off before anything is calibrated
        ]


def _refuse_int8_only(method: str, max_drop: float | None) -> None:
    """What only INT8 uses, given to an FP16 conversion: one line naming it (a usage error)."""
    if max_drop is not None:
        raise ConversionError(
            "{max_drop} searches the units INT8 hurts; an FP16 file has none to search: drop it, "
            "or convert with {precision=int8}",
            param=("max_drop", "precision"),
            exit_code=2,
        )
    if method != Method.max.value:  # max, the default, is what FP16 is given when nothing is said
        raise ConversionError(
            f"{{method}} {method} calibrates INT8; an FP16 file needs no calibration: drop it, "
            "or convert with {precision=int8}",
            param=("method", "precision"),
            exit_code=2,
        )


@dataclass(frozen=True)
class CalibrationOptions:
    """Where calibration images come from: a folder of images or a preprocessed .npy (neither: the
    arch's bundled data, if it has any), and how many to calibrate on; ``eval_dir``: a labelled
    folder, kept apart from them, that the conversion is judged on (``CalibrationData.evaluation``)."""

    calib_dir: Path | None = None
    calib_npy: Path | None = None
    count: int = DEFAULT_COUNT
    eval_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("calib_dir", "calib_npy", "eval_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))

    def check_for(self, precision: Precision | Reduced | str) -> None:
        """Refuses what a file of ``precision`` cannot use: an evaluation set judges INT8 only."""
        precision = precision_of(precision)
        if self.eval_dir is not None and precision != Precision.int8:
            raise ConversionError(
                f"{{eval_dir}} judges INT8 conversions; a {precision} file is measured without it: "
                "drop it, or convert with {precision=int8}",
                param=("eval_dir", "precision"),
                exit_code=2,
            )


@dataclass(frozen=True)
class RunOptions:
    """How a conversion runs, not what it makes: progress lines, the executor of the search's
    trials (e.g. a Ray cluster's), the quantizers' own logs, and the cache of calibrated models."""

    progress: Callable[[str], None] | None = None
    executor: Executor | None = None
    verbose: bool = False
    use_cache: bool = True
    #: how a failure's parameters read in a written report (the CLI: as its flags)
    words: Naming | None = None

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def wording(self, error: ResnestDeployError) -> str:
        return error.naming(self.words) if self.words is not None else str(error)

    def name(self, param: str, value: str | None = None) -> str:
        """A parameter as the caller writes it in a progress line (the CLI: its flag)."""
        return (self.words or as_parameter)(param, value)


def precision_of(value: Precision | str) -> Precision:
    """A pipeline's precision (fp32 included), checked."""
    return _choice(Precision, value, "precision")
