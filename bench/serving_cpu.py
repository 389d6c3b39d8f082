"""Where the CPU goes during a run: CPU seconds of the producer (this process), the worker
processes (and their pool children), this database's Postgres backends and the Redis
server, read from /proc before and after. Redis is shared with whatever else uses that
server; the other groups are this benchmark's own processes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def with_children(pids: list[int]) -> list[int]:
    """The pids and their direct children (prefork pool processes)."""
    parents = set(pids)
    found = list(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid in parents:
            found.append(int(entry.name))
    return found


Groups = dict[str, Callable[[], list[int]]]


class CpuMeter:
    """`start()` then `stop()` -> CPU seconds per group over the interval. A process that
    appeared in between counts from zero; one that vanished counts up to `start()`."""

    def __init__(self, groups: Groups) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}

    def _snapshot(self) -> dict[str, dict[int, float]]:
        snap: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            snap[name] = {}
            for pid in pids():
                value = cpu_seconds(pid)
                if value is not None:
                    snap[name][pid] = value
        return snap

    def start(self) -> None:
        self._before = self._snapshot()

    def stop(self) -> dict[str, float]:
        after = self._snapshot()
        return {name: sum(v - self._before.get(name, {}).get(pid, 0.0)
                          for pid, v in after[name].items())
                for name in self.groups}


def describe(cpu: dict[str, float], items: int, wall_s: float, unit: str) -> str:
    """'CPU ms per row: producer 1.2, workers 3.4, ...; all 5.4 (1.9 cores busy)'."""
    total = sum(cpu.values())
    parts = ", ".join(f"{name} {seconds * 1000 / items:.2f}" for name, seconds in cpu.items())
    return (f"CPU ms per {unit}: {parts}; all {total * 1000 / items:.2f} "
            f"({total / wall_s:.2f} cores busy)")
