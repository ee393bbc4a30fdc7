"""Pruned Hugging Face ``transformers`` models as ordinary ``save_pretrained`` folders.

Structured pruning changes widths (FFN size, heads, key-value heads, hidden size) that a
``transformers`` config describes by a few integers. When every layer was pruned alike, those
integers can describe the pruned model: :func:`pretrained_config` finds them by building the model
from candidate configs on the ``meta`` device (no memory, no weights) until every parameter has
the pruned shape, and :func:`save_pretrained` writes the folder (safetensors, no pickle), which
``AutoModel.from_pretrained`` / ``<Class>.from_pretrained`` then load as usual. :func:`load_pretrained`
reads such a folder (a user's fine-tuned classifier, say) without running any code from it.

Widths that differ between layers (``global_ranking=True``) are not describable by a config: save
those with :func:`slimkit.save` and a factory, or prune with the same ratio in every layer.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import ModelFileError, SlimkitError, UnknownModelError, first_line
from slimkit.core.files import atomic_path
from slimkit.core.optional import require

__all__ = [
    "architecture",
    "find_pretrained",
    "folder_config",
    "is_pretrained_folder",
    "load_pretrained",
    "pretrained_config",
    "pretrained_model",
    "save_pretrained",
]

_MAX_ROUNDS = 4  # passes of the coordinate search over the config's integer fields


def find_pretrained(model: nn.Module) -> nn.Module | None:
    """``model`` itself if it is a ``transformers.PreTrainedModel``, else the outermost one inside it
    (a user's wrapper whose ``forward`` returns the logits), else None."""
    for m in model.modules():
        if hasattr(m, "config") and hasattr(m, "save_pretrained") and hasattr(type(m), "from_pretrained"):
            return m
    return None


def pretrained_model(model: nn.Module) -> nn.Module:
    """:func:`find_pretrained`, or an error when ``model`` holds no transformers model."""
    found = find_pretrained(model)
    if found is not None:
        return found
    raise SlimkitError(
        f"{type(model).__name__} holds no Hugging Face transformers model (PreTrainedModel); "
        "save it with slimkit.save(model, path, factory=...)"
    )


Layout = tuple[dict[str, tuple[int, ...]], dict[tuple[str, str], Any]]


def _numbers(model: nn.Module) -> dict[tuple[str, str], Any]:
    """The numeric attributes of every module (head counts, head sizes, scalings)."""
    return {
        (name, k): v
        for name, m in model.named_modules()
        for k, v in vars(m).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("_")
    }


def _layout(model_class: type, config: Any) -> Layout | None:
    """Parameter shapes and module numbers of ``model_class(config)``, built on the meta device
    (None: the model rejects the config)."""
    try:
        with torch.device("meta"):
            built = model_class(config)
    except Exception:  # noqa: BLE001  (a candidate config the model rejects is simply not a match)
        return None
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}, _numbers(built)


def _size_fields(config: Any) -> dict[tuple[str, int | None], int]:
    """The config's integer fields and the integer entries of its list fields (ResNet's
    ``hidden_sizes``), as ``{(name, index or None): value}``."""
    out: dict[tuple[str, int | None], int] = {}
    for k, v in vars(config).items():
        if k.startswith("_") or "token" in k:
            continue
        if isinstance(v, int) and not isinstance(v, bool) and v > 1:
            out[(k, None)] = v
        elif isinstance(v, list | tuple) and v and all(isinstance(e, int) and not isinstance(e, bool) for e in v):
            out.update({(k, i): e for i, e in enumerate(v) if e > 1})
    return out


def _with(config: Any, field: tuple[str, int | None], value: int) -> Any:
    trial = copy.deepcopy(config)
    name, index = field
    if index is None:
        setattr(trial, name, value)
    else:
        entries = list(getattr(trial, name))
        entries[index] = value
        setattr(trial, name, type(getattr(config, name))(entries))
    return trial


def pretrained_config(model: nn.Module) -> Any:
    """A copy of the model's config whose size fields describe its (pruned) parameter shapes.

    Raises :class:`SlimkitError` naming the first parameter no config reproduces (e.g. widths that
    differ between layers).
    """
    hf = pretrained_model(model)
    want = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    numbers = _numbers(hf)
    cls = type(hf)
    original = _layout(cls, hf.config)
    if original is None:
        raise UnknownModelError(f"{cls.__name__} cannot be rebuilt from its own config")
    config = copy.deepcopy(hf.config)
    head_dims = {m.head_dim for m in hf.modules() if isinstance(getattr(m, "head_dim", None), int)}
    if len(head_dims) == 1 and getattr(config, "head_dim", None) is None:  # pruning keeps the head size
        config.head_dim = head_dims.pop()

    def score(layout: Layout | None) -> tuple[int, int]:
        """(parameters of the right shape, module numbers that agree, e.g. heads and head sizes)."""
        if layout is None:
            return -1, -1
        shapes, nums = layout
        return sum(shapes.get(k) == v for k, v in want.items()), sum(nums.get(k) == v for k, v in numbers.items())

    # candidate values of a field: the pruned size of a dimension it used to equal, or the field
    # scaled as a dimension was (heads: 8 -> 4 when a projection went from 512 to 256)
    pairs = {(o, n) for k, v in want.items() if k in original[0] for o, n in zip(original[0][k], v, strict=False)}
    ratios = {n / o for o, n in pairs if o != n}
    best = score(_layout(cls, config))
    for _ in range(_MAX_ROUNDS):
        improved = False
        for field, value in _size_fields(config).items():
            candidates = {n for o, n in pairs if o == value} | {round(value * r) for r in ratios if value * r % 1 == 0}
            for new in sorted(candidates - {value, 0}):
                trial = _with(config, field, new)
                trial_score = score(_layout(cls, trial))
                if trial_score > best:
                    best, config, improved = trial_score, trial, True
        if not improved:
            break
    advice = "prune every layer with the same ratio, or build the model with a factory and slimkit.save it"
    if best[0] != len(want):
        shapes = (_layout(cls, config) or ({}, {}))[0]
        name = next(k for k, v in want.items() if shapes.get(k) != v)
        raise UnknownModelError(
            f"no {type(config).__name__} describes the pruned {cls.__name__}: {name} has shape {list(want[name])} "
            "(a config gives every layer the same widths, and some families tie the attention width to the "
            f"hidden size): {advice}"
        )
    try:  # transformers refuses to save a config that breaks its family's rules (hidden size = heads x head size)
        if hasattr(config, "validate"):
            config.validate()
    except Exception as exc:  # huggingface_hub's validation error wraps the ValueError
        why = first_line(exc.__cause__ or exc)
        raise UnknownModelError(
            f"no valid {type(config).__name__} describes the pruned {cls.__name__}: {why}; {advice}"
        ) from None
    return config


