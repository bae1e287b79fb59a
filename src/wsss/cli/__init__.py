"""The ``wsss`` command: thin sub-commands that parse arguments and call a stage or tool.

Each module in this package contributes commands through ``register(subparsers)``; the
work itself lives in ``wsss.stages``, ``wsss.data`` and ``wsss.eval``. Building the parser
imports neither torch nor numpy (``wsss --help`` must be instant): command modules import
heavy modules inside the functions that run a command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import shlex
import sys
from pathlib import Path

from wsss import __version__
from wsss.errors import WsssError
from wsss.interrupt import exit_status, signal_name, signal_of, sigterm_as_interrupt
from wsss.threads import apply_wait_policy

# Command modules, in the order their commands appear in ``wsss --help``.
_COMMAND_MODULES = ("wsss.cli.pipeline", "wsss.cli.data", "wsss.cli.evaluate", "wsss.cli.report")

# torch re-raises an error of a DataLoader worker as the same type, its message replaced by this
# header and the worker's whole traceback (torch/_utils.py: ExceptionWrapper.reraise; the
# pin-memory thread's errors too).
_WORKER_HEADER = re.compile(r"Caught \w+ in [^\n]*\.\nOriginal ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsss",
        description="Weakly-supervised semantic segmentation from image-level tags.",
        formatter_class=CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class CommandListFormatter(argparse.HelpFormatter):
    """Sets the help column by the longest command name as printed (indented), so that each
    command's description stays on its line; argparse measures sub-commands without their indent.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if not isinstance(action, argparse._SubParsersAction) or action.help is argparse.SUPPRESS:
            return
        names = [self._format_action_invocation(a) for a in action._get_subactions()]
        if names:
            longest = max(map(len, names)) + self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, longest)


def user_message(exc: WsssError) -> str:
    """The error's own message: a DataLoader worker's error arrives wrapped in its traceback."""
    text = str(exc)
    if not _WORKER_HEADER.match(text):
        return text
    cls = type(exc)
    last_line = f"\n{cls.__module__}.{cls.__qualname__}: "  # how the traceback ends
    at = text.rfind(last_line)
    return text[at + len(last_line) :].rstrip("\n") if at >= 0 else text


def log_to_run_files(exc: BaseException, what: str) -> None:
    """Append ``what`` and the full traceback of ``exc`` to the run's log files, not the console.

    The console gets one line; the traceback (for a worker's error, the worker's own) stays
    in ``RUN_DIR/logs/*.log`` for a bug report. No run directory, no log file: nothing to do.
    """
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not name.startswith("wsss.") or not isinstance(logger, logging.Logger):
            continue
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                exc_info = (type(exc), exc, exc.__traceback__)
                handler.handle(logger.makeRecord(name, logging.ERROR, __file__, 0, what, (), exc_info))


def resume_command(argv: list[str], out: Path | None) -> str:
    """The command that resumes an interrupted run: the same arguments (a changed recipe would be
    refused), with the run directory spelled out when it was a default."""
    words = ["wsss", *argv]
    if out is not None and not any(w == "--out" or w.startswith("--out=") for w in argv):
        words += ["--out", str(out)]
    return shlex.join(words)


def interrupt_message(args: argparse.Namespace, argv: list[str], exc: BaseException) -> str:
    """One line: the signal, the stage it stopped (``RunInterrupted`` says), how to resume."""
    head = f"wsss {args.command}: interrupted by {signal_name(signal_of(exc))}"
    if not getattr(args, "resumable", False):
        return f"{head}; finished outputs are kept, rerun to resume"
    stage = getattr(exc, "stage", None)
    where = f" in stage {stage}" if stage else ""
    out = getattr(args, "out", None) or getattr(exc, "run_dir", None)  # demo: its own --out
    return f"{head}{where}; finished files and checkpoints are kept; resume with: {resume_command(argv, out)}"


def main(argv: list[str] | None = None) -> int:
    apply_wait_policy()  # before anything imports torch: a short OpenMP spin-wait (wsss.threads)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():  # SIGTERM (kill, a scheduler) takes Ctrl-C's clean path
            result = args.func(args)
    except WsssError as exc:
        message = f"wsss {args.command}: error: {user_message(exc)}"
        log_to_run_files(exc, message)
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        message = interrupt_message(args, argv, exc)
        log_to_run_files(exc, message)
        if os.environ.get("RANK", "0") in ("", "0"):  # torchrun: one line, from rank 0
            print(message, file=sys.stderr)
        return exit_status(exc)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
