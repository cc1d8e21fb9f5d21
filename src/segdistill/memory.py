"""The process's resident memory, per pipeline step: so a run says which step needed how
much, and a memory limit (a SLURM `--mem`, a container) can be set from a measured figure.
Only this process is measured: DataLoader workers come on top of it in such a limit.

`StepPeak` measures one step's peak without touching the kernel's high-water mark of the
process (`VmHWM`, which `/usr/bin/time` and schedulers report): when the step raises that
mark, the new mark is its exact peak; otherwise the step stayed below an earlier one and
its peak is the largest resident size a background thread saw, reading /proc/self/status
every `interval` seconds (a spike shorter than that can be missed). Without /proc
(macOS, Windows) only the process's lifetime peak is known (`resource.ru_maxrss`), and that
is what is reported.
"""

from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")


def _status_mib(*fields: str) -> dict[str, float]:
    """{field: MiB} of /proc/self/status lines such as 'VmHWM:   123 kB'."""
    values = {}
    for line in _STATUS.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0]) / 1024
    return values


def lifetime_peak_mib() -> float:
    """The process's peak resident set since it started (MiB)."""
    try:
        return _status_mib("VmHWM")["VmHWM"]
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS


class StepPeak:
    """`with StepPeak() as step: ...`, then `step.usage()`: {peak_rss_mib} of what ran in
    the block and, on Linux, {rss_file_mib}, the file-backed part of the resident set at
    its end (memory maps: the kernel may drop those pages, RSS limits count them)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._proc = _STATUS.is_file()
        self._stop = threading.Event()
        self._sampled = 0.0
        self._before = 0.0
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, _status_mib("VmRSS")["VmRSS"])

    def __enter__(self) -> StepPeak:
        self._before = lifetime_peak_mib()
        if self._proc:
            self._sampled = _status_mib("VmRSS")["VmRSS"]
            self._thread = threading.Thread(target=self._sample, name="step-peak", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def usage(self) -> dict[str, float]:
        after = lifetime_peak_mib()
        if not self._proc:
            return {"peak_rss_mib": after}
        now = _status_mib("VmRSS", "RssFile")
        peak = after if after > self._before else max(self._sampled, now["VmRSS"])
        return {"peak_rss_mib": peak, "rss_file_mib": now["RssFile"]}
