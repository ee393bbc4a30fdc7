"""Simplification: exact graph clean-up, layer and block removal with shape repair, distillation.

- :func:`fold_` (:class:`FoldConfig`): BatchNorm folding, Dropout/Identity removal, Linear merging; exact.
- :func:`remove_layers_` (:class:`RemoveLayersConfig`): remove layers by name or type, repair the shapes after.
- :func:`remove_blocks_` (:class:`RemoveBlocksConfig`), :func:`drop_blocks_`: residual blocks, by measured importance.
- :func:`derive_student`, :func:`distill`: train a smaller student from the model.

>>> import torch, slimkit as sk
>>> from slimkit import simplify
>>> model = sk.zoo.create("seed_cnn", width=0.25)  # 16 filters: fc1 reads 16 x 5 x 5 = 400 features
>>> model = simplify.remove_layers_(model, torch.rand(2, 1, 28, 28), types=["MaxPool2d"])
>>> model.fc1.in_features  # 16 x 24 x 24 without the pools
9216
"""

from __future__ import annotations

from slimkit.simplify.distill import FeatureDistiller, derive_student, distill, parse_student, student_for
from slimkit.simplify.drop import block_importance, drop_blocks_
from slimkit.simplify.fold import FoldConfig, fold_, fold_bn_weights
from slimkit.simplify.remove import (
    RemoveBlocksConfig,
    RemoveLayersConfig,
    identity_path,
    removable_blocks,
    remove_blocks_,
    remove_layers_,
    transfer_linear,
)

__all__ = [
    "FeatureDistiller",
    "FoldConfig",
    "RemoveBlocksConfig",
    "RemoveLayersConfig",
    "block_importance",
    "derive_student",
    "distill",
    "drop_blocks_",
    "fold_",
    "fold_bn_weights",
    "identity_path",
    "parse_student",
    "removable_blocks",
    "remove_blocks_",
    "remove_layers_",
    "student_for",
    "transfer_linear",
]
