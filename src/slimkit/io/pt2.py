"""``.pt2`` files (``torch.export`` programs) loaded without running code from the file.

``torch.export.load`` unpickles parts of an archive: weights and constants marked ``use_pickle``
(``torch.load(weights_only=False)``), custom and opaque objects (plain pickle), legacy ``.pt``
weight files and example inputs (a fallback to ``weights_only=False``); it also loads
AOTInductor shared libraries. The program's JSON can run code too: symbolic shape expressions
are parsed with ``sympy.sympify`` (which evaluates Python), node and attribute names end up in
the Python source that ``torch.fx`` generates and executes, node targets name any attribute of
``torch``, and ``module()`` executes the file's guard code. slimkit therefore

1. reads the zip itself and refuses pickled payloads, compiled code, zip bombs and duplicate
   entries, and checks the program JSON (expressions, names, targets) against what
   ``torch.export.save`` writes, unless the user vouches for the file with ``trust_pickle=True``;
2. hands torch exactly the entries it checked (an in-memory copy, so the zip reader of torch cannot
   see anything else), forces ``weights_only`` unpickling for the call, so that even a path
   not foreseen here cannot unpickle code, and builds the module without the guard code.

The loaded program is returned as a module whose ``train()`` / ``eval()`` only set flags: the
graph is the inference graph that was exported and keeps its behaviour in either mode.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import ModelFileError, first_line

MAX_ENTRIES = 100_000
MAX_JSON_BYTES = 256 << 20  # a program or payload config (JSON) larger than this is not from torch.export.save
MAX_JSON_DEPTH = 256
_PICKLE_PREFIXES = ("custom_obj_", "opaque_obj_")
_DOTTED = re.compile(r"\w*(\.\w+)*", re.ASCII)  # module paths such as "layer1.0.conv1"
# operator-module functions a graph may call (not attrgetter/methodcaller/call, which reach any attribute)
_OPERATOR = frozenset(
    "getitem add sub mul truediv floordiv mod pow neg pos abs and_ or_ xor not_ invert lshift rshift eq "
    "ne lt le gt ge truth matmul index".split()
)
# sympy constructors in the shape expressions torch.export writes (sympy.srepr), plus torch's sympy functions
_SYMPY_CALLS = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Max Min Mod Abs Eq Ne Lt Le Gt Ge StrictLessThan "
    "StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not floor ceiling sqrt Piecewise "
    "ExprCondPair FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift "
    "RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat "
    "TruncToInt RoundToInt RoundDecimal ToFloat Identity".split()
)
_SYMPY_NODES = (
    ast.Expression,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.keyword,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.BoolOp,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
    ast.boolop,
)


def _untrusted(path: Path, what: str) -> ModelFileError:
    return ModelFileError(
        f"{path} holds {what}, and loading it can run arbitrary code; re-export the model with slimkit export, "
        "or if you trust its source pass trust_pickle=True (CLI: --trust-pickle)"
    )


def _damaged(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a loadable .pt2 program ({why})")


def read_archive(path: Path) -> list[tuple[str, bytes]]:
    """The entries of the zip ``path`` in order, after checks that cost no decompression: no
    duplicate names, and a total uncompressed size in proportion to the file (no zip bomb)."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ENTRIES:
                raise _damaged(path, f"{len(infos)} entries")
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                twice = next(n for n in names if names.count(n) > 1)
                raise _damaged(path, f"the entry {twice!r} appears twice, which torch.export.save never writes")
            total = sum(i.file_size for i in infos)
            if total > 16 * size + (64 << 20):
                raise _damaged(path, f"{total:,} bytes uncompressed from a {size:,}-byte file")
            return [(i.filename, archive.read(i)) for i in infos]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise _damaged(path, f"not a zip archive: {first_line(exc)}") from None


def check_archive(path: Path, entries: list[tuple[str, bytes]]) -> None:
    """Refuse an archive whose loading would unpickle or load compiled code (see the module doc)."""
    for name, data in entries:
        inner = name.split("/", 1)[1] if "/" in name else name  # torch.export.save writes <root>/<inner>
        if inner.startswith("data/aotinductor/") or inner.endswith((".so", ".dll", ".dylib")):
            raise ModelFileError(
                f"{path} holds compiled code ({inner}), which loading would run; if you trust its source "
                "pass trust_pickle=True (CLI: --trust-pickle)"
            )
        if inner in ("version", "serialized_state_dict.pt", "serialized_constants.pt"):
            raise _untrusted(path, "pickled data (the torch 2.7 .pt2 format)")
        if inner.startswith("models/"):
            _check_program(path, inner, data)
        elif inner.startswith(("data/weights/", "data/constants/")):
            leaf = inner.rsplit("/", 1)[1]
            if leaf.endswith(".pt"):
                raise _untrusted(path, f"pickled data ({inner})")
            if leaf.endswith("_config.json"):
                _check_payload_config(path, inner, data)
            elif leaf.startswith(_PICKLE_PREFIXES):
                raise _untrusted(path, f"pickled data ({inner})")


