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
:func:`config_ties` finds which groups each config field sizes, so that ``slimkit.optimize`` can
allocate one width per field (``SensitivityPruneConfig.widths``).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import ModelFileError, SlimkitError, UnknownModelError, first_line
from slimkit.core.files import atomic_path
from slimkit.core.optional import require

__all__ = [
    "ConfigTies",
    "architecture",
    "config_ties",
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


def _search_start(hf: nn.Module) -> Any:
    """A copy of ``hf``'s config with the head size pinned (pruning heads keeps their size)."""
    config = copy.deepcopy(hf.config)
    head_dims = {m.head_dim for m in hf.modules() if isinstance(getattr(m, "head_dim", None), int)}
    if len(head_dims) == 1 and getattr(config, "head_dim", None) is None:
        config.head_dim = head_dims.pop()
    return config


@dataclasses.dataclass
class ConfigTies:
    """How a ``transformers`` config sizes a model's prunable groups (see :func:`config_ties`)."""

    config: str  # the config class
    classes: dict[str, list[str]]  # config field(s) -> the producers of the groups they size
    units: dict[str, int]  # config field(s) -> the widths a class can take: k / units of each group's, k = 1..units
    frozen: dict[str, str]  # producer -> why no config can describe pruning it

    def tied(self, groups: dict[str, int]) -> list[tuple[list[str], int]]:
        """The classes as :func:`slimkit.optimize.pipeline.fit_widths` takes them (producers, unit count),
        each group of ``groups`` outside the transformers model (a user's head) a class of its own."""
        inside = {p for members in self.classes.values() for p in members} | set(self.frozen)
        return [(members, self.units[k]) for k, members in self.classes.items()] + [
            ([p], n) for p, n in groups.items() if p not in inside
        ]

    def check(self, model: nn.Module) -> str | None:
        """Why no config describes ``model`` (pruned), or None."""
        try:
            pretrained_config(model)
        except UnknownModelError as exc:
            return str(exc)
        return None


def config_ties(
    model: nn.Module,
    groups: dict[str, int],
    slots: dict[str, list[tuple[str, str]]],
    aligns: dict[str, int] | None = None,
) -> ConfigTies | None:
    """Which of ``model``'s prunable groups the fields of its ``transformers`` config size together.
    ``groups`` maps each group's producer to its unit count, ``slots`` to its ``(layer, slot kind)``
    pairs, the producer's first, and ``aligns`` to the multiple its kept count must be (as
    :class:`~slimkit.optimize.CostModel` has them).

    Each size field of the config is changed alone and the model built on the meta device: groups
    whose dimensions move with the same fields form one class (BERT: the hidden size sizes the
    residual stream, every layer's attention heads and the pooler; the intermediate size every
    layer's FFN), and pruning every group of a class in proportion keeps the model describable by a
    config. A field the config requires to be a multiple of another's (Llama: the hidden size of the
    head count) joins that field's class. A class takes ``units`` widths (BERT's 384 hidden and 12
    heads: 12; an EfficientNet block expanding 8 channels 6 times: 6), fewer where a group must keep
    multiples of 8 (GLM-4-MoE's routed experts, read by ``grouped_mm``, and its shared experts, sized by
    the same field, 32 wide: 4, steps of 8 for both). A group no field sizes, or a
    class whose fields also size dimensions outside its groups (a protected layer), is ``frozen``.
    Groups outside the transformers model (a user's head) are in neither. None when ``model`` holds
    no transformers model or its config cannot rebuild it.
    """
    from slimkit.graph import pruner_for

    hf = find_pretrained(model)
    if hf is None:
        return None
    prefix = next(name for name, m in model.named_modules() if m is hf)
    prefix = prefix + "." if prefix else ""
    try:  # the config of the widths it has now (pruned before, its own config is stale)
        config = pretrained_config(hf)
    except UnknownModelError:
        config = _search_start(hf)
    cls = type(hf)
    base = _layout(cls, config)
    if base is None:
        return None
    params = {name for name, _ in hf.named_parameters(remove_duplicate=False)}
    sizes = {(f[0] if f[1] is None else f"{f[0]}[{f[1]}]"): (f, v) for f, v in _size_fields(config).items()}
    moved: dict[str, set[tuple[str, int]]] = {}  # field -> (parameter, dimension) it resizes
    for label, (field, value) in sizes.items():
        for new in (value // 2, value - 1):
            layout = _layout(cls, _with(config, field, new)) if new >= 1 else None
            if layout is None:
                continue
            moved[label] = {
                (k, d)
                for k, shape in layout[0].items()
                if k in params and len(shape) == len(base[0].get(k, ()))
                for d, (a, b) in enumerate(zip(shape, base[0][k], strict=True))
                if a != b
            }
            break

    def dims(layer: str, kind: str) -> set[tuple[str, int]]:
        module = model.get_submodule(layer)
        rule = pruner_for(module)
        return {
            (f"{layer[len(prefix) :]}.{attr}", d)
            for attr, p in module.named_parameters(recurse=False)
            for d in range(p.dim())
            if rule.kind(module, attr, d) == kind
        }

    def steps(label: str) -> list[int]:
        return [sizes[f][1] for f in label.split("+") if f in sizes]

    # groups sized by a common field form one class (BitNet: a norm of the attention output is as
    # wide as the hidden size, so the heads go with it)
    found: list[tuple[set[str], list[str]]] = []
    frozen: dict[str, str] = {}
    for producer, members in slots.items():
        if not producer.startswith(prefix):
            continue
        own = set().union(*(dims(*slot) for slot in members))
        fields = {f for f, where in moved.items() if where & own}
        if not fields:
            frozen[producer] = f"no {type(config).__name__} field sizes it"
            continue
        joined = [c for c in found if c[0] & fields]
        found = [c for c in found if not c[0] & fields]
        found.append((fields.union(*(f for f, _ in joined)), [p for _, ps in joined for p in ps] + [producer]))
    classes = {"+".join(f for f in moved if f in fields): producers for fields, producers in found}
    for fields, producers in list(classes.items()):
        covered = set().union(*(dims(*slot) for p in producers for slot in slots[p]))
        outside = set().union(*(moved[f] for f in fields.split("+"))) - covered
        if outside:
            name = min(outside)[0]
            frozen.update({p: f"{fields} also sizes {name}, which is not pruned with it" for p in producers})
            del classes[fields]
    for fields in [f for f in classes if f in sizes]:
        field, value = sizes[fields]
        if _invalid(_with(config, field, value - 1)) is None:
            continue
        for other in [c for c in classes if c != fields]:
            if any(
                v > 1 and value % v == 0 and _invalid(_with(config, field, value - v)) is None for v in steps(other)
            ):
                classes[f"{fields}+{other}"] = classes.pop(fields) + classes.pop(other)
                break
    units = {}
    for fields, producers in classes.items():
        counts = [groups[p] for p in producers]
        units[fields] = math.gcd(*counts, *(v for v in steps(fields) if all(n % v == 0 for n in counts)))
        for p in producers:  # every width of the class keeps the aligned groups' multiples
            a = (aligns or {}).get(p, 1)
            if a > 1 and groups[p] % a == 0:
                units[fields] = math.gcd(units[fields], groups[p] // a)
    return ConfigTies(type(config).__name__, classes, units, frozen)


def _invalid(config: Any) -> str | None:
    """Why transformers would refuse to save ``config`` (its family's rules, e.g. the hidden size a
    multiple of the head count), or None."""
    try:
        if hasattr(config, "validate"):
            config.validate()
    except Exception as exc:  # noqa: BLE001  (huggingface_hub's validation error wraps the family's ValueError)
        return first_line(exc.__cause__ or exc)
    return None


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
    config = _search_start(hf)

    def score(layout: Layout | None) -> tuple[int, int]:
        """(parameters of the right shape, module numbers that agree, e.g. heads and head sizes)."""
        if layout is None:
            return -1, -1
        shapes, nums = layout
        return sum(shapes.get(k) == v for k, v in want.items()), sum(nums.get(k) == v for k, v in numbers.items())

    # candidate values of a field: the pruned size of a dimension it used to equal, or the field
    # scaled as a dimension was (heads: 8 -> 4 when a projection went from 512 to 256)
    pairs = {(o, n) for k, v in want.items() if k in original[0] for o, n in zip(original[0][k], v, strict=False)}
    pairs |= {(o, numbers[k]) for k, o in original[1].items() if isinstance(o, int) and isinstance(numbers.get(k), int)}
    ratios = {Fraction(n, o) for o, n in pairs if o != n and o > 0}

    def moves() -> list[tuple[tuple[str, int | None], int]]:
        """Each size field set to a width it used to equal, or scaled as a dimension or a head count was."""
        out = []
        for field, value in _size_fields(config).items():
            candidates = {n for o, n in pairs if o == value} | {
                int(value * r) for r in ratios if (value * r).denominator == 1
            }
            out += [(field, new) for new in sorted(candidates - {value, 0})]
        return out

    best = score(_layout(cls, config))
    for _ in range(_MAX_ROUNDS):
        improved = False
        single = moves()
        # one field at a time, then two together (BERT: 6 heads of 16 -> 4 needs hidden 96 -> 64 at once)
        for move in [[m] for m in single] + [list(mm) for mm in itertools.combinations(single, 2)]:
            if improved and len(move) > 1:
                break
            if len(move) > 1 and move[0][0] == move[1][0]:
                continue
            trial = config
            for field, new in move:
                trial = _with(trial, field, new)
            trial_score = score(_layout(cls, trial))
            if trial_score > best:
                best, config, improved = trial_score, trial, True
        if not improved:
            break
    advice = (
        "prune every layer alike (slimkit optimize: --widths config), or build the model with a factory "
        "and slimkit.save it"
    )
    if best[0] != len(want):
        shapes = (_layout(cls, config) or ({}, {}))[0]
        name = next(k for k, v in want.items() if shapes.get(k) != v)
        raise UnknownModelError(
            f"no {type(config).__name__} describes the pruned {cls.__name__}: {name} has shape {list(want[name])} "
            "(a config gives every layer the same widths, and some families tie the attention width to the "
            f"hidden size): {advice}"
        )
    why = _invalid(config)
    if why is not None:
        raise UnknownModelError(
            f"no valid {type(config).__name__} describes the pruned {cls.__name__}: {why}; {advice}"
        )
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


DENSE_EXPERTS = "slimkit_dense"  # the name :func:`dense_experts` is registered under in transformers
EXPORT_EXPERTS = DENSE_EXPERTS  # the experts implementation exports run


def dense_experts(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """A ``transformers`` experts implementation for exported programs and ONNX: every expert runs on
    every token as plain matmuls and is weighted by its routing weight (zero where not chosen). The
    same outputs as ``grouped_mm`` (no ONNX operator) and ``batched_mm`` (which gathers the chosen
    experts' weights for every token: memory of tokens x top-k x a whole expert); this one takes
    experts / top-k times the expert MACs, and memory linear in the tokens."""
    x = hidden_states
    chosen = torch.nn.functional.one_hot(top_k_index, self.num_experts).to(top_k_weights.dtype)
    routing = (chosen * top_k_weights[..., None]).sum(1)  # (tokens, experts)

    def linear(h: torch.Tensor, name: str) -> torch.Tensor:
        weight = getattr(self, name)
        out = torch.matmul(h, weight if self.is_transposed else weight.transpose(1, 2))  # (experts, tokens, out)
        return out + getattr(self, f"{name}_bias")[:, None, :] if self.has_bias else out

    # a batch of experts on both sides: OpenVINO's CPU plugin mishandles MatMul broadcasting (T, H) or (1, T, H)
    h = linear(x.expand(self.num_experts, *x.shape), "gate_up_proj" if self.has_gate else "up_proj")
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
    out = linear(h, "down_proj")
    if self.has_post_expert_norm:
        out = self.post_expert_norm(out)
    return (out * routing.T[:, :, None].to(out.dtype)).sum(0).to(x.dtype)


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