def save_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Any = None,
    *,
    force: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write the pruned ``transformers`` model inside ``model`` as a ``save_pretrained`` folder
    (safetensors) whose config describes the pruned shapes; ``<Class>.from_pretrained(path)`` loads it.

    With ``example_inputs`` (what the transformers model takes: ``input_ids``, ``pixel_values`` or a
    dict of them) the folder is loaded back and must give the same outputs: some models read a
    width from their config in ``forward`` (Gemma scales its embeddings by ``sqrt(hidden_size)``), so
    a config with the pruned width would compute something else. The folder is built aside and
    moved into place only on success; ``force`` replaces an existing one. ``extra_files`` (name ->
    text) are written beside the weights. A model no config describes raises
    :class:`~slimkit.core.errors.UnknownModelError`.
    """
    hf = pretrained_model(model)
    config = pretrained_config(hf)
    saved = hf.config
    with atomic_path(path, force=force) as tmp:
        hf.config = config
        try:
            hf.save_pretrained(tmp, safe_serialization=True)
        finally:
            hf.config = saved
        if example_inputs is not None:
            _check_reload(hf, tmp, example_inputs)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(path)


def is_pretrained_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Hugging Face model folder (``config.json``, no slimkit checkpoint in it)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "spec.json").is_file()


def folder_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A model folder's ``config.json`` (one-line :class:`ModelFileError` when it is not a JSON object)."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}/config.json is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}/config.json is not a JSON object")
    return config


def architecture(config: dict[str, Any]) -> str | None:
    """The ``transformers`` class a model folder's config names (``architectures[0]``), if any."""
    names = config.get("architectures")
    return names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None


def load_pretrained(path: str | os.PathLike[str]) -> nn.Module:
    """The model of a ``save_pretrained`` folder, as the class its config names (``architectures``), in
    eval mode. Nothing in the folder runs: the class must be one of ``transformers``' own (a config
    asking for the folder's code, ``auto_map``, is refused), and only ``.safetensors`` weights are read
    (a ``pytorch_model.bin`` is a pickle). Weights missing for the class are an error, not a random
    initialization."""
    transformers = require("transformers", extra="text")
    path = Path(path)
    config = folder_config(path)
    name = architecture(config)
    if "auto_map" in config:
        raise ModelFileError(
            f"{path} asks to run its own Python code (auto_map in config.json); slimkit never runs code from a "
            "model folder: build the model in Python and pass it to slimkit"
        )
    if str(config.get("model_type", "")).startswith("slimkit_"):
        raise ModelFileError(
            f"{path} is a sentence encoder written by slimkit.text: load it with slimkit.text.load(path) "
            "(slimkit optimize takes the folder as it is)"
        )
    cls = getattr(transformers, name, None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelFileError(
            f"{path}/config.json names no transformers model class (architectures: {name!r}); "
            'add e.g. "architectures": ["BertForSequenceClassification"]'
        )
    if not any(path.glob("*.safetensors")):
        raise ModelFileError(
            f"{path} holds no .safetensors weights (pytorch_model.bin is a pickle, which can run code); "
            "convert it: model.save_pretrained(folder, safe_serialization=True)"
        )
    log = transformers.utils.logging
    verbosity, bar = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()  # what went wrong is said below, in one line
    log.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(path, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        why = str(exc).splitlines()[0]
        if "mismatched_sizes" in why:  # transformers points to a report it logged (silenced above)
            why = "weights of other shapes than its config gives"
        raise ModelFileError(f"{path} does not load as {name}: {why}; is architectures in config.json right?") from None
    finally:
        log.set_verbosity(verbosity)
        if bar:
            log.enable_progress_bar()
    missing = info.get("missing_keys") or []
    if missing:
        raise ModelFileError(
            f"{path}: the weights hold no {sorted(missing)[0]} (and {len(missing) - 1} more) for {name}; "
            "is architectures in config.json right?"
        )
    return model.eval()


def _check_reload(hf: nn.Module, folder: Path, example: Any) -> None:
    from slimkit.core.model import eval_mode
    from slimkit.graph.trace import call_model, flat_tensors

    again = type(hf).from_pretrained(folder)
    with eval_mode(hf), torch.no_grad():
        want = flat_tensors(call_model(hf, example))[0]
        got = flat_tensors(call_model(again.eval(), example))[0]
    scale = float(want.abs().max()) or 1.0
    if got.shape != want.shape or float((got - want).abs().max()) > 1e-4 * scale:
        raise UnknownModelError(
            f"{type(hf).__name__} loaded from a config with the pruned widths computes different outputs (its "
            "forward reads a width from the config); save it with slimkit.save(model, path, factory=...)"
        )
