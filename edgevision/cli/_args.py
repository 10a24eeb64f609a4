"""One validation layer for the numbers on every command line.

Each numeric option is parsed by a type built here, so an out-of-range value is refused by
argparse with the option's valid range in one line (exit code 2), before any work starts,
instead of being replaced by a default or failing deep inside.
"""

from __future__ import annotations

import argparse
import math


def _fmt(v) -> str:
    return "inf" if v == math.inf else f"{v:g}"


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {_fmt(lo)}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {_fmt(hi)}"
    return f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"


def int_range(lo: int | None = None, hi: int | None = None):
    """argparse type: an integer in [lo, hi] (None = unbounded)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be an integer {_range_text(lo, hi, False, False)}")
        return v

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """argparse type: a finite number in the interval (open ends where asked)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        bad = not math.isfinite(v)
        bad |= lo is not None and (v <= lo if lo_open else v < lo)
        bad |= hi is not None and (v >= hi if hi_open else v > hi)
        if bad:
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {_range_text(lo, hi, lo_open, hi_open)}")
        return v

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
probability = float_range(0.0, 1.0)
