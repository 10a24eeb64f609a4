"""One rich console for every subcommand's tables."""

from __future__ import annotations

import sys


def console():
    """A terminal keeps its own width; piped output gets room enough that no name is cut."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)
