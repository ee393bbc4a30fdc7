"""Knowledge distillation into simpler students: derive a student, then train it from the teacher.

Hinton distillation reuses :func:`slimkit.train.fit` (its ``teacher``, ``temperature`` and
``alpha``). Optional feature matching (FitNets) adds ``beta * MSE(proj(student_feature),
teacher_feature)`` for named layer pairs, through a wrapper that ``fit`` trains like any model.

>>> import slimkit as sk
>>> from slimkit.simplify import derive_student, distill
>>> data = sk.data.load("digits")
>>> teacher = sk.zoo.create_for("resnet_cifar", data, depth=14)  # trained elsewhere
>>> student = derive_student(teacher, width=0.5, depth=8)
>>> history = distill(student, teacher, data, epochs=1, progress=False)
>>> len(history.epochs)
1
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from slimkit import zoo
from slimkit.core.device import resolve_device
from slimkit.core.errors import SlimkitError
from slimkit.core.model import arch_of, record_input, set_arch
from slimkit.evaluate.cost import count_params
from slimkit.train import DistillConfig, History, check_pair, fit


def _scaled(n: int, width: float, multiple: int = 1) -> int:
    return max(multiple, round(n * width / multiple) * multiple)


def _no_depth(name: str, depth: int | None) -> None:
    if depth is not None:
        raise SlimkitError(f"{name} has no depth setting; derive its student with width only")


def _cnn(kw: dict, width: float, depth: int | None) -> dict:
    _no_depth("seed_cnn/lenet5", depth)
    return {"width": kw.get("width", 1.0) * width}


def _resnet(kw: dict, width: float, depth: int | None) -> dict:
    return {"width": kw.get("width", 1.0) * width, **({"depth": depth} if depth is not None else {})}


def _mobilenet(kw: dict, width: float, depth: int | None) -> dict:
    _no_depth("mobilenet_v2", depth)
    return {"width": kw.get("width", 1.0) * width}


def _lstm(kw: dict, width: float, depth: int | None) -> dict:
    out = {"embed_dim": _scaled(kw.get("embed_dim", 64), width), "hidden": _scaled(kw.get("hidden", 128), width)}
    return out | ({"layers": depth} if depth is not None else {})


def _transformer(kw: dict, width: float, depth: int | None) -> dict:
    heads = kw.get("heads", 4)
    out = {"dim": _scaled(kw.get("dim", 64), width, heads), "ffn": _scaled(kw.get("ffn", 128), width)}
    return out | ({"layers": depth} if depth is not None else {})


def _recsys(kw: dict, width: float, depth: int | None) -> dict:
    hidden = [_scaled(h, width) for h in kw.get("hidden") or [128, 64]]
    return {"embed_dim": _scaled(kw.get("embed_dim", 16), width), "hidden": hidden[:depth] if depth else hidden}


def _unet(kw: dict, width: float, depth: int | None) -> dict:
    return {"width": _scaled(kw.get("width", 16), width), **({"depth": depth} if depth is not None else {})}


# zoo name -> (teacher kwargs, width, depth) -> the student's changed kwargs
_SHRINK: dict[str, Callable[[dict, float, int | None], dict]] = {
    "seed_cnn": _cnn,
    "lenet5": _cnn,
    "resnet_cifar": _resnet,
    "mobilenet_v2": _mobilenet,
    "text_lstm": _lstm,
    "text_transformer": _transformer,
    "recsys_mlp": _recsys,
    "unet": _unet,
}


def derive_student(
    model: nn.Module, width: float = 0.5, depth: int | None = None, example: torch.Tensor | None = None
) -> nn.Module:
    """A smaller, freshly initialised model of the same family as ``model``.

    ``width`` scales channels / hidden sizes; ``depth`` sets the number of layers where the
    family has one (resnet_cifar: 6n + 2; text models: layers; recsys_mlp: hidden layers kept).
    Zoo models are rebuilt from their arguments; any other model is pruned at init: a copy loses
    ``1 - width`` of every prunable group (structured pruning, see :mod:`slimkit.prune`) and is
    re-initialised. ``example`` (an input batch) is needed for that when the model has no recorded
    input shape.

    >>> import slimkit as sk
    >>> derive_student(sk.zoo.create("resnet_cifar", depth=20), width=0.5, depth=14).layer1[0].conv1.out_channels
    8
    """
    if not 0 < width <= 1:
        raise SlimkitError(f"student width must be in (0, 1], got {width}")
    arch = arch_of(model)
    name = (arch or {}).get("name") if (arch or {}).get("kind") == "zoo" else None
    if name not in _SHRINK:
        return _pruned_at_init(model, width, depth, example)
    kwargs = dict(arch.get("kwargs", {}))
    student = zoo.create(name, **(kwargs | _SHRINK[name](kwargs, width, depth)))
    if "input" in arch:
        set_arch(student, {**arch_of(student), "input": copy.deepcopy(arch["input"])})
    return student


def parse_student(spec: str, data: Any | None = None) -> nn.Module:
    """Build a student from ``"name:key=value,key=value"`` (e.g. ``"seed_cnn:width=0.25"``).

    With ``data`` (a :class:`slimkit.data.Dataset`) the model is shaped for it (classes, channels).
    """
    import json

    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlimkitError(f"student spec {spec!r}: expected name:key=value,key=value")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    student = zoo.create_for(name, data, **kwargs) if data is not None else zoo.create(name, **kwargs)
    return student


class _WithAuxLoss(torch.autograd.Function):
    """Returns ``out`` unchanged; its backward also sends gradient 1 into ``aux``.

    This adds ``aux`` to whatever loss is computed from ``out``, without changing the loop
    that computes it (here: :func:`slimkit.train.fit`).
    """

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        ctx.aux_meta = (aux.shape, aux.dtype)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape, dtype = ctx.aux_meta
        return grad, torch.ones(shape, dtype=dtype, device=grad.device)


def with_aux_loss(out: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
    """``out`` unchanged, with ``aux`` added to any loss computed from it (through the gradient)."""
    return _WithAuxLoss.apply(out, aux)


class FeatureDistiller(nn.Module):
    """Student + projections that add a feature-matching loss while ``fit`` trains it.

    ``pairs`` maps student layer names to teacher layer names. Each student feature is
    projected to the teacher's width (1x1 conv for maps, Linear otherwise); a teacher map of
    another spatial size is average-pooled to the student's. The teacher is held outside the
    module tree, so the optimizer never sees its parameters.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module, pairs: dict[str, str], example: torch.Tensor, beta: float
    ):
        super().__init__()
        self.student, self.pairs, self.beta = student, dict(pairs), beta
        self._teacher = [teacher.eval()]
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        s_feats, _ = self._features(student, list(pairs), example)
        with torch.no_grad():
            t_feats, _ = self._features(teacher, list(pairs.values()), example)
        projections = {}
        for s_name, t_name in pairs.items():
            s, t = s_feats[s_name], t_feats[t_name]  # (B, C, *spatial) or (B, ..., D)
            if s.dim() != t.dim():
                raise SlimkitError(f"cannot match {s_name} {list(s.shape)} to teacher {t_name} {list(t.shape)}")
            if s.dim() == 4:
                projections[s_name.replace(".", "_")] = nn.Conv2d(s.shape[1], t.shape[1], 1)
            else:
                projections[s_name.replace(".", "_")] = nn.Linear(s.shape[-1], t.shape[-1])
        self.projections = nn.ModuleDict(projections)

    @staticmethod
    def _features(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        feats: dict[str, torch.Tensor] = {}
        handles = []
        for name in names:
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                raise SlimkitError(f"feature matching: the model has no layer {name!r}") from None
            handles.append(layer.register_forward_hook(lambda _m, _a, out, name=name: feats.__setitem__(name, out)))
        try:
            out = model(x)
        finally:
            for h in handles:
                h.remove()
        return feats, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.student(x)
        s_feats, logits = self._features(self.student, list(self.pairs), x)
        with torch.no_grad():
            t_feats, t_logits = self._features(self._teacher[0], list(self.pairs.values()), x)
        self._cache = (x, t_logits)
        loss = logits.new_zeros(())
        for s_name, t_name in self.pairs.items():
            s, t = self.projections[s_name.replace(".", "_")](s_feats[s_name]), t_feats[t_name]
            if s.dim() == 4 and s.shape[2:] != t.shape[2:]:
                t = F.adaptive_avg_pool2d(t, s.shape[2:])  # (B, Ct, Hs, Ws)
            loss = loss + F.mse_loss(s, t)
        return with_aux_loss(logits, self.beta * loss)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x`` (reused from the last forward when it was the same batch)."""
        if self._cache is not None and self._cache[0] is x:
            return self._cache[1]
        return self._teacher[0](x)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    config: DistillConfig | None = None,
    *,
    val: DataLoader | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    augment: bool | Callable[[torch.Tensor], torch.Tensor] = True,
    progress: bool = True,
    **fit_kwargs: Any,
) -> History:
    """Train ``student`` in place from ``teacher`` on ``data`` and return the training history.

    ``config`` (a :class:`slimkit.train.DistillConfig`, default ``DistillConfig()``): the loss
    ``(1 - alpha) * CE + alpha * T^2 * KL`` (Hinton et al. 2015), plus ``beta`` times the
    feature-matching MSE for each ``features`` pair (student layer -> teacher layer). ``data`` is a
    :class:`slimkit.data.Dataset` (train split; its val split unless ``val`` is given; its
    augmentation when ``augment`` is True) or a training DataLoader (``augment``: a batch
    transform or False). Other keywords go to :func:`slimkit.train.fit`. History losses exclude
    the feature term.

    >>> import slimkit as sk
    >>> data = sk.data.load("digits")
    >>> teacher = sk.zoo.create_for("resnet_cifar", data, depth=8)  # trained elsewhere
    >>> student = sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.25)
    >>> cfg = sk.train.DistillConfig(features={"layer3": "layer3"})
    >>> history = distill(student, teacher, data, cfg, epochs=1, progress=False)
    """
    config = config or DistillConfig()
    check_pair(student, teacher, count_params)
    if hasattr(data, "train"):
        train, val = data.train, val if val is not None else data.val
        aug = data.augment if augment is True else (augment or None)
    else:
        train, aug = data, augment if callable(augment) else None
    teacher.eval()
    run = functools.partial(fit, val=val, epochs=epochs, lr=lr, seed=seed, augment=aug, progress=progress, **fit_kwargs)
    if not config.features:
        return run(student, train, teacher=teacher, distill=config)
    example = next(iter(train))[0][:8]
    torch.manual_seed(seed)
    teacher.to(resolve_device(fit_kwargs.get("device"), student))  # fit moves the wrapper, not this teacher
    wrapper = FeatureDistiller(student, teacher, config.features, example, config.beta)
    history = run(wrapper, train, teacher=wrapper.teacher_logits, distill=dataclasses.replace(config, features=None))
    student.eval()
    return history


def student_for(
    teacher: nn.Module, student: str | nn.Module | None, data: Any | None = None, **derive: Any
) -> nn.Module:
    """Resolve a student: a module as given, a ``"name:key=value"`` spec, or derived from the teacher."""
    if isinstance(student, nn.Module):
        return student
    if isinstance(student, str):
        built = parse_student(student, data)
    else:
        built = derive_student(teacher, **derive)
    arch = arch_of(teacher) or {}
    if "input" in arch and "input" not in (arch_of(built) or {}):
        set_arch(built, {**arch_of(built), "input": copy.deepcopy(arch["input"])})
    if data is not None:
        record_input(built, data.example)
    return built


def _pruned_at_init(model: nn.Module, width: float, depth: int | None, example: torch.Tensor | None) -> nn.Module:
    from slimkit.core.model import example_input
    from slimkit.prune import ChannelPruneConfig, prune_channels

    if depth is not None:
        raise SlimkitError(f"depth applies to zoo models only; {type(model).__name__} can only be narrowed (width)")
    student = copy.deepcopy(model)
    x = example if example is not None else example_input(student)
    if x is None:
        raise SlimkitError(f"pass example= (an input batch) so that {type(model).__name__} can be traced and pruned")
    prune_channels(student, ChannelPruneConfig(ratio=1 - width, importance="l1"), x)
    for m in student.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return student
