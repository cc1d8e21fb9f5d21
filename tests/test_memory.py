"""segdistill.memory: each pipeline step's own peak resident memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segdistill import memory

linux = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux")


@linux
def test_the_peak_covers_what_was_touched_since_the_last_reset() -> None:
    memory.reset_peak()
    before = memory.usage()["peak_rss_mib"]
    block = np.ones(200 * 2**20, np.uint8)  # 200 MiB, every page written
    del block
    grown = memory.usage()["peak_rss_mib"]
    assert grown - before > 180
    memory.reset_peak()  # a new step: the freed block is no longer in its peak
    assert memory.usage()["peak_rss_mib"] < grown - 180


def test_usage_reports_a_positive_peak_in_mib() -> None:
    used = memory.usage()
    assert 10 < used["peak_rss_mib"] < 1024 * 1024  # MiB, not bytes or kiB
