"""Ctrl-C that stops long work where it is safe to stop, and is never lost.

Python raises KeyboardInterrupt wherever the signal lands. In a finaliser (a DataLoader's
`__del__`, a weakref callback) or a fork hook it is only printed ("Exception ignored in
...", with a traceback) and the work goes on. So while a loop is watched the first Ctrl-C
is recorded, with a notice, and raised where the loop checks (before its next batch or
image); a second one is raised at once, for a loop stuck where it does not check. A
second one that lands in a finaliser or fork hook (at every epoch's start and end with
DataLoader workers) cannot stop the work there: instead of Python's traceback it gets a
notice, and the work stops at its next check, as after the first press. The DataLoader
workers ignore Ctrl-C (`ignore_ctrl_c`): it is the main process's to handle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

NOTICE = b"\nCtrl-C: stopping before the next batch or image (press again to stop at once)\n"
SWALLOWED = (
    b"\nCtrl-C landed while Python was cleaning up (a finaliser or fork hook), where it "
    b"cannot stop the work: stopping before the next batch or image\n"
)

# The stretches being watched, innermost last (nested ones share the outer one's Ctrl-C).
_watching: list[CtrlC] = []


class CtrlC:
    """One watched stretch of work: `watching()` around it, `check()` where it may stop."""

    def __init__(self) -> None:
        self.pressed = False

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Record Ctrl-C while inside (main thread only: signals go there; elsewhere
        nothing changes); KeyboardInterrupt on leaving if it was pressed."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: object) -> None:
            if self.pressed:
                raise KeyboardInterrupt
            self.pressed = True
            # Unbuffered: a print here could land inside another write to the same stream.
            with contextlib.suppress(OSError):
                os.write(2, NOTICE)

        previous_hook = sys.unraisablehook

        def unraisable(report: Any) -> None:
            # Our own KeyboardInterrupt, raised in a finaliser or fork hook: Python would
            # print it with a traceback and go on. The press stays recorded.
            if report.exc_type is KeyboardInterrupt:
                with contextlib.suppress(OSError):
                    os.write(2, SWALLOWED)
                return
            previous_hook(report)

        previous = signal.signal(signal.SIGINT, interrupt)
        sys.unraisablehook = unraisable
        _watching.append(self)
        try:
            yield
        finally:
            _watching.remove(self)
            if sys.unraisablehook is unraisable:
                sys.unraisablehook = previous_hook
            # Lightning ignores Ctrl-C during its shutdown; leave that to the caller.
            if signal.getsignal(signal.SIGINT) is interrupt:
                signal.signal(signal.SIGINT, previous)
        # Reached when the work ended without an error: a press during its last item (no
        # check came after it) still stops what follows.
        self.check()

    def check(self) -> None:
        """KeyboardInterrupt if Ctrl-C was pressed."""
        if self.pressed:
            raise KeyboardInterrupt


def stop_on_ctrl_c(items: Iterable[T]) -> Iterator[T]:
    """The items of a long loop, watched: after a Ctrl-C no further item is given out.
    Inside a stretch already watched (He et al.'s stage 1 inside a training run) the loop
    checks that one's Ctrl-C, so a press before the loop began counts too."""
    ctrl_c = _watching[-1] if _watching else CtrlC()
    with contextlib.nullcontext() if _watching else ctrl_c.watching():
        for item in items:
            ctrl_c.check()
            yield item


def ignore_ctrl_c(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn` (or a process pool's initializer): the worker ignores
    Ctrl-C, which a terminal sends to every process of its group, and leaves it to the main
    process; a worker killed by it would make the main process fail with "DataLoader worker
    exited unexpectedly" (a pool worker prints its traceback) before it handles its own
    interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
