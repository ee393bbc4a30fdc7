"""Fusion: a better model from the checkpoints you already have.

- :func:`ensemble`: combine predictions (mean, vote, fitted weights, Caruana et al.'s ensemble
  selection, stacking) in one module that evaluates, saves and exports to ONNX like any model;
- :func:`uniform_soup`, :func:`greedy_soup`: average the weights of checkpoints fine-tuned from one
  start (one model's cost), with BatchNorm statistics re-estimated;
- :func:`distill_ensemble`: teach one student (best started from the best member) to reproduce an ensemble;
- :func:`train_members`: members to fuse: independent (diverse, for ensembles and distillation) or
  fine-tuned from one start (one loss basin, for soups); :func:`random_affine` and
  :func:`elastic` (Simard et al. 2003) distort their training images, one augmentation for all
  members or one each; ``bag="cv"`` / ``"bootstrap"`` trains each member on different data
  (:func:`bag_datasets`, Breiman's bagging) and :meth:`Members.best` picks the best member on its
  own held-out data;
- :func:`best_member`: the member with the best validation accuracy, the baseline a fused model
  must beat (choosing it by test accuracy would flatter the member).

>>> import slimkit as sk
>>> from slimkit import fuse
>>> data = sk.data.load("digits")
>>> small = {"depth": 8, "width": 0.5}
>>> independent = fuse.train_members("resnet_cifar", data, n=2, model_args=small, from_start=False, epochs=1)
>>> ens = fuse.ensemble(independent.members, "mean", val=data)
>>> shared = fuse.train_members("resnet_cifar", data, n=2, model_args=small, start_epochs=1, epochs=1)
>>> soup = fuse.greedy_soup(shared.members, data)
>>> best, val_accuracies = fuse.best_member(shared.members, data)
"""

from __future__ import annotations

from slimkit.fuse.augment import elastic, random_affine
from slimkit.fuse.distill import distill_ensemble
from slimkit.fuse.ensemble import METHODS, Ensemble, build_ensemble, ensemble, fit_selection, member_logits
from slimkit.fuse.members import BAGS, Members, bag_datasets, best_member, train_members
from slimkit.fuse.soup import (
    ArchitectureMismatchError,
    check_same_architecture,
    greedy_soup,
    reestimate_bn,
    uniform_soup,
)

__all__ = [
    "BAGS",
    "METHODS",
    "ArchitectureMismatchError",
    "Ensemble",
    "Members",
    "bag_datasets",
    "best_member",
    "build_ensemble",
    "check_same_architecture",
    "distill_ensemble",
    "elastic",
    "ensemble",
    "fit_selection",
    "greedy_soup",
    "member_logits",
    "random_affine",
    "reestimate_bn",
    "train_members",
    "uniform_soup",
]
