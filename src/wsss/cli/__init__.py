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
import re
import sys

from wsss import __version__
from wsss.errors import WsssError

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except WsssError as exc:
        message = f"wsss {args.command}: error: {user_message(exc)}"
        log_to_run_files(exc, message)
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"wsss {args.command}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr
        )
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
