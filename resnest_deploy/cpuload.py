"""Who else used the CPUs while something was timed: the likely cause of a timing that cannot be
trusted. Linux ``/proc`` only (elsewhere nothing is reported, never a guess).

The machine's busy time comes from ``/proc/stat`` (it counts processes that started and ended in
between); this process's from ``/proc/self/stat``; the busiest other processes by name and pid from
each ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: another process counts as busy from this many cores on average
BUSY_CORES = 0.1


@dataclass(frozen=True)
class Busy:
    pid: int
    name: str
    cores: float  # average cores it used


@dataclass(frozen=True)
class LoadReport:
    seconds: float
    cores: int
    own_cores: float  # this process, all its threads
    others_cores: float  # every other process and the kernel
    busiest: tuple[Busy, ...]  # other processes from BUSY_CORES, busiest first

    @property
    def others_share(self) -> float:
        """The fraction of the machine's CPUs that others used."""
        return self.others_cores / max(1, self.cores)

    def who(self) -> str:
        """``others used 1.70 of 2 cores (busiest: python pid 4242 0.98 core, ...)``"""
        text = f"others used {self.others_cores:.2f} of {self.cores} cores"
        if not self.busiest:
            return text
        top = ", ".join(f"{b.name} pid {b.pid} {b.cores:.2f}" for b in self.busiest[:3])
        return f"{text} (busiest: {top})"


def _busy_ticks() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        if fields[0] == "cpu":
            user, nice, system, _idle, _iowait, irq, softirq, *rest = (int(v) for v in fields[1:])
            return user + nice + system + irq + softirq + (rest[0] if rest else 0)  # + steal
    return None


def _process_ticks(stat: str) -> tuple[str, int]:
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    after = stat[stat.rfind(")") + 2 :].split()
    return name, int(after[11]) + int(after[12])  # utime, stime


def _processes() -> dict[int, tuple[str, int]]:
    found = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    found[int(entry.name)] = _process_ticks(Path(entry.path, "stat").read_text())
    return found


@dataclass
class LoadWatch:
    """``with LoadWatch() as w: ...`` then ``w.report``: the CPU use of everything else meanwhile."""

    report: LoadReport | None = None
    _start: tuple[float, int | None, dict[int, tuple[str, int]]] = field(default=(0.0, None, {}))

    def __enter__(self) -> LoadWatch:
        self._start = (time.monotonic(), _busy_ticks(), _processes())
        return self

    def __exit__(self, *exc: object) -> None:
        t0, busy0, procs0 = self._start
        busy1, procs1 = _busy_ticks(), _processes()
        seconds = time.monotonic() - t0
        me = os.getpid()
        if busy0 is None or busy1 is None or seconds <= 0 or me not in procs0 or me not in procs1:
            return
        own = procs1[me][1] - procs0[me][1]
        per_second = _TICKS * seconds
        busiest = sorted(
            (
                Busy(pid, name, round((ticks - procs0[pid][1]) / per_second, 2))
                for pid, (name, ticks) in procs1.items()
                if pid != me and pid in procs0 and procs0[pid][0] == name
            ),
            key=lambda b: -b.cores,
        )
        self.report = LoadReport(
            round(seconds, 3),
            os.cpu_count() or 1,
            round(own / per_second, 2),
            round(max(0, busy1 - busy0 - own) / per_second, 2),
            tuple(b for b in busiest if b.cores >= BUSY_CORES),
        )
