"""User datasets from ``.npz`` files, checked before anything large is read.

A dataset file is a zip of ``.npy`` members (what ``numpy.savez`` writes). Everything that can
be known without reading the data is checked first: the file is a regular file, the zip
directory is small, every member is an accepted key, and each member's ``.npy`` header declares
a plain numeric dtype and a shape that matches the member's size. The memory that loading will
take is then compared with a limit (``max_bytes``, else ``SLIMKIT_MAX_DATA_BYTES``, else half of
the available memory) before a single array is read; pickles are never loaded. The values
(finite inputs, labels 0..K-1, at least two classes, enough rows to split) are checked in all
splits before any split is carved, so every problem is one :class:`DataError` line that says
what to do, raised before training can start.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import torch

from slimkit.core.errors import DataError
from slimkit.data.base import SPLITS, Dataset, as_tensor, names

ACCEPTED_KEYS = "x, y (required); x_val, y_val, x_test, y_test, classes (optional)"
KEYS = ("x", "y", "x_val", "y_val", "x_test", "y_test", "classes")
SUFFIXES = {"": "train", "_val": "val", "_test": "test"}

LIMIT_ENV = "SLIMKIT_MAX_DATA_BYTES"
#: Most classes a dataset may have: evaluation builds a K x K confusion matrix (10,000 classes
#: already take about 2 GB and 13 s to report), and a label far above the number of rows is a
#: mistake (a category id, a hash), not a class.
MAX_CLASSES = 10_000
#: Most zip members: a dataset has at most 7 arrays.
MAX_MEMBERS = 64
#: Largest zip central directory read (bounds the memory a zip with very many entries takes).
MAX_DIRECTORY_BYTES = 1 << 20
#: Fewest rows in ``x`` from which validation and test splits (10 % each) are carved.
MIN_CARVE_ROWS = 10

_FLOAT_KINDS = "fb"  # float16/32/64 and bool inputs become float32
_INT_KINDS = "iu"  # integer inputs are token / category ids and become int64


@dataclasses.dataclass(frozen=True)
class _Header:
    """What a member's ``.npy`` header declares."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def load_npz(path: Path | str, *, seed: int = 0, max_bytes: int | None = None) -> Dataset:
    """Arrays ``x`` (N, ...) and integer labels ``y`` (N,) 0..K-1; missing val/test splits are
    carved out of ``x``/``y`` (stratified 80 / 10 / 10, seeded).

    ``x`` may be float (becomes float32), bool (0.0 / 1.0) or non-negative integer ids (become
    int64, for text and recommender models). ``classes`` optionally names the K classes.
    ``max_bytes`` caps the memory loading may take (default: the ``SLIMKIT_MAX_DATA_BYTES``
    environment variable, else half of the available memory). Raises :class:`DataError`, one
    line, for anything that cannot be used, before reading more than the file's headers.
    """
    path = Path(path)
    shown = _show(path)
    if path.suffix != ".npz":
        raise DataError(f"cannot load dataset {shown!r}: expected a .npz file or one of: {', '.join(names())}")
    limit, limit_source = _memory_limit(max_bytes)
    with _open_regular(path) as fh:
        _check_directory(shown, fh)
        try:
            archive = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
            raise _unreadable(shown, "", exc) from None
        with archive:
            members = _members(shown, archive)
            headers = {key: _read_header(shown, archive, info, key) for key, info in members.items()}
            x_dtype = _check_layout(shown, headers)
            _check_memory(shown, headers, x_dtype, limit, limit_source)
            arrays = {key: _read_array(shown, archive, info, key) for key, info in members.items()}
    classes = _check_values(shown, arrays)

    rows: dict[str, tuple[str, np.ndarray | None]] = {}  # split -> (suffix of its arrays, rows to take)
    for suffix, split in SUFFIXES.items():
        if f"x{suffix}" in arrays:
            rows[split] = (suffix, None)
    if "test" not in rows or "val" not in rows:
        y = arrays["y"]
        train = np.arange(len(y))
        if "test" not in rows:
            train, test = _carve(train, y, fraction=0.1, seed=seed)
            rows["test"] = ("", test)
        if "val" not in rows:
            train, val = _carve(train, y, fraction=0.1 / 0.9, seed=seed)
            rows["val"] = ("", val)
        if len(np.unique(y[train])) < 2:
            raise DataError(
                f"{shown}: after carving validation and test rows the training split holds one class; "
                f"give at least 2 rows of each class, or x_val/y_val and x_test/y_test"
            )
        rows["train"] = ("", train)
    splits = {}
    for split in SPLITS:
        suffix, idx = rows[split]
        splits[split] = (
            as_tensor(arrays[f"x{suffix}"], x_dtype, idx),
            as_tensor(arrays[f"y{suffix}"], torch.long, idx),
        )
    meta: dict = {}
    if x_dtype == torch.float32 and arrays["x"].ndim == 4:
        meta = {"in_channels": arrays["x"].shape[1], "input_size": arrays["x"].shape[2]}
    return Dataset(name=path.stem, splits=splits, classes=classes, meta=meta, source=str(path))


