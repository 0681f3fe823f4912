"""The peak memory of a worker's pool processes, read from /proc (Linux): the high-water mark of the
resident set (``VmHWM``) of every descendant of the worker's main process. A worker started for one
test has fresh pool processes, so their high-water mark is that test's peak."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children...)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def peak_rss(pid: int) -> int:
    """``VmHWM`` of one process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmHWM for process {pid}")


def pool_peak_rss(worker_pid: int) -> int:
    """The largest peak resident set of the worker's pool processes, in bytes."""
    pids = descendants(worker_pid)
    if not pids:
        raise LookupError(f"worker {worker_pid} has no pool process")
    return max(peak_rss(pid) for pid in pids)
