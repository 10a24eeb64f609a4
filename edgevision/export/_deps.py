"""Optional packages: import them on demand and say which pip extra brings them."""

from __future__ import annotations

import importlib


class MissingPackageError(ImportError):
    """An optional package a runtime/exporter needs is not installed; the message names the extra."""


def require(module: str, extra: str, what: str):
    """Import ``module`` or raise MissingPackageError naming ``pip install edgevision[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackageError(
            f"{what} needs the package {module.split('.')[0]!r}, which is not installed "
            f"({e.msg}); install it with: pip install 'edgevision[{extra}]'"
        ) from None