def _carve(rows: np.ndarray, y: np.ndarray, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` (indices into ``y``), stratified when every class there has two or more rows
    and both parts have room for every class (else at random)."""
    from sklearn.model_selection import train_test_split

    labels = y[rows]
    _, counts = np.unique(labels, return_counts=True)
    n_carved = math.ceil(fraction * len(rows))  # what train_test_split carves
    fits = min(n_carved, len(rows) - n_carved) >= len(counts)
    stratify = labels if len(counts) > 1 and counts.min() >= 2 and fits else None
    kept, carved = train_test_split(rows, test_size=fraction, stratify=stratify, random_state=seed)
    return kept, carved


# ------------------------------------------------------------------------------ file and zip
@contextmanager
def _open_regular(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened for reading, refused unless it is a non-empty regular file."""
    shown = _show(path)
    # O_NONBLOCK: opening a FIFO must not hang; it is then refused as not a regular file.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DataError(f"no such dataset file: {shown}; give a .npz file or one of: {', '.join(names())}") from None
    except IsADirectoryError:
        raise DataError(f"{shown} is a directory, not a .npz file; give the path of a .npz file") from None
    except OSError as exc:
        raise DataError(f"cannot open {shown} ({exc.strerror or exc}); check the path and its permissions") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise DataError(f"{shown} is a directory, not a .npz file; give the path of a .npz file")
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{shown} is not a regular file (a device, pipe or socket); give a .npz file")
        if info.st_size == 0:
            raise DataError(f"{shown} is empty (0 bytes); save the dataset with numpy.savez")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def _check_directory(shown: str, fh: IO[bytes]) -> None:
    """Refuse zips whose directory lists more members than a dataset has, before parsing it.

    Reads the end-of-central-directory record (and its zip64 form) the way :mod:`zipfile` finds
    it; a file without one is left for :mod:`zipfile` to call unreadable.
    """
    size = fh.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        return
    entries, directory = struct.unpack_from("<HL", tail, pos + 10)
    if (entries == 0xFFFF or directory == 0xFFFFFFFF) and pos >= 76 and tail[pos - 76 : pos - 72] == b"PK\x06\x06":
        entries, directory = struct.unpack_from("<QQ", tail, pos - 76 + 32)
    if entries > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
        raise DataError(
            f"{shown} is a zip of {entries:,} members ({directory:,}-byte directory); a dataset .npz holds "
            f"at most 7 arrays ({ACCEPTED_KEYS}): save only those with numpy.savez"
        )


def _members(shown: str, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Accepted key -> zip member; refuses unknown, duplicate and encrypted members."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise DataError(f"{shown} holds {len(infos):,} members; a dataset .npz holds only {ACCEPTED_KEYS}")
    members: dict[str, zipfile.ZipInfo] = {}
    unknown: list[str] = []
    for info in infos:
        key = info.filename.removesuffix(".npy")
        if key not in KEYS or not info.filename.endswith(".npy"):
            unknown.append(key)
            continue
        if key in members:
            raise DataError(f"{shown} holds {key!r} twice; save the dataset again with numpy.savez")
        members[key] = info
    if unknown:
        listed = ", ".join(repr(_clip(k)) for k in sorted(unknown)[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(f"{shown} has unexpected keys [{listed}]; accepted: {ACCEPTED_KEYS}")
    if "x" not in members or "y" not in members:
        raise DataError(f"{shown} holds keys {sorted(members)}; it must hold {ACCEPTED_KEYS}")
    for suffix in ("_val", "_test"):
        xk, yk = f"x{suffix}", f"y{suffix}"
        if (xk in members) != (yk in members):
            raise DataError(f"{shown} has {xk if xk in members else yk} without its partner; give both")
    for key, info in members.items():
        if info.flag_bits & 0x1:
            raise DataError(f"{shown}: {key} is encrypted; save the dataset without a password")
    return members


def _read_header(shown: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> _Header:
    """The member's ``.npy`` header, checked against the member's size in the zip directory."""
    try:
        with archive.open(info) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
            header_bytes = fp.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as exc:
        raise _unreadable(shown, key, exc) from None
    header = _Header(tuple(int(d) for d in shape), dtype, bool(fortran))
    if dtype.hasobject:
        raise DataError(
            f"{shown} is not a readable .npz file: {key} holds Python objects, which are never unpickled; "
            f"save plain numeric arrays"
        )
    if header.nbytes != info.file_size - header_bytes:
        raise DataError(
            f"{shown}: {key} declares {header.shape} {dtype} ({header.nbytes:,} bytes) but holds "
            f"{max(0, info.file_size - header_bytes):,} bytes of data; the file is damaged, save it again"
        )
    return header


def _check_layout(shown: str, headers: dict[str, _Header]) -> torch.dtype:
    """Dtypes and shapes from the headers alone; returns the dtype the inputs become."""
    x_kind = headers["x"].dtype.kind
    if x_kind not in _FLOAT_KINDS + _INT_KINDS:
        raise DataError(
            f"{shown}: x has dtype {headers['x'].dtype}; inputs must be real numbers: "
            f"float (or bool) features, or non-negative integer ids"
        )
    x_dtype = torch.float32 if x_kind in _FLOAT_KINDS else torch.long
    x_sample = headers["x"].shape[1:]
    for suffix in SUFFIXES:
        xk, yk = f"x{suffix}", f"y{suffix}"
        if xk not in headers:
            continue
        x, y = headers[xk], headers[yk]
        if y.dtype.kind not in _INT_KINDS or len(y.shape) != 1:
            cast = "; cast them to int (y.astype(np.int64))" if y.dtype.kind in "fb" and len(y.shape) == 1 else ""
            raise DataError(f"{shown}: {yk} must be a 1-D array of integer class labels, got {y.dtype} {y.shape}{cast}")
        if _kind(x.dtype) != _kind(headers["x"].dtype):
            raise DataError(f"{shown}: {xk} has dtype {x.dtype} but x has {headers['x'].dtype}; give all x one dtype")
        if len(x.shape) < 2:
            raise DataError(
                f"{shown}: {xk} has shape {x.shape}; inputs must be (rows, features...), "
                f"e.g. {xk}.reshape(-1, 1) for one feature per row"
            )
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{shown}: {xk} has {x.shape[0]} rows but {yk} has {y.shape[0]}")
        if x.shape[0] == 0:
            raise DataError(f"{shown}: {xk} has no rows; every split needs at least one sample")
        if x.shape[1:] != x_sample:
            raise DataError(f"{shown}: {xk} samples have shape {x.shape[1:]}, x has {x_sample}")
        if math.prod(x_sample) == 0:
            raise DataError(f"{shown}: x samples have shape {x_sample}, which holds no values")
    if "classes" in headers:
        classes = headers["classes"]
        if classes.dtype.kind not in "US" or len(classes.shape) != 1:
            raise DataError(
                f"{shown}: classes must be a 1-D array of names (strings), got {classes.dtype} {classes.shape}; "
                f"e.g. classes=np.array(['cat', 'dog'])"
            )
        if classes.shape[0] > MAX_CLASSES:
            raise DataError(f"{shown}: classes names {classes.shape[0]:,} classes; at most {MAX_CLASSES:,} are allowed")
    if ("x_test" not in headers or "x_val" not in headers) and headers["x"].shape[0] < MIN_CARVE_ROWS:
        raise DataError(
            f"{shown}: x has {headers['x'].shape[0]} rows; carving validation and test splits (10 % each) "
            f"needs at least {MIN_CARVE_ROWS}: add rows or give x_val/y_val and x_test/y_test"
        )
    return x_dtype


def _check_memory(shown: str, headers: dict[str, _Header], x_dtype: torch.dtype, limit: int, limit_source: str) -> None:
    """Refuse before reading when the arrays plus the tensors made from them exceed ``limit``."""
    arrays = sum(h.nbytes for h in headers.values())
    out = torch.empty(0, dtype=x_dtype).numpy().dtype
    carved = "x_val" not in headers or "x_test" not in headers
    tensors = 0
    for suffix in SUFFIXES:
        x = headers.get(f"x{suffix}")
        if x is None:
            continue
        shared = not carved and x.dtype == out and not x.fortran
        tensors += 0 if shared else math.prod(x.shape) * out.itemsize
        tensors += x.shape[0] * 8  # labels as int64
    need = arrays + tensors
    if need > limit:
        raise DataError(
            f"{shown}: loading it takes about {_size(need)} ({_size(arrays)} of arrays + {_size(tensors)} of "
            f"tensors), over the limit of {_size(limit)} ({limit_source}); use a smaller file, free memory, "
            f"or raise the limit with {LIMIT_ENV}=<bytes>"
        )


def _read_array(shown: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    try:
        with archive.open(info) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as exc:
        raise _unreadable(shown, key, exc) from None


# ------------------------------------------------------------------------------------ values
def _check_values(shown: str, arrays: dict[str, np.ndarray]) -> list[str]:
    """Inputs finite (or ids >= 0) and labels 0..K-1 in every split; returns the K class names."""
    for suffix in SUFFIXES:
        xk, yk = f"x{suffix}", f"y{suffix}"
        if xk not in arrays:
            continue
        x, y = arrays[xk], arrays[yk]
        if x.dtype.kind == "f":
            low, high = x.min(), x.max()  # NaN propagates; no full-size temporary
            if not (np.isfinite(low) and np.isfinite(high)):
                raise DataError(f"{shown}: {xk} holds NaN or infinite values; drop those rows or replace them first")
            if max(-low, high) > np.finfo(np.float32).max:
                raise DataError(
                    f"{shown}: {xk} holds {high if high > -low else low:.3g}, beyond float32's range "
                    f"(inputs become float32); rescale them"
                )
        if x.dtype.kind == "i" and x.min() < 0:
            raise DataError(
                f"{shown}: {xk} holds {x.min()}, but integer inputs are token / category ids, which are >= 0; "
                f"save numeric features as float32 instead"
            )
        if x.dtype.kind == "u" and x.max() > np.iinfo(np.int64).max:
            raise DataError(f"{shown}: {xk} holds ids above {np.iinfo(np.int64).max}; renumber them")
        if y.min() < 0:
            raise DataError(f"{shown}: {yk} holds label {y.min()}; labels must be class ids 0..K-1")
    if "classes" in arrays:
        raw = arrays["classes"]
        try:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw.tolist()]
        except UnicodeDecodeError:
            raise DataError(f"{shown}: classes holds bytes that are not UTF-8 text; save the names as str") from None
    else:
        classes = None
    top, top_key = max((int(arrays[f"y{s}"].max()), f"y{s}") for s in SUFFIXES if f"y{s}" in arrays)
    rows = len(arrays["x"])
    if classes is not None:
        if top >= len(classes):
            raise DataError(
                f"{shown}: {top_key} holds label {top} but classes names {len(classes)} "
                f"(labels 0..{len(classes) - 1}); give one name per class, in label order"
            )
    elif top >= min(rows, MAX_CLASSES):
        raise DataError(
            f"{shown}: {top_key} holds label {top}, which would make {top + 1:,} classes, but labels must be class "
            f"ids 0..K-1 with K at most the {rows:,} rows of x (and at most {MAX_CLASSES:,}); "
            f"renumber them with np.unique(y, return_inverse=True)"
        )
    present = np.unique(arrays["y"])
    if len(present) < 2:
        raise DataError(f"{shown}: y holds only class {present[0]}; training needs at least 2 classes")
    return classes if classes is not None else [str(i) for i in range(top + 1)]


# ---------------------------------------------------------------------------------- helpers
def _kind(dtype: np.dtype) -> str:
    return "float" if dtype.kind in _FLOAT_KINDS else "int" if dtype.kind in _INT_KINDS else dtype.kind


def _unreadable(shown: str, key: str, exc: BaseException) -> DataError:
    where = f"{key}: " if key else ""
    return DataError(f"{shown} is not a readable .npz file ({where}{_one_line(exc)}); it must hold {ACCEPTED_KEYS}")


def _memory_limit(max_bytes: int | None) -> tuple[int, str]:
    """The memory loading may take, and where that limit comes from (for messages)."""
    if max_bytes is not None:
        return int(max_bytes), f"max_bytes={max_bytes}"
    text = os.environ.get(LIMIT_ENV, "").strip()
    if text:
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        scale = units.get(text[-1].upper(), 1)
        try:
            value = int(float(text[:-1] if scale > 1 else text) * scale)
        except ValueError:
            value = -1
        if value <= 0:
            raise DataError(f"{LIMIT_ENV}={text!r} is not a size; give bytes such as 8000000000 or 8G")
        return value, f"{LIMIT_ENV}"
    return available_memory() // 2, "half the available memory"


def available_memory() -> int:
    """Bytes of memory this process can still use: MemAvailable, capped by a cgroup (container) limit."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        cap = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cap != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(cap) - used))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
        except (AttributeError, OSError, ValueError):
            found.append(8 << 30)
    return min(found)


def _size(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return _clip(" ".join(str(exc).split()) or type(exc).__name__, 200)


def _show(path: Path) -> str:
    """``path`` for a one-line message (control characters escaped)."""
    text = str(path)
    return text if text.isprintable() else repr(text)
