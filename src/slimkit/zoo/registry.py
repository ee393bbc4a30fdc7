"""Model registry. A created model remembers how it was built so it can be saved without pickle."""

from __future__ import annotations

import copy
import inspect
import json
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.model import ARCH_ATTR, arch_of, record_input, set_arch
from slimkit.core.registry import Registry

_REGISTRY: Registry[Callable[..., nn.Module]] = Registry("model")


_COMPOSITE: set[str] = set()  # built from other models' descriptions (e.g. ensembles), not standalone
_LIMITS: dict[str, dict[str, tuple[float, float]]] = {}

INT_RANGE = (1, 2**31 - 1)  # an integer argument (a size, a count) without its own limits
MAX_LIST = 1024  # items in a list argument (e.g. a recommender's table sizes)


def register(
    name: str, *, composite: bool = False, limits: dict[str, tuple[float, float]] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` (``@register("my_net")``).

    ``composite`` factories (an ensemble of other models) are rebuilt from checkpoints like any zoo
    model but are not listed by :func:`list_models`, since they cannot be created without arguments.

    :func:`create` checks every argument against the factory's annotation (``int``, ``float``,
    ``bool``, ``str``, ``list[int]``, optionally ``| None``) and numbers against ``limits``
    (``{"width": (0.001, 1000)}``, inclusive); integers without limits must be in :data:`INT_RANGE`.
    """
    if composite:
        _COMPOSITE.add(name)
    _LIMITS[name] = dict(limits or {})
    return _REGISTRY.register(name)


def list_models() -> list[str]:
    """Names of the reference models accepted by :func:`create`."""
    return [n for n in _REGISTRY.names() if n not in _COMPOSITE]


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model; unknown keyword arguments are an error naming the accepted ones."""
    factory = _REGISTRY.get(name)
    params = inspect.signature(factory).parameters
    unknown = set(kwargs) - set(params)
    if unknown:
        raise SlimkitError(f"{name} does not take {sorted(unknown)}; it accepts {sorted(params)}")
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SlimkitError(f"{name} arguments must be JSON values (numbers, strings, lists): {exc}") from None
    check_kwargs(name, factory, kwargs)
    model = factory(**kwargs)
    set_arch(model, {"kind": "zoo", "name": name, "kwargs": copy.deepcopy(kwargs)})
    return model


def check_kwargs(name: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Raise a one-line :class:`SlimkitError` naming the first argument of the wrong type or out of range."""
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # annotations that do not evaluate: nothing to check against
        return
    limits = _LIMITS.get(name, {})
    for key, value in kwargs.items():
        hint = hints.get(key)
        if hint is not None:
            _check_value(f"{name} {key}", value, hint, limits.get(key))


def _check_value(label: str, value: Any, hint: Any, limits: tuple[float, float] | None) -> None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return
        if len(options) != 1:
            return  # a union slimkit does not check
        hint = options[0]
    if hint is bool:
        if not isinstance(value, bool):
            raise SlimkitError(f"{label} must be true or false, got {_short(value)}")
    elif hint is str:
        if not isinstance(value, str):
            raise SlimkitError(f"{label} must be a string, got {_short(value)}")
    elif hint is int or hint is float:
        _check_number(label, value, integer=hint is int, limits=limits)
    elif typing.get_origin(hint) is list and typing.get_args(hint) in ((int,), (float,)):
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise SlimkitError(f"{label} must be a list of at most {MAX_LIST} numbers, got {_short(value)}")
        for item in value:
            _check_number(label, item, integer=typing.get_args(hint) == (int,), limits=limits)


def _check_number(label: str, value: Any, *, integer: bool, limits: tuple[float, float] | None) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise SlimkitError(f"{label} must be an integer, got {_short(value)}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SlimkitError(f"{label} must be a finite number, got {_short(value)}")
    lo, hi = limits or (INT_RANGE if integer else (-math.inf, math.inf))
    if not lo <= value <= hi:
        raise SlimkitError(f"{label} must be between {_num(lo)} and {_num(hi)}, got {value!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def create_for(name: str, data: Any, **kwargs: Any) -> nn.Module:
    """Build a zoo model shaped for ``data`` (a :class:`slimkit.data.Dataset`).

    The dataset's ``meta`` (classes, channels, vocabulary, table sizes) fills the arguments the
    model takes; ``kwargs`` override them.
    """
    params = inspect.signature(_REGISTRY.get(name)).parameters
    shaped = {k: v for k, v in data.meta.items() if k in params}
    model = create(name, **{**shaped, **kwargs})
    record_input(model, data.example)
    return model


__all__ = ["ARCH_ATTR", "arch_of", "create", "create_for", "list_models", "register", "set_arch"]
