"""slimkit checkpoints: a folder with ``spec.json`` (architecture) and ``weights.safetensors``.

Loading never unpickles: the architecture is rebuilt from the zoo (or from a factory the user
names explicitly) and the weights are read with safetensors.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn.utils import parametrize

from slimkit.core.errors import ModelFileError, SlimkitError, UnknownModelError, UnknownNameError, first_line
from slimkit.core.files import atomic_path
from slimkit.core.model import arch_of, record_input, set_arch
from slimkit.core.surgery import check_change, replay
from slimkit.core.transform import records
from slimkit.io.codecs import MAX_PALETTE, SEP, decode_state, encode_state
from slimkit.zoo.registry import create

FORMAT = "slimkit.checkpoint"
VERSION = 1
SPEC, WEIGHTS = "spec.json", "weights.safetensors"


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    """Equal for tensors that are views of the same memory with one shape (tied weights)."""
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)


def weights_bytes(model: nn.Module, *, compress: bool = True) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    """The model's state as safetensors bytes, the tied names (alias -> stored name) and encodings.

    Tensors shared by several names (tied weights) are stored once. With ``compress``, sparse and
    weight-shared tensors are stored in their smallest exact form (:mod:`slimkit.io.codecs`).
    """
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in effective_state(model).items():  # masked weights, not their parametrization
        key = _storage_key(t)
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().cpu().contiguous()
    encodings: dict[str, Any] = {}
    if compress:
        tensors, encodings = encode_state(tensors)
    return st_save(tensors), tied, encodings


def effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with parametrized tensors (e.g. sparsity masks) replaced by their effective values."""
    state = model.state_dict(keep_vars=False)
    for prefix, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        dot = f"{prefix}." if prefix else ""
        for name in module.parametrizations:
            head = f"{dot}parametrizations.{name}."
            state = {k: v for k, v in state.items() if not k.startswith(head)}
            state[f"{dot}{name}"] = getattr(module, name).detach()
    return state


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    example: torch.Tensor | None = None,
    force: bool = False,
    compress: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``path/`` = spec.json + weights.safetensors (+ ``extra_files``), atomically."""
    arch = arch_of(model)
    if arch is None:
        raise UnknownModelError(
            f"cannot save {type(model).__name__}: slimkit does not know how to rebuild it; create it with "
            "slimkit.zoo.create(...) or slimkit.load(weights, factory='module:function')"
        )
    if example is not None:
        record_input(model, example)
        arch = arch_of(model)
    data, tied, encodings = weights_bytes(model, compress=compress)
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "tied": tied,
        "encodings": encodings,
        "history": [r.to_dict() for r in records(model)],
        "slimkit": _version(),
        "torch": torch.__version__,
    }
    with atomic_path(path, force=force) as tmp:
        tmp.mkdir()
        (tmp / WEIGHTS).write_bytes(data)
        (tmp / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(path)


MAX_SPEC_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
MAX_DEPTH = 64  # JSON nesting in spec.json
MAX_KWARGS_DEPTH = 32  # JSON nesting in a factory's arguments
MAX_ITEMS = 1_000_000  # values in spec.json, or in a factory's arguments
MAX_STR = 1_000_000  # characters in one string
MAX_INPUT_ELEMENTS = 1 << 26  # values in one input sample (a 4096 x 4096 x 4 image)
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


def load_checkpoint(path: Path, *, factory: str | None = None) -> nn.Module:
    """Rebuild a model from a checkpoint folder. A factory-built model needs ``factory`` to confirm.

    Nothing the file declares is allocated before it is checked: the spec is validated
    (:func:`check_spec`), the architecture is first built on the ``meta`` device (no memory) and its
    tensor names and shapes are compared with the weights file's header (:func:`check_fits`).
    """
    spec_path = path / SPEC
    if not spec_path.is_file():
        raise ModelFileError(f"{path} is not a slimkit checkpoint: it has no {SPEC}")
    spec = read_spec(spec_path)
    arch, where = spec["arch"], str(spec_path)
    tied, encodings = spec.get("tied", {}), spec.get("encodings", {})
    weights = path / WEIGHTS
    header = read_header(weights)
    skeleton = _skeleton(arch, factory=factory, where=where)
    if skeleton is not None:
        check_fits(skeleton, header, weights, tied=tied, encodings=encodings)
        del skeleton
    model = build(arch, factory=factory, where=where)
    load_weights(model, weights, tied=tied, encodings=encodings)
    set_arch(model, arch)
    return model


def read_spec(spec_path: Path) -> dict[str, Any]:
    """Parse and validate a checkpoint's ``spec.json`` (one-line :class:`ModelFileError` on any problem)."""
    size = spec_path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise ModelFileError(f"{spec_path} is {size:,} bytes, more than a checkpoint spec can be; the file is damaged")
    damaged = f"{spec_path} is not valid JSON"
    try:
        spec = json.loads(spec_path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise ModelFileError(f"{damaged} (nested too deeply); the checkpoint is damaged, save it again") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, over-long integers
        raise ModelFileError(f"{damaged} ({first_line(exc)}); the checkpoint is damaged, save it again") from None
    check_spec(spec, str(spec_path))
    return spec


def check_spec(spec: Any, where: str) -> None:
    """Validate the structure of a checkpoint spec in one place, before anything uses it.

    Raises a one-line :class:`ModelFileError` naming the first field that is wrong.
    """
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or not isinstance(spec.get("arch"), dict):
        raise ModelFileError(f"{where} is not a slimkit checkpoint spec (format {FORMAT!r} with an 'arch' entry)")
    check_plain(spec, f"{where}: the spec", max_depth=MAX_DEPTH)
    version = spec.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{where}: version must be a positive integer, got {_short(version)}")
    if version > VERSION:
        raise ModelFileError(f"{where} was written by a newer slimkit (format version {version}); upgrade slimkit")
    check_arch(spec["arch"], where)
    tied = spec.get("tied", {})
    if not isinstance(tied, dict) or not all(isinstance(v, str) for v in tied.values()):
        raise ModelFileError(f"{where}: tied must map tensor names to tensor names, got {_short(tied)}")
    encodings = spec.get("encodings", {})
    if not isinstance(encodings, dict):
        raise ModelFileError(f"{where}: encodings must be an object, got {_short(encodings)}")
    for name, meta in encodings.items():
        _check_encoding(meta, f"{where}: encodings.{name}")
    if not isinstance(spec.get("history", []), list):
        raise ModelFileError(f"{where}: history must be a list, got {_short(spec['history'])}")


def _check_encoding(meta: Any, field: str) -> None:
    if not isinstance(meta, dict) or meta.get("codec") not in ("sparse", "palette"):
        raise ModelFileError(f"{field} must be an object with codec 'sparse' or 'palette', got {_short(meta)}")
    if not _is_shape(meta.get("shape"), low=0):
        raise ModelFileError(f"{field}.shape must be a list of sizes, got {_short(meta.get('shape'))}")
    if meta["codec"] == "palette" and (not _is_int(meta.get("bits")) or not 1 <= meta["bits"] <= 8):
        raise ModelFileError(f"{field}.bits must be an integer from 1 to 8, got {_short(meta.get('bits'))}")


def check_arch(arch: Any, where: str, field: str = "arch") -> None:
    """Validate an architecture description (``spec["arch"]``); errors name ``field``."""
    if not isinstance(arch, dict):
        raise ModelFileError(f"{where}: {field} must be an object, got {_short(arch)}")
    kind = arch.get("kind")
    if kind == "zoo":
        if not isinstance(arch.get("name"), str):
            raise ModelFileError(f"{where}: {field}.name must be a zoo model name, got {_short(arch.get('name'))}")
    elif kind == "factory":
        if not isinstance(arch.get("factory"), str):
            raise ModelFileError(f"{where}: {field}.factory must be a string, got {_short(arch.get('factory'))}")
    else:
        raise ModelFileError(f"{where}: {field}.kind must be 'zoo' or 'factory', got {_short(kind)}")
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ModelFileError(f"{where}: {field}.kwargs must be an object of arguments, got {_short(kwargs)}")
    check_plain(kwargs, f"{where}: {field}.kwargs", max_depth=MAX_KWARGS_DEPTH)
    changes = arch.get("changes", [])
    if not isinstance(changes, list):
        raise ModelFileError(f"{where}: {field}.changes must be a list of changes, got {_short(changes)}")
    for i, change in enumerate(changes):
        try:
            check_change(change, f"{field}.changes[{i}]")
        except ModelFileError as exc:
            raise ModelFileError(f"{where}: {exc}") from None
    if "input" in arch:
        want = arch["input"]
        if not isinstance(want, dict):
            raise ModelFileError(f"{where}: {field}.input must be an object with shape and dtype, got {_short(want)}")
        if not _is_shape(want.get("shape"), low=1) or not 1 <= len(want["shape"]) <= 8:
            raise ModelFileError(
                f"{where}: {field}.input.shape must be a list of 1 to 8 positive sizes, got {_short(want.get('shape'))}"
            )
        if math.prod(want["shape"]) > MAX_INPUT_ELEMENTS:
            raise ModelFileError(
                f"{where}: {field}.input.shape {want['shape']} is {math.prod(want['shape']):,} values per sample, "
                f"more than {MAX_INPUT_ELEMENTS:,}; the spec is damaged, save the model again"
            )
        if want.get("dtype") not in DTYPES:
            raise ModelFileError(
                f"{where}: {field}.input.dtype must be one of {', '.join(DTYPES)}, got {_short(want.get('dtype'))}"
            )


def check_plain(value: Any, what: str, *, max_depth: int = MAX_KWARGS_DEPTH, max_items: int = MAX_ITEMS) -> None:
    """Raise a one-line :class:`ModelFileError` unless ``value`` is plain JSON (None, bool, int, float,
    str, lists and string-keyed objects of them) of bounded nesting and size."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > max_items:
            raise ModelFileError(f"{what} is too large (more than {max_items:,} values)")
        if isinstance(item, str):
            if len(item) > MAX_STR:
                raise ModelFileError(f"{what} holds a string too large ({len(item):,} characters)")
        elif isinstance(item, list | dict):
            if depth >= max_depth:
                raise ModelFileError(f"{what} is nested more than {max_depth} levels deep")
            if isinstance(item, dict):
                if not all(isinstance(k, str) for k in item):
                    raise ModelFileError(f"{what} has an object key that is not a string")
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif item is not None and not isinstance(item, bool | int | float):
            raise ModelFileError(f"{what} holds a {type(item).__name__}, not a JSON value")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_shape(value: Any, *, low: int) -> bool:
    return isinstance(value, list) and len(value) <= 16 and all(_is_int(v) and low <= v < 2**63 for v in value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _skeleton(arch: dict[str, Any], *, factory: str | None, where: str) -> nn.Module | None:
    """The architecture built on the meta device (shapes, no memory); None for a user factory that
    cannot build there (its code, confirmed by the user, is then trusted with the sizes)."""
    try:
        with torch.device("meta"):
            return build(arch, factory=factory, where=where)
    except SlimkitError:
        raise
    except Exception:
        if arch["kind"] == "factory":
            return None
        raise


def build(arch: dict[str, Any], *, factory: str | None, where: str, field: str = "arch") -> nn.Module:
    """Instantiate the architecture described by ``arch`` (validated first, see :func:`check_arch`)."""
    check_arch(arch, where, field)
    kwargs = arch.get("kwargs", {})
    if arch["kind"] == "zoo":
        name = arch["name"]
        try:
            model = create(name, **kwargs)
        except ModelFileError:
            raise
        except UnknownNameError as exc:
            raise ModelFileError(f"{where}: {field}.name: {exc}") from None
        except SlimkitError as exc:
            raise ModelFileError(f"{where}: {field}.kwargs: {exc}") from None
        except (TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError, IndexError) as exc:
            raise ModelFileError(f"{where}: {field}.kwargs do not build {name}: {first_line(exc)}") from None
    else:
        model = build_from_factory(confirmed_factory(arch["factory"], factory, where), kwargs)
    replay(model, arch.get("changes", []), where, field=f"{field}.changes")
    return model


_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z]\w*", re.ASCII)
# packages whose functions load files, download or run code (torch.load, numpy.load, pickle-based
# loaders, slimkit.load(trust_pickle=True)); the standard library is refused as a whole
_REFUSED = frozenset(
    "torch numpy scipy pandas joblib dill cloudpickle yaml h5py tensorflow keras jax onnx onnxruntime "
    "safetensors transformers huggingface_hub sklearn slimkit setuptools pip pkg_resources pytest _pytest "
    "IPython requests urllib3".split()
)
_ALLOWED = ("torch.nn", "slimkit.zoo")  # ... except model classes and slimkit's own model factories


def factory_problem(factory: str) -> str | None:
    """Why ``factory`` is not something slimkit will call as a model factory, or None."""
    if not isinstance(factory, str) or not _FACTORY.fullmatch(factory):
        return "it must look like 'package.module:function'"
    return _module_problem(factory.partition(":")[0])


def _module_problem(module: str) -> str | None:
    root = module.split(".")[0]
    if root in sys.stdlib_module_names:
        return f"{root} is part of the Python standard library"
    if root in _REFUSED and not any(module == a or module.startswith(f"{a}.") for a in _ALLOWED):
        return f"functions of {root} can load files or run code"
    return None


def confirmed_factory(recorded: str, given: str | None, where: str) -> str:
    """The factory to call for a checkpoint that records ``recorded``: the user must have given
    exactly that one. The recorded name is only proposed when it looks like a model factory."""
    problem = factory_problem(recorded)
    if problem is not None:
        raise ModelFileError(
            f"{where} names {_short(recorded)} as its factory, which is not a model factory slimkit will call "
            f"({problem}); do not load this checkpoint unless you know where it came from"
        )
    if given is None:
        raise ModelFileError(
            f"{where} was built by {recorded!r}; loading it imports that code and calls it with arguments from "
            f"the file: read that code, and only if you trust it confirm with factory={recorded!r} (CLI: --factory)"
        )
    if given != recorded:
        raise ModelFileError(
            f"{where} was built by {recorded!r}, not {_short(given)}; pass factory={recorded!r} (CLI: --factory) "
            "only if you trust that code"
        )
    return given


def user_function(spec: str, what: str, kind: str) -> Any:
    """The user's function ``module.path:function`` (``what``: how the option is called, ``kind``: what
    the function makes), under the trust rules of :func:`build_from_factory`; one-line errors."""
    problem = factory_problem(spec)
    if problem is not None:
        raise ModelFileError(f"{what} {_short(spec)} is not a {kind} slimkit will call: {problem}")
    module_name, _, attr = spec.partition(":")
    here = os.getcwd()
    searched = here not in sys.path and "" not in sys.path
    if searched:  # the user's own module in the working folder, found after every installed package
        sys.path.append(here)
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelFileError(f"cannot import {what} {spec!r}: {first_line(exc)}") from None
    finally:
        if searched:
            sys.path.remove(here)
    if not callable(fn):
        raise ModelFileError(f"{what} {spec!r} is a {type(fn).__name__}, which is not callable")
    defined_in = getattr(fn, "__module__", None)
    problem = _module_problem(defined_in) if isinstance(defined_in, str) else "it does not say where it is defined"
    if problem is not None:
        raise ModelFileError(
            f"{what} {spec!r} is not a {kind} slimkit will call: it comes from {defined_in}, and {problem}"
        )
    return fn


def build_from_factory(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call ``module.path:function(**kwargs)`` named by the user; the result remembers the factory.

    Refused: names that are not ``module:function``, callables of the standard library and of
    packages whose functions load files or run code (e.g. ``torch.load``; judged by where the
    callable is defined, so re-exports count), non-callables, and ``kwargs`` that are not plain
    JSON. The result must be a ``torch.nn.Module``.
    """
    check_plain(kwargs, f"the arguments of factory {factory!r}")
    fn = user_function(factory, "factory", "model factory")
    try:
        model = fn(**copy.deepcopy(kwargs))
    except TypeError as exc:
        raise ModelFileError(f"factory {factory!r} does not take these arguments: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    set_arch(model, {"kind": "factory", "factory": factory, "kwargs": copy.deepcopy(kwargs)})
    return model


_DTYPE_BITS = {
    name: bits
    for bits, names in (
        (8, "BOOL U8 I8 F8_E5M2 F8_E4M3 F8_E8M0"),
        (4, "F4"),
        (6, "F6_E2M3 F6_E3M2"),
        (16, "I16 U16 F16 BF16"),
        (32, "I32 U32 F32"),
        (64, "I64 U64 F64 C64"),
    )
    for name in names.split()
}


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names, dtypes and shapes in a safetensors file, read from its header only (bounded), after
    checking that every tensor's bytes are inside the file."""
    if not path.is_file():
        raise ModelFileError(f"missing weights file {path}")

    def damaged(why: str) -> ModelFileError:
        return ModelFileError(f"{path} is not a valid safetensors file ({why}); the file is damaged")

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, MAX_HEADER_BYTES):
            raise damaged(f"header of {n} bytes in a {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise damaged(f"header is not JSON: {first_line(exc)}") from None
    if not isinstance(header, dict):
        raise damaged("header is not a JSON object")
    data_len = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if (
            not isinstance(meta, dict)
            or meta.get("dtype") not in _DTYPE_BITS
            or not _is_shape(meta.get("shape"), low=0)
        ):
            raise damaged(f"entry {_short(name)} has no valid dtype and shape")
        offsets = meta.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise damaged(f"entry {_short(name)} has no valid data_offsets")
        begin, end = offsets
        nbytes = -(-math.prod(meta["shape"]) * _DTYPE_BITS[meta["dtype"]] // 8)
        if not 0 <= begin <= end <= data_len or end - begin != nbytes:
            raise damaged(f"tensor {_short(name)} does not fit in the file")
        out[name] = (meta["dtype"], tuple(meta["shape"]))
    return out


def _encoded_fits(header: dict[str, tuple[str, tuple[int, ...]]], name: str, meta: dict[str, Any]) -> bool:
    """Whether the stored parts of an encoded tensor (:mod:`slimkit.io.codecs`) have the sizes its
    shape implies; they bound the memory that decoding allocates."""
    n = math.prod(meta["shape"])
    parts = ("mask", "values") if meta["codec"] == "sparse" else ("palette", "index")
    found = [header.get(f"{name}{SEP}{part}") for part in parts]
    sizes = [entry[1][0] for entry in found if entry is not None and len(entry[1]) == 1]
    if len(sizes) != 2:
        return False
    if meta["codec"] == "sparse":  # a bitmask of n bits, at most n non-zero values
        return sizes[0] == -(-n // 8) and sizes[1] <= n
    return 1 <= sizes[0] <= MAX_PALETTE and sizes[1] == -(-n * meta["bits"] // 8)  # values, packed indices


def check_fits(
    model: nn.Module,
    header: dict[str, tuple[str, tuple[int, ...]]],
    path: Path,
    *,
    tied: dict[str, str] | None = None,
    encodings: dict[str, Any] | None = None,
) -> None:
    """Check that the safetensors ``header`` holds exactly the tensors ``model`` (e.g. built on the
    meta device) expects, with their shapes, as :func:`load_weights` would, without reading data."""
    encodings = encodings or {}
    shapes = {name: shape for name, (_dtype, shape) in header.items() if SEP not in name}
    for name, meta in encodings.items():
        if not _encoded_fits(header, name, meta):
            raise ModelFileError(f"{path}: encoded tensor {name!r} is damaged (its parts do not match {meta})")
        shapes[name] = tuple(meta["shape"])
    for alias, source in (tied or {}).items():
        if source in shapes:
            shapes[alias] = shapes[source]
    expected = model.state_dict(keep_vars=True)
    first: dict[int, str] = {}  # one name per tensor object: weights tied in the model share one
    for name, t in expected.items():
        first.setdefault(id(t), name)
    groups: dict[str, list[str]] = {}
    for name, t in expected.items():
        groups.setdefault(first[id(t)], []).append(name)
    missing = sorted(n for names in groups.values() if not any(m in shapes for m in names) for n in names)
    unexpected = sorted(shapes.keys() - expected.keys())
    if missing or unexpected:
        raise ModelFileError(
            f"{path} does not match the architecture: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for name, want in expected.items():  # in layer order, so the first mismatch named is the earliest one
        if name in shapes and shapes[name] != tuple(want.shape):
            raise ModelFileError(
                f"{path} does not match the architecture: tensor {name!r} has shape {shapes[name]}, "
                f"the architecture expects {tuple(want.shape)}"
            )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(f"missing weights file {path}")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is not a valid safetensors file ({exc}); the file is damaged") from None


def load_weights(
    model: nn.Module, path: Path, *, tied: dict[str, str] | None = None, encodings: dict[str, Any] | None = None
) -> None:
    """Load safetensors weights into ``model``, checking every name and shape."""
    state = decode_state(read_safetensors(path), encodings or {})
    for alias, source in (tied or {}).items():
        if source in state:
            state[alias] = state[source]
    expected = model.state_dict()
    stored = {_storage_key(t): name for name, t in expected.items() if name in state}
    for name, t in expected.items():  # a file that stores tied weights once (safetensors.torch.save_model)
        if name not in state and _storage_key(t) in stored:
            state[name] = state[stored[_storage_key(t)]]
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ModelFileError(
            f"{path} does not match the architecture: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for name, want in expected.items():  # in layer order, so the first mismatch named is the earliest one
        got = state[name]
        if got.shape != want.shape:
            raise ModelFileError(
                f"{path}: tensor {name!r} has shape {tuple(got.shape)}, the architecture expects {tuple(want.shape)}"
            )
    model.load_state_dict(state)
    model.eval()


def _version() -> str:
    from slimkit import __version__

    return __version__