def _json(path: Path, name: str, data: bytes) -> Any:
    if len(data) > MAX_JSON_BYTES:
        raise _damaged(path, f"{name} is {len(data):,} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, f"{name} is not valid JSON: {first_line(exc)}") from None


def _check_payload_config(path: Path, name: str, data: bytes) -> None:
    config = _json(path, name, data)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _damaged(path, f"{name} has no 'config' table")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise _damaged(path, f"{name}: entry {fqn!r} has no 'path_name'")
        if not _DOTTED.fullmatch(fqn):
            raise _unsafe(path, f"the tensor name {fqn[:60]!r} in {name}")
        if meta.get("use_pickle", False) is not False or meta["path_name"].startswith(_PICKLE_PREFIXES):
            raise _untrusted(path, f"pickled data ({fqn!r} in {name})")


def _unsafe(path: Path, what: str) -> ModelFileError:
    return ModelFileError(
        f"{path} holds {what}, which torch.export.save does not write and loading could run as code; "
        "re-export the model with slimkit export, or if you trust its source pass trust_pickle=True "
        "(CLI: --trust-pickle)"
    )


def _check_program(path: Path, name: str, data: bytes) -> None:
    """Check a serialized program (``models/<name>.json``): every string that torch turns into code
    (shape expressions, node and attribute names, node targets) has the form torch.export.save writes."""
    stack: list[tuple[Any, int]] = [(_json(path, name, data), 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _damaged(path, f"{name} is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("as_custom_obj", "custom_obj_values") and value:
                    raise _untrusted(path, f"custom objects ({name})")
                if isinstance(value, str):
                    _check_string(path, key, value)
                else:
                    stack.append((value, depth + 1))


def _check_string(path: Path, key: str, value: str) -> None:
    if "\r" in value or "\x00" in value:  # a line break in generated code, inside what looks like a comment
        raise _unsafe(path, f"a line break in {key!r}")
    ok = True
    if key in ("name", "as_name"):
        ok = value.isidentifier()
    elif key == "fqn" or key.endswith("_name"):
        ok = bool(_DOTTED.fullmatch(value))
    elif key == "target":
        ok = _safe_target(value)
    elif key == "expr_str":
        ok = _safe_expression(value)
    if not ok:
        raise _unsafe(path, f"the {key} {value[:60]!r}")


def _safe_target(target: str) -> bool:
    """Whether a node target is an operator (``torch.ops.*``), a symbolic-shape helper of torch,
    a ``math`` function or an arithmetic ``operator`` function, resolved as torch resolves it."""
    parts = target.split(".")
    if not all(p.isidentifier() for p in parts) or (parts[:2] != ["torch", "ops"] and "__" in target):
        return False  # aten has dunder operators (aten.__or__); they resolve to operators, checked below
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in _OPERATOR
    if parts[0] == "math":
        return len(parts) == 2 and callable(getattr(__import__("math"), parts[1], None))
    if parts[0] != "torch" or len(parts) < 2:
        return False
    if len(parts) == 2:
        return re.fullmatch(r"_?sym_\w+", parts[1]) is not None and callable(getattr(torch, parts[1], None))
    if parts[1] != "ops":
        return False
    obj: Any = torch
    for part in parts[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return isinstance(obj, torch._ops.OpOverload | torch._ops.OpOverloadPacket | torch._ops.HigherOrderOperator)


def _safe_expression(text: str) -> bool:
    """Whether a shape expression (parsed by torch with ``sympy.sympify``, which evaluates Python)
    is only numbers, symbols, arithmetic and calls of sympy's and torch's shape functions."""
    if len(text) > 10_000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _SYMPY_NODES):
            return False
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name)
            and node.func.id in _SYMPY_CALLS
            or isinstance(node.func, ast.Name)
            and node.func.id.startswith(("OpaqueUnaryFn_", "BitwiseFn_"))
        ):
            return False
        if isinstance(node, ast.keyword) and node.arg is None:  # **kwargs
            return False
        if isinstance(node, ast.Name) and (node.id.startswith("_") or hasattr(builtins, node.id)):
            return False
    return True


@contextlib.contextmanager
def weights_only_unpickling() -> Iterator[None]:
    """Make every ``torch.load`` in the block use the restricted (weights-only) unpickler, whatever
    its caller asks for (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, read by torch at each call)."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ[keys[0]] = "1"
    os.environ.pop(keys[1], None)  # torch refuses both at once
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_HF_OUTPUTS = "transformers.modeling_outputs"


def load_program(path: Path, *, trust_pickle: bool = False, check: bool = True) -> nn.Module:
    """Load the ``torch.export`` program in ``path`` as a module (see the module doc).

    ``check=False`` skips the archive check but still forces weights-only unpickling (for tests of
    that second line of defence); ``trust_pickle=True`` loads the file as torch does.
    """
    from slimkit.io.onnx import quiet

    path = Path(path)
    source: Any = str(path)
    guard: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    entries = read_archive(path)
    if any(_HF_OUTPUTS.encode() in data for name, data in entries if name.endswith(".json")):
        # a transformers model's outputs (SequenceClassifierOutput...): their pytree types are registered
        # when this one fixed module of the installed package is imported (never a name from the file)
        with contextlib.suppress(ImportError):
            importlib.import_module(_HF_OUTPUTS)
    if not trust_pickle:
        if check:
            check_archive(path, entries)
        source = io.BytesIO()
        with zipfile.ZipFile(source, "w", zipfile.ZIP_STORED) as copy:
            for name, data in entries:
                copy.writestr(name, data)
        source.seek(0)
        guard = weights_only_unpickling()
    try:
        with quiet(), guard:
            return as_module(torch.export.load(source), name=path.stem)
    except Exception as exc:  # torch.export raises many types for damaged (or refused) archives
        raise _damaged(path, first_line(exc)) from None


def as_module(program: torch.export.ExportedProgram, name: str | None = None) -> nn.Module:
    """``program.module()`` that slimkit can put in eval or train mode like any module.

    torch.export forbids ``train()`` / ``eval()`` on the module because they cannot change the
    traced graph; here they only set the ``training`` flags, and the program keeps the behaviour
    it was exported with (slimkit exports in eval mode).
    """
    module = program.module(check_guards=False)  # guards would be code generated from the file, then run
    for method in ("train", "eval"):
        module.__dict__.pop(method, None)
    module.eval()
    if name:
        module.name = name
    return module
