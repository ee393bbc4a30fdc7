"""Atomic file and folder writes: outputs appear whole or not at all, never half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from slimkit.core.errors import OutputExistsError

_INPUTS: set[Path] = set()


def protect(*paths: str | os.PathLike[str]) -> None:
    """Mark existing ``paths`` as inputs: no output may replace them or a folder holding them, even with
    ``force`` (the CLI marks every path it reads)."""
    _INPUTS.update(Path(p).resolve() for p in paths if os.path.lexists(p))


def unprotect_all() -> None:
    """Forget the paths marked by :func:`protect` (the CLI starts each command afresh)."""
    _INPUTS.clear()


def check_output(path: str | os.PathLike[str], force: bool) -> Path:
    """Return ``path`` as a Path; refuse an existing one unless ``force``, and always refuse a symbolic
    link or a path that would replace an input (see :func:`protect`)."""
    path = Path(path)
    if path.is_symlink():
        raise OutputExistsError(f"{path} is a symbolic link; give the real path it points to ({path.resolve()})")
    real = path.resolve()
    for source in _INPUTS:
        if real == source or source.is_relative_to(real) or (real.is_relative_to(source) and path.exists()):
            raise OutputExistsError(
                f"{path} would replace the input {source}; write the output somewhere else (inputs are never replaced)"
            )
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass force=True (CLI: --force) to replace it")
    _check_writable(path)
    return path


def _check_writable(path: Path) -> None:
    """Refuse now, not after hours of work, an output whose folder cannot be written: a folder is
    made and removed in the nearest existing ancestor (permission bits alone say nothing for root
    or on read-only file systems)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputExistsError(f"cannot write {path}: {parent} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".slimkit-probe-", dir=parent))
    except OSError as exc:
        raise OutputExistsError(f"cannot write {path}: {parent} is not writable ({exc.strerror})") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place in one rename.

    Works for files and folders. On error the temporary is removed and ``path`` is untouched.
    """
    path = check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.exists() and (path.is_dir() or target.is_dir()):
            os.replace(path, tmp / ".old")  # a folder (or a file by a folder) is not replaced in one call
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, force: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), force=force)
