"""The ``wsss`` command: thin sub-commands that parse arguments and call a stage or tool.

Each module in this package contributes commands through ``register(subparsers)``; the
work itself lives in ``wsss.stages``, ``wsss.data`` and ``wsss.eval``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wsss import __version__
from wsss.errors import WsssError

# Command modules, in the order their commands appear in ``wsss --help``.
_COMMAND_MODULES = ("wsss.cli.pipeline", "wsss.cli.data", "wsss.cli.evaluate", "wsss.cli.report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsss",
        description="Weakly-supervised semantic segmentation from image-level tags.",
    )
    parser.add_argument("--version", action="version", version=f"wsss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except WsssError as exc:
        print(f"wsss {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"wsss {args.command}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr
        )
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
