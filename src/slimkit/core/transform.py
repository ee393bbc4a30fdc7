"""The transform contract: frozen config dataclasses, a config -> handler registry, ``apply_``.

A transform is ``config -> (model, example_inputs) -> model``, applied in place. Its handler
returns a :class:`TransformRecord` saying which layers changed, which were skipped and why;
``apply_`` attaches the record to the model (see :func:`records`) so that reports can read it.

>>> import dataclasses
>>> @register_config
... @dataclasses.dataclass(frozen=True, kw_only=True)
... class ScaleConfig(Config):
...     factor: float = 2.0
>>> ScaleConfig.from_dict(ScaleConfig(factor=3.0).to_dict())
ScaleConfig(factor=3.0)
"""

from __future__ import annotations

import dataclasses
import json
import re
import reprlib
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from torch import nn

from slimkit.core.errors import SlimkitError, UnknownNameError
from slimkit.core.model import transaction
from slimkit.core.registry import Registry

C = TypeVar("C", bound="Config")
Handler = Callable[[Any, Any, Any], "TransformRecord | tuple[Any, TransformRecord]"]

_CONFIGS: Registry[type[Config]] = Registry("config")
_HANDLERS: dict[tuple[type, str], Handler] = {}
FRAMEWORKS = ("pytorch", "keras")
RECORDS_ATTR = "_slimkit_records"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base class of transform configs: frozen, keyword-only, JSON round trip with a version."""

    VERSION: ClassVar[int] = 1
    calibrated: ClassVar[bool] = False  # reads calibration inputs: loops pass a sample of training inputs

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "version": self.VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild a config from :meth:`to_dict` output; only registered config types are accepted."""
        d = dict(d)
        name = d.pop("type", cls.__name__)
        d.pop("version", None)
        target = _CONFIGS.get(name)
        if cls is not Config and not issubclass(target, cls):
            raise SlimkitError(f"expected a {cls.__name__}, got {name}")
        fields = {f.name for f in dataclasses.fields(target)}
        unknown = set(d) - fields
        if unknown:
            raise SlimkitError(f"{name} has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        try:
            hints = typing.get_type_hints(target)
        except Exception:  # an annotation that cannot be resolved here: the config's own checks remain
            hints = {}
        for key, value in d.items():
            if key in hints and not _fits(value, hints[key]):
                raise SlimkitError(f"{name}.{key} must be {_describe(hints[key])}, got {reprlib.repr(value)}")
        return target(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field annotated ``hint`` (lists stand for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, int if hint is int else int | float) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list) or hint in (tuple, list):
        inner = [a for a in args if a is not Ellipsis]
        return isinstance(value, list | tuple) and (len(inner) != 1 or all(_fits(v, inner[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # other annotations: left to the config's own checks


def _describe(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}.get(
        getattr(hint, "__name__", text), text
    )


def register_config(cls: type[C]) -> type[C]:
    """Class decorator: make a config type loadable by :meth:`Config.from_dict`."""
    _CONFIGS.register(cls.__name__)(cls)
    return cls


def register_transform(config_type: type[Config], framework: str = "pytorch") -> Callable[[Handler], Handler]:
    """Decorator: ``handler(model, config, example_inputs)`` applies ``config_type`` to ``framework``'s
    models. A PyTorch handler changes the module in place and returns a :class:`TransformRecord`; a
    Keras handler returns ``(new_model, record)`` (Keras transforms rebuild the model)."""
    if framework not in FRAMEWORKS:
        raise SlimkitError(f"unknown framework {framework!r}; choose {' or '.join(FRAMEWORKS)}")

    def deco(fn: Handler) -> Handler:
        _HANDLERS[(config_type, framework)] = fn
        return fn

    return deco


def framework_of(model: Any) -> str:
    """``"pytorch"`` for a ``torch.nn.Module``, ``"keras"`` for a Keras model; else a one-line error."""
    # on Keras' torch backend a Keras model is a torch Module too: look for Keras first
    if any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__):
        return "keras"
    if isinstance(model, nn.Module):
        return "pytorch"
    raise SlimkitError(f"expected a torch.nn.Module or a Keras model, got {type(model).__name__}")


@dataclasses.dataclass
class TransformRecord:
    """What one transform did: layers changed, layers skipped (with the reason), details."""

    transform: str
    config: dict[str, Any]
    changed: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"{self.transform}: changed {len(self.changed)} layer(s)"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def apply_(model: Any, config: Config, example_inputs: Any = None) -> Any:
    """Apply ``config`` to ``model`` and return the model (records: :func:`records`); use the result.

    Dispatches on the config and the model's framework: a PyTorch module is changed in place and
    returned; a Keras model is rebuilt, the new model returned and the given one left as it was. A
    transform either succeeds or raises and leaves ``model`` exactly as it was.
    """
    framework = framework_of(model)
    if framework == "keras":
        import slimkit.keras.transforms  # noqa: F401 (registers the Keras handlers)
    handler = _HANDLERS.get((type(config), framework))
    if handler is None:
        others = [fw for (t, fw) in _HANDLERS if t is type(config)]
        if not others:
            raise UnknownNameError(f"no transform is registered for {type(config).__name__}")
        raise SlimkitError(
            f"{type(config).__name__} is not available for {framework} models (only for {', '.join(others)})"
        )
    if framework == "pytorch":
        with transaction(model):  # a transform that fails leaves the model exactly as it was
            add_record(model, handler(model, config, example_inputs))
        return model
    new, record = handler(model, config, example_inputs)
    object.__setattr__(new, RECORDS_ATTR, [*records(model), record])
    return new


def add_record(model: Any, record: TransformRecord) -> None:
    """Attach ``record`` to ``model`` (for transforms run through their own entry point)."""
    object.__setattr__(model, RECORDS_ATTR, [*records(model), record])


def records(model: Any) -> list[TransformRecord]:
    """The records of every transform applied to ``model`` so far, oldest first."""
    return list(getattr(model, RECORDS_ATTR, []))


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``re.compile`` with a one-line error that names the pattern."""
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise SlimkitError(f"invalid regular expression {pattern!r}: {exc}") from None


def select(
    model: nn.Module, patterns: Iterable[str] | None, types: tuple[type[nn.Module], ...] = (nn.Module,)
) -> list[str]:
    """Names of submodules of the given ``types`` matching ``patterns`` (all of them when None).

    A pattern is a fully qualified name (``"features.3.conv"``) or a regular expression prefixed
    with ``re:`` (``"re:layer\\d\\.0\\.conv1"``), matched against the whole name. A plain name that
    matches nothing is an error, so that typos do not silently select nothing.
    """
    names = [n for n, m in model.named_modules() if n and isinstance(m, types)]
    if patterns is None:
        return names
    chosen: list[str] = []
    for p in patterns:
        if p.startswith("re:"):
            rx = compile_pattern(p[3:])
            hits = [n for n in names if rx.fullmatch(n)]
        else:
            hits = [p] if p in names else []
            if not hits:
                kinds = "/".join(t.__name__ for t in types)
                raise SlimkitError(f"no {kinds} layer named {p!r}; layers: {', '.join(names[:12])}...")
        chosen += [h for h in hits if h not in chosen]
    return chosen
