"""Lazy imports of optional dependencies with an error that says what to install."""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType

from slimkit.core.errors import MissingExtraError


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install.

    >>> np = require("numpy", extra="core")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = package or module.split(".")[0]
        raise MissingExtraError(
            f"{pkg} is not installed ({exc}); install it with: pip install 'slimkit[{extra}]'"
        ) from exc


def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # its parent package is missing, or the import is blocked (sys.modules None)
        return False


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings and log lines optional engines print while they work (ONNX Runtime's
    quantization tools log every node they touch)."""
    level = logging.root.manager.disable  # their loggers may set their own levels: disable below ERROR
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)
