"""The process's resident memory, per pipeline step: so a run says which step needed how
much, and a memory limit (a SLURM `--mem`, a container) can be set from a measured figure.

Linux keeps a high-water mark of the resident set (`VmHWM` in /proc/self/status); writing
"5" to /proc/self/clear_refs resets it to the current size, so each step's peak is its own,
not the largest of every step before. `RssFile` is the part of the resident set backed by
files (memory maps; the kernel can drop it under pressure, but RSS-based limits count it).
Elsewhere (macOS, Windows) only the process's lifetime peak is available: `resource`'s
`ru_maxrss`, then reported as the step's peak without a reset.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MIB = 1024 * 1024


def reset_peak() -> None:
    """Start a new high-water mark of the resident set, where the OS allows it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass  # not Linux, or /proc read-only: the peak then covers the process's life


def _status_kib(fields: tuple[str, ...]) -> dict[str, int]:
    """{field: kiB} of /proc/self/status lines such as 'VmHWM:   123 kB'."""
    values = {}
    for line in _STATUS.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0])
    return values


def usage() -> dict[str, float]:
    """{peak_rss_mib, rss_file_mib}: the resident set's peak since the last `reset_peak`
    and, on Linux, its file-backed part now (MiB)."""
    try:
        status = _status_kib(("VmHWM", "RssFile"))
        return {"peak_rss_mib": status["VmHWM"] / 1024, "rss_file_mib": status["RssFile"] / 1024}
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in bytes on macOS, kilobytes elsewhere.
        return {"peak_rss_mib": peak / (_MIB if sys.platform == "darwin" else 1024)}
