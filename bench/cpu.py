"""Where a run's CPU went: CPU seconds of every process taking part (the services, the
broker, the database, the bench itself), read from ``/proc`` before and after, divided by
the work done (notifications acknowledged, payments pushed).

On a machine where everything shares a few cores this is the budget that decides the
throughput: at R payments/s on C cores, all processes together have C / R seconds of CPU
per payment. Linux only; a process that cannot be found (the broker in a container) is
left out: an empty cell in the report.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field

#: Server processes on this machine, by what their command line contains.
SERVERS = {"rabbitmq": "beam.smp", "mariadb": "mariadbd"}


def _ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _ticks()


def machine_ticks() -> list[int]:
    """The machine's CPU time so far, by kind (``/proc/stat``'s first line)."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def idle_share(before: list[int], after: list[int]) -> float:
    """The share of the machine's CPU time that was idle (idle + iowait) between two
    :func:`machine_ticks` readings."""
    deltas = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(deltas[:8])  # user … steal; guest times are already counted in user
    return (deltas[3] + deltas[4]) / total if total else 1.0


def server_pids() -> dict[str, int]:
    """The local broker's and database's pids, where they run on this machine (the oldest
    match: ``rabbitmqctl`` runs a short-lived ``beam.smp`` of its own)."""
    pids = {}
    for name, pattern in SERVERS.items():
        found = subprocess.run(["pgrep", "-o", "-f", pattern], capture_output=True, text=True)
        if found.stdout.split():
            pids[name] = int(found.stdout.split()[0])
    return pids


@dataclass
class CpuMeter:
    """CPU seconds of named processes between ``start()`` and ``stop()``."""

    pids: dict[str, int]
    _before: dict[str, float] = field(default_factory=dict)
    _after: dict[str, float] = field(default_factory=dict)
    _machine: list[int] = field(default_factory=list)
    _machine_delta: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    def start(self) -> CpuMeter:
        self._before = {n: s for n, p in self.pids.items() if (s := cpu_seconds(p)) is not None}
        self._machine = machine_ticks()
        self.wall_s = time.perf_counter()
        return self

    def stop(self) -> CpuMeter:
        self.wall_s = time.perf_counter() - self.wall_s
        self._after = {n: s for n, p in self.pids.items() if (s := cpu_seconds(p)) is not None}
        self._machine_delta = [b - a for a, b in zip(self._machine, machine_ticks(), strict=False)]
        return self

    def per_unit_us(self, units: int) -> dict[str, float]:
        """Microseconds of CPU per unit of work, by process, with their ``total``."""
        spent = {
            n: (self._after[n] - self._before[n]) * 1e6 / max(units, 1)
            for n in self._before
            if n in self._after
        }
        return {**{n: round(v) for n, v in spent.items()}, "total": round(sum(spent.values()))}

    def machine_share(self) -> dict[str, float]:
        """Percent of the machine's CPU time: busy in user and kernel mode, idle, stolen."""
        d = self._machine_delta
        total = sum(d) or 1
        # user nice system idle iowait irq softirq steal ...
        share = {
            "user": d[0] + d[1],
            "kernel": d[2] + d[5] + d[6],
            "idle": d[3] + d[4],
            "steal": d[7] if len(d) > 7 else 0,
        }
        return {k: round(100 * v / total, 1) for k, v in share.items()}

    def summary(self, units: int) -> dict[str, object]:
        return {
            "units": units,
            "wall_s": round(self.wall_s, 2),
            "cpu_us_per_unit": self.per_unit_us(units),
            "machine_pct": self.machine_share(),
        }
