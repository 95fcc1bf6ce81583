"""What others published about each arch, and what a CPU can do at most: plain data, no torch.

Published figures are cited with their source; ``None`` where none was found in the sources below
(never filled in from memory). The paper's "GFLOPs", like most CNN papers', count multiply-adds, the
same unit as timm's GMACs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PAPER_README = "ResNeSt authors' repo README, PyTorch column (Zhang et al. 2020)"
PAPER_ABLATION = "ResNeSt authors' repo ablation.md, PyTorch column (Zhang et al. 2020)"
TIMM_CARD = "timm model card on Hugging Face"


@dataclass(frozen=True)
class Published:
    top1: float | None  # ImageNet-1k top-1 %, at the arch's eval size
    top1_source: str | None
    params_m: float | None
    gmacs: float | None
    size_source: str | None


def _card(name: str) -> str:
    return f"{TIMM_CARD} {name}"


PUBLISHED: dict[str, Published] = {
    "resnest50": Published(81.03, PAPER_README, 27.5, 5.4, _card("resnest50d.in1k (the same network)")),
    "resnest101": Published(82.83, PAPER_README, 48.3, 13.4, _card("resnest101e.in1k (the same network)")),
    "resnest200": Published(83.84, PAPER_README, None, None, None),
    "resnest269": Published(84.54, PAPER_README, None, None, None),
    "resnest50_fast_1s1x64d": Published(80.33, PAPER_ABLATION, 26.3, 4.34, PAPER_ABLATION),
    "resnest50_fast_2s1x64d": Published(80.53, PAPER_ABLATION, 27.5, 4.34, PAPER_ABLATION),
    "resnest50_fast_4s1x64d": Published(80.76, PAPER_ABLATION, 31.9, 4.35, PAPER_ABLATION),
    "resnest50_fast_1s2x40d": Published(80.59, PAPER_ABLATION, 25.9, 4.38, PAPER_ABLATION),
    "resnest50_fast_2s2x40d": Published(80.97, PAPER_ABLATION, 26.9, 4.38, PAPER_ABLATION),
    "resnest50_fast_4s2x40d": Published(80.86, PAPER_ABLATION, 30.4, 4.41, PAPER_ABLATION),
    "resnest50_fast_1s4x24d": Published(80.99, PAPER_ABLATION, 25.7, 4.42, PAPER_ABLATION),
    "resnest14d": Published(None, None, 10.6, 2.8, _card("resnest14d.gluon_in1k")),
    "resnest26d": Published(None, None, None, None, None),
    "resnest50d": Published(
        81.03, f"{PAPER_README} (resnest50, the weights timm ported)", 27.5, 5.4, _card("resnest50d.in1k")
    ),
    "resnest101e": Published(
        82.83, f"{PAPER_README} (resnest101, the weights timm ported)", 48.3, 13.4, _card("resnest101e.in1k")
    ),
    "resnest200e": Published(
        83.84, f"{PAPER_README} (resnest200, the weights timm ported)", None, None, None
    ),
    "resnest269e": Published(
        84.54, f"{PAPER_README} (resnest269, the weights timm ported)", None, None, None
    ),
    "resnest50d_1s4x24d": Published(80.99, f"{PAPER_ABLATION} (1s4x24d)", 25.7, 4.42, PAPER_ABLATION),
    "resnest50d_4s2x40d": Published(80.86, f"{PAPER_ABLATION} (4s2x40d)", 30.4, 4.41, PAPER_ABLATION),
}


def published(arch: str) -> Published:
    return PUBLISHED.get(arch, Published(None, None, None, None, None))


# --- the CPU's peak ---------------------------------------------------------------------------------
#
# peak MACs/s = cores x clock x MACs per cycle per core, for the widest instructions the flags allow,
# assuming two SIMD multiply-add ports per core (Intel server cores, AMD Zen 3/4):
#   FP32: FMA on 512-bit (avx512f) 2 x 16 = 32; on 256-bit (avx2 + fma) 2 x 8 = 16; else 2 x 4 = 8
#   INT8: AMX (amx_int8) 1024; avx512_vnni (vpdpbusd, 64 per 512-bit op) 2 x 64 = 128;
#         avx_vnni (256-bit vpdpbusd) 2 x 32 = 64; avx2 without VNNI 32 (vpmaddubsw then vpmaddwd:
#         two instructions per 32 products on 256 bits); else 16.
# The clock is the one the OS reports (/proc/cpuinfo "cpu MHz", the highest core), which under a
# hypervisor is usually the nominal clock: boost can exceed it, so a fraction is an estimate.

FP32_MACS = (("avx512f", 32), ("fma", 16))
INT8_MACS = (("amx_int8", 1024), ("avx512_vnni", 128), ("avx_vnni", 64), ("avx2", 32))


@dataclass(frozen=True)
class Peak:
    cores: int
    clock_mhz: float
    clock_source: str
    fp32_macs_per_cycle: int
    int8_macs_per_cycle: int
    flags: list[str]

    def macs_per_s(self, precision: str) -> float:
        per_cycle = self.int8_macs_per_cycle if precision == "int8" else self.fp32_macs_per_cycle
        return self.cores * self.clock_mhz * 1e6 * per_cycle

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _all_flags() -> set[str]:
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return set(next(ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")))
    return set()


def cpu_peak() -> Peak:
    flags = _all_flags()
    mhz, source = 0.0, "unknown (no /proc/cpuinfo clock)"
    with contextlib.suppress(OSError, ValueError):
        clocks = [
            float(ln.split(":", 1)[1])
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("cpu MHz")
        ]
        if clocks:
            mhz, source = max(clocks), "/proc/cpuinfo 'cpu MHz' (highest core)"
    fp32 = next((m for f, m in FP32_MACS if f in flags), 8)
    int8 = next((m for f, m in INT8_MACS if f in flags), 16)
    wanted = {f for f, _ in (*FP32_MACS, *INT8_MACS)}
    return Peak(os.cpu_count() or 1, mhz, source, fp32, int8, sorted(flags & wanted))


def machine_id() -> str:
    """Which machine a measurement belongs to (CPU model, all its flags, cores): a rerun on another
    machine measures again."""
    model = ""
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    text = f"{model}|{' '.join(sorted(_all_flags()))}|{os.cpu_count()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
