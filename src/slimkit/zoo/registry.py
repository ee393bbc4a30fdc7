"""Model registry. A created model remembers how it was built so it can be saved without pickle."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.model import ARCH_ATTR, arch_of, record_input, set_arch
from slimkit.core.registry import Registry

_REGISTRY: Registry[Callable[..., nn.Module]] = Registry("model")


_COMPOSITE: set[str] = set()  # built from other models' descriptions (e.g. ensembles), not standalone


def register(name: str, *, composite: bool = False) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` (``@register("my_net")``).

    ``composite`` factories (an ensemble of other models) are rebuilt from checkpoints like any zoo
    model but are not listed by :func:`list_models`, since they cannot be created without arguments.
    """
    if composite:
        _COMPOSITE.add(name)
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
    except TypeError as exc:
        raise SlimkitError(f"{name} arguments must be JSON values (numbers, strings, lists): {exc}") from None
    model = factory(**kwargs)
    set_arch(model, {"kind": "zoo", "name": name, "kwargs": copy.deepcopy(kwargs)})
    return model


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
