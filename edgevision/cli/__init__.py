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
_COMMAND_MODULES = ["models", "fetch", "predict", "bench", "export", "train", "evaluate", "latency", "search", "leak", "demo"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, and where help is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from edgevision import __version__

    parser = _Parser(
        prog="edgevision",
        description="Efficient vision networks for phones and edge devices: "
        "list, inspect, benchmark, export and train.",
    )
    parser.add_argument("--version", action="version", version=f"edgevision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{mod_name}").add_parser(sub)
    from edgevision.cli._args import refuse_empty_strings

    refuse_empty_strings(parser)  # `--output ""` is an error, never "." or the default
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from edgevision.checkpoints import CheckpointError
    from edgevision.io import WriteError
    from edgevision.models.base import InputShapeError
    from edgevision.registry import UnknownModelError

    return (UnknownModelError, CheckpointError, InputShapeError, WriteError, ValueError,
            OSError)


def _one_line(e: BaseException) -> str:
    """The message of an error users cause, on one line ("[Errno 17] File exists: 'x'" ->
    "x: file exists")."""
    if isinstance(e, OSError) and e.strerror and e.filename and type(e).__str__ is OSError.__str__:
        return f"{e.filename}: {e.strerror[0].lower()}{e.strerror[1:]}"
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"edgevision {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgevision {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
