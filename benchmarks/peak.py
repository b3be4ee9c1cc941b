"""Peak memory of a benchmark step, read from the kernel: this process's high-water mark (reset on demand)
and its finished children's (DataLoader workers)."""

from __future__ import annotations

import resource
from pathlib import Path


def status_kb(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: its high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> float:
    """Reset this process's high-water mark to its resident set; return that set in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS") / 1024


def peak_mb() -> float:
    """This process's high-water mark in MiB since the last `reset_peak`."""
    return status_kb("VmHWM") / 1024


def children_peak_mb() -> float:
    """The largest high-water mark among this process's finished children (a forked worker's includes the
    pages it shares with its parent), in MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
