"""segdistill.memory: each pipeline step's own peak resident memory."""

from __future__ import annotations

import time
import types
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
        time.sleep(0.1)  # samples after the free do not lower the peak
    peak = step.usage()["peak_rss_mib"]
    assert start + 150 < peak < start + 300
    assert peak < high - 300 and memory.lifetime_peak_mib() == high


def test_usage_reports_a_peak_in_mib() -> None:
    with memory.StepPeak() as step:
        pass
    assert 10 < step.usage()["peak_rss_mib"] < 1024 * 1024  # MiB, not bytes or kiB


def test_status_lines_are_read_in_mib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "status"
    status.write_text(
        "Name:\tpython\nVmHWM:\t    3072 kB\nVmRSS:\t    1536 kB\nRssFile:\t 512 kB\n"
    )
    monkeypatch.setattr(memory, "_STATUS", status)
    assert memory._status_mib("VmRSS", "RssFile") == {"VmRSS": 1.5, "RssFile": 0.5}
    assert memory.lifetime_peak_mib() == 3.0


@pytest.mark.parametrize(("platform", "mib"), [("linux", 3072.0), ("darwin", 3.0)])
def test_without_proc_the_lifetime_peak_is_reported_in_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platform: str, mib: float
) -> None:
    """ru_maxrss is in kiB on Linux and in bytes on macOS: 3 * 2**20 of them is 3 GiB or
    3 MiB."""
    monkeypatch.setattr(memory, "_STATUS", tmp_path / "no-proc")
    usage = types.SimpleNamespace(ru_maxrss=3 * 2**20)
    monkeypatch.setattr(memory.resource, "getrusage", lambda who: usage)
    monkeypatch.setattr(memory.sys, "platform", platform)
    with memory.StepPeak() as step:
        pass
    assert step.usage() == {"peak_rss_mib": mib}


@linux
def test_a_step_under_an_earlier_high_counts_what_it_started_and_ended_with() -> None:
    """No sample in the step (a long interval): its peak is still at least its resident
    size at the start (memory it frees) and at the end (memory it keeps)."""
    _touch(600)
    held = np.ones(300 * 2**20, np.uint8)
    with memory.StepPeak(interval=10.0) as freeing:
        start = memory._status_mib("VmRSS")["VmRSS"]
        del held
    assert freeing.usage()["peak_rss_mib"] > start - 5  # not the 300 MiB less at its end
    with memory.StepPeak(interval=10.0) as keeping:
        start = memory._status_mib("VmRSS")["VmRSS"]
        held = np.ones(200 * 2**20, np.uint8)
    assert keeping.usage()["peak_rss_mib"] > start + 150
    del held


@linux
def test_the_file_backed_part_counts_a_mapped_file(tmp_path: Path) -> None:
    path = tmp_path / "maps.bin"
    path.write_bytes(bytes(64 * 2**20))
    with memory.StepPeak() as before:
        pass
    files_before = before.usage()["rss_file_mib"]
    with memory.StepPeak() as step:
        mapped = np.memmap(path, np.uint8, mode="r")
        assert int(mapped[::4096].sum()) == 0  # every page read in
    usage = step.usage()
    del mapped
    assert usage["rss_file_mib"] > files_before + 60
    # The rest of the resident set (the interpreter, torch) is anonymous memory.
    assert usage["rss_file_mib"] < usage["peak_rss_mib"] - 20
