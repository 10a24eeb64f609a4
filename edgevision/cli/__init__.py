"""The `edgevision` command. Thin: each subcommand module parses its arguments and calls the library.

A subcommand module defines ``add_parser(subparsers)`` (which sets ``func=run`` on its
parser) and ``run(args) -> int``. Errors users can cause (bad names, files, sizes) are
caught here and printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Module name per subcommand group, in help order.
_COMMAND_MODULES = ["models", "fetch", "predict", "bench", "export", "train", "evaluate", "demo"]


def build_parser() -> argparse.ArgumentParser:
    from edgevision import __version__

    parser = argparse.ArgumentParser(
        prog="edgevision",
        description="Efficient vision networks for phones and edge devices: "
        "list, inspect, benchmark, export and train.",
    )
    parser.add_argument("--version", action="version", version=f"edgevision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{mod_name}").add_parser(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from edgevision.checkpoints import CheckpointError
    from edgevision.models.base import InputShapeError
    from edgevision.registry import UnknownModelError

    return (UnknownModelError, CheckpointError, InputShapeError, FileNotFoundError,
            NotADirectoryError, PermissionError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"edgevision {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgevision {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
