"""One validation layer for the numbers (and texts) on every command line.

Each numeric option is parsed by a type built here, so an out-of-range value is refused by
argparse with the option's valid range in one line (exit code 2), before any work starts,
instead of being replaced by a default or failing deep inside. Lists and pairs of numbers
(``--batch 1,32``, ``--size 256x192``, ``--crop-scale 0.08,1``) are checked element by element
the same way, and :func:`refuse_empty_strings` makes every text option (paths, URLs, names)
refuse an empty value instead of quietly falling back to its default or to ``.``.
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


def int_list(lo: int | None = None, hi: int | None = None):
    """argparse type: comma-separated integers, each in [lo, hi] ("1,32" -> [1, 32])."""
    one = int_range(lo, hi)

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,32; got {text!r}")
        return [one(t) for t in items]

    parse.__name__ = "integer"
    return parse


def size_hw(lo: int = 1, hi: int | None = None):
    """argparse type: an input side N or HxW, each side in [lo, hi] ("224" -> (224, 224))."""

    def parse(text: str) -> tuple[int, int]:
        parts = text.lower().split("x")
        try:
            sides = [int(v) for v in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"size must be N or HxW, e.g. 224 or 256x192; got {text!r}") from None
        if len(sides) not in (1, 2):
            raise argparse.ArgumentTypeError(f"size must be N or HxW, e.g. 224 or 256x192; got {text!r}")
        if any(v < lo or (hi is not None and v > hi) for v in sides):
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: each side must be an integer {_range_text(lo, hi, False, False)}")
        return (sides[0], sides[-1])

    parse.__name__ = "integer"
    return parse


def float_pair(lo: float, hi: float):
    """argparse type: "A,B" with lo <= A <= B <= hi, A > 0 when lo is 0 (a scale range)."""

    def parse(text: str) -> tuple[float, float]:
        try:
            a, b = (float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LO,HI such as 0.08,1.0; got {text!r}") from None
        if not (math.isfinite(a) and math.isfinite(b) and lo < a <= b <= hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be LO,HI with {_fmt(lo)} < LO <= HI "
                                             f"<= {_fmt(hi)}")
        return a, b

    parse.__name__ = "number"
    return parse


def nonempty(text: str) -> str:
    """argparse type: any text but the empty string (an empty path would mean '.')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


nonempty.__name__ = "text"


def refuse_empty_strings(parser: argparse.ArgumentParser) -> None:
    """Give every plain text option and positional of ``parser`` and its subcommands the
    :func:`nonempty` type: ``--output ""`` or ``--url ""`` is an error, not the default (or
    the current folder). Options whose own default is "" keep accepting it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                refuse_empty_strings(sub)
        elif (isinstance(action, argparse._StoreAction) and action.type is None and action.choices is None
              and action.default != "" and action.nargs in (None, "?", "*", "+")):
            action.type = nonempty
