"""Reference models written here (no torchvision), created by name.

>>> import slimkit as sk
>>> model = sk.zoo.create("seed_cnn")
>>> sum(p.numel() for p in model.parameters())
1687242
"""

from __future__ import annotations

from slimkit.zoo import cnn, mobilenet, recsys, resnet, segment, text  # noqa: F401, E402  (register models)
from slimkit.zoo.registry import ARCH_ATTR, arch_of, create, create_for, list_models, register

list = list_models  # noqa: A001  (``sk.zoo.list()`` reads naturally; the builtin is not used here)

__all__ = ["ARCH_ATTR", "arch_of", "create", "create_for", "list", "list_models", "register"]
