"""segdistill.memory: each pipeline step's own peak resident memory."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from segdistill import memory

linux = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def _touch(mib: int, seconds: float = 0.0) -> None:
    block = np.ones(mib * 2**20, np.uint8)  # every page written
    time.sleep(seconds)
    del block


@linux
def test_a_step_that_sets_a_new_high_sees_it_exactly() -> None:
    before = memory.lifetime_peak_mib()
    rss = memory._status_mib("VmRSS")["VmRSS"]
    with memory.StepPeak(interval=10.0) as step:  # no sample: the high-water mark tells
        _touch(int(before - rss) + 300)
    assert step.usage()["peak_rss_mib"] == memory.lifetime_peak_mib() > before + 250


@linux
def test_a_step_under_an_earlier_high_reports_its_own_peak() -> None:
    """After a 600 MiB step, a 200 MiB one reports about 200 MiB more than it started with,
    not the earlier 600, and the process's high-water mark (what /usr/bin/time reports) is
    left as it was."""
    _touch(600)
    high = memory.lifetime_peak_mib()
    with memory.StepPeak(interval=0.01) as step:
        start = memory._status_mib("VmRSS")["VmRSS"]
        _touch(200, seconds=0.2)
    peak = step.usage()["peak_rss_mib"]
    assert start + 150 < peak < start + 300
    assert peak < high - 300 and memory.lifetime_peak_mib() == high


def test_usage_reports_a_peak_in_mib() -> None:
    with memory.StepPeak() as step:
        pass
    assert 10 < step.usage()["peak_rss_mib"] < 1024 * 1024  # MiB, not bytes or kiB
