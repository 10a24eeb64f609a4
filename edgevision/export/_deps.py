"""Optional packages: import them on demand and say which pip extra brings them."""

from __future__ import annotations

import importlib
import importlib.util


class MissingPackageError(ImportError):
    """An optional package a runtime/exporter needs is not installed; the message names the extra."""


def require(module: str, extra: str, what: str):
    """Import ``module`` or raise MissingPackageError naming ``pip install edgevision[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        try:
            installed = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # e.g. sys.modules[package] is None
            installed = False
        state = "installed but cannot be imported" if installed else "not installed"
        raise MissingPackageError(
            f"{what} needs the package {package!r}, which is {state} ({e.msg}); "
            f"install it with: pip install 'edgevision[{extra}]'"
        ) from None
