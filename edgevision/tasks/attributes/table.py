"""The class -> attribute table of a two-output classifier (M-MobileNet's consumability verdict).

A CSV with a header ``class,attribute`` and one row per class: the class name as its folder is
named, and a yes/no attribute (1/0, true/false, yes/no, y/n; e.g. consumable or not, footwear
or not). Every class of the data set must be listed exactly once, and only those classes:
an unknown, missing or repeated class, or a value that is not yes/no, is one clear error.
"""

from __future__ import annotations

import csv
from pathlib import Path

TRUE = {"1", "true", "yes", "y", "t"}
FALSE = {"0", "false", "no", "n", "f"}


class AttributeTableError(ValueError):
    """The attribute CSV does not fit the data set's classes (one clear line)."""


def read_attribute_table(path, classes) -> list[int]:
    """0/1 attribute per class, in the order of ``classes``."""
    path = Path(path)
    if not path.is_file():
        raise AttributeTableError(f"--attributes {path}: no such file (a CSV with columns class,attribute)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise AttributeTableError(f"--attributes {path}: not a readable UTF-8 CSV ({e})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows or [c.strip().lower() for c in rows[0]][:2] != ["class", "attribute"]:
        raise AttributeTableError(f"--attributes {path}: the first line must be the header 'class,attribute'")
    table: dict[str, int] = {}
    for n, row in enumerate(rows[1:], 2):
        if len(row) < 2:
            raise AttributeTableError(f"--attributes {path}:{n}: expected 'class,attribute', got {','.join(row)!r}")
        name, value = row[0].strip(), row[1].strip().lower()
        if name in table:
            raise AttributeTableError(f"--attributes {path}:{n}: class {name!r} is listed twice")
        if value not in TRUE | FALSE:
            raise AttributeTableError(f"--attributes {path}:{n}: attribute of {name!r} must be yes/no (1/0, "
                                      f"true/false); got {row[1]!r}")
        table[name] = int(value in TRUE)
    classes = list(classes)
    unknown = sorted(set(table) - set(classes))
    missing = [c for c in classes if c not in table]
    if unknown or missing:
        parts = ([f"names unknown classes {unknown}"] if unknown else []) + \
                ([f"misses classes {missing}"] if missing else [])
        raise AttributeTableError(f"--attributes {path} {' and '.join(parts)}; the data set's classes are {classes}")
    values = [table[c] for c in classes]
    if len(set(values)) < 2:
        raise AttributeTableError(f"--attributes {path}: every class has attribute {values[0]}; a verdict needs "
                                  f"both yes and no classes")
    return values


def write_attribute_table(path, mapping: dict[str, int]) -> Path:
    """Write ``{class: 0/1}`` as the CSV read above (for demos and tests)."""
    from edgevision.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, "class,attribute\n" + "".join(f"{c},{int(v)}\n" for c, v in mapping.items()))
    return path
