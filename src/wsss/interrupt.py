"""SIGTERM handled like Ctrl-C, and what an interrupted run reports.

Python turns SIGINT into ``KeyboardInterrupt``, so ``finally`` blocks and the atomic writers
clean up; SIGTERM (``kill``, a batch scheduler's time limit, torchrun stopping its ranks) would
end the process on the spot. :func:`sigterm_as_interrupt` makes SIGTERM raise
:class:`Terminated`, a ``KeyboardInterrupt``, so both signals take the same path. No torch here:
the CLI imports it before knowing whether a command does any work.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised by the handler :func:`sigterm_as_interrupt` installs)."""

    signum = signal.SIGTERM


class RunInterrupted(KeyboardInterrupt):
    """A pipeline run stopped on a signal, after its clean-up; says where it stopped."""

    def __init__(self, run_dir: Path, stage: str | None, signum: int) -> None:
        super().__init__(f"{run_dir}: interrupted in stage {stage or '(none)'}")
        self.run_dir = run_dir
        self.stage = stage
        self.signum = signum


def signal_of(exc: BaseException) -> int:
    """The signal behind an interrupt: SIGTERM for :class:`Terminated`, else SIGINT."""
    return int(getattr(exc, "signum", signal.SIGINT))


def exit_status(exc: BaseException) -> int:
    """The shell's status for a process ended by the signal: 128 + its number (130, 143)."""
    return 128 + signal_of(exc)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`; the previous handler comes back after.

    Signal handlers can only be set from the main thread; elsewhere (a test calling the CLI in a
    thread) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:  # started to ignore it (nohup-like): keep that
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
