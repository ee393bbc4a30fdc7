"""Errors slimkit raises for problems the user can fix.

Every :class:`SlimkitError` carries a one-line message that names what is wrong and what to
do. The CLI prints it without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class SlimkitError(Exception):
    """Base class for user-facing errors (bad input, missing extra, unsupported model)."""


class UnknownNameError(SlimkitError, KeyError):
    """A dataset, model or config name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(SlimkitError, ValueError):
    """A dataset file or array that cannot be used."""


class ModelFileError(SlimkitError, ValueError):
    """A model file or checkpoint that is missing, corrupt or unsafe to load."""


class UnknownModelError(ModelFileError):
    """A model class slimkit cannot rebuild from a checkpoint (no zoo name, no factory)."""


class ShapeError(SlimkitError, ValueError):
    """Input whose shape the model cannot take."""


class MissingExtraError(SlimkitError, ImportError):
    """An optional dependency that is not installed."""


class OutputExistsError(SlimkitError, FileExistsError):
    """An output path that exists and would be overwritten without ``force``."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its type name when the message is empty.

    For quoting a library's exception inside a one-line :class:`SlimkitError`; terminal colour codes
    (torch's ONNX exporter writes some) are dropped.
    """
    for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
