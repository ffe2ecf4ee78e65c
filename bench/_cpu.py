"""CPU time of the processes a benchmark drives, read from /proc (Linux).

CPU time per request does not depend on how busy the machine is the way requests per second
do (other work on a 2-core machine moves the throughput a lot, the CPU each request costs
little), so benchmarks report both.
"""

import os
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the whole process: all threads, user and system)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def _cmdline(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(entry.name) for entry in _PROC.iterdir() if entry.name.isdigit()]


def descendants(root: int) -> list[int]:
    """Every process below `root` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def postgres_backends(dbname: str) -> list[int]:
    """The PostgreSQL server processes serving connections to `dbname`."""
    marker = f" {dbname} "
    return [
        pid
        for pid in _pids()
        if (cmdline := _cmdline(pid)).startswith("postgres:") and marker in cmdline
    ]


def process_groups(root: int, names: dict[str, str], dbname: str | None) -> dict[str, list[int]]:
    """pids by group: each process below `root` whose command line contains `names[group]`,
    and the processes below it (`uvicorn --workers N` runs its workers as children), plus
    `postgres` (the backends of `dbname`) and `load generator` (this process)."""
    below = [(pid, _cmdline(pid)) for pid in descendants(root)]
    groups = {}
    for group, needle in names.items():
        matched = [pid for pid, cmdline in below if needle in cmdline]
        groups[group] = matched + [child for pid in matched for child in descendants(pid)]
    if dbname is not None:
        groups["postgres"] = postgres_backends(dbname)
    groups["load generator"] = [os.getpid()]
    return groups


class CpuMeter:
    """CPU used by each process group between its creation and `ms_per(n)` / `per(n, scale)`,
    per unit of work (a request, a command). `groups` is called at both ends, so processes started
    in between count from zero; one that exited in between is not counted."""

    def __init__(self, groups) -> None:
        self.groups = groups
        self.start = self._read()

    def _read(self) -> dict[str, dict[int, float]]:
        return {
            group: {pid: stat[1] for pid in pids if (stat := _stat(pid)) is not None}
            for group, pids in self.groups().items()
        }

    def ms_per(self, units: int) -> dict[str, float]:
        return self.per(units, scale=1_000)

    def per(self, units: int, *, scale: float) -> dict[str, float]:
        """CPU seconds x `scale` per unit (1,000: ms; 1,000,000: µs)."""
        end = self._read()
        used = {
            group: sum(cpu - self.start.get(group, {}).get(pid, 0.0) for pid, cpu in now.items())
            for group, now in end.items()
        }
        used["total"] = sum(used.values())
        return {group: round(seconds * scale / max(units, 1), 2) for group, seconds in used.items()}
