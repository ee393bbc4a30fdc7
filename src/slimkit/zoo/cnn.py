"""Small plain CNNs: the design brief's ``seed_cnn`` and LeNet-5."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.zoo.registry import register


def _conv_out(size: int, kernel: int, padding: int = 0) -> int:
    return size + 2 * padding - kernel + 1


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


def _check_side(name: str, side: int, input_size: int, minimum: int) -> None:
    if side < 1:
        raise SlimkitError(f"{name} needs inputs of at least {minimum}x{minimum} pixels, got input_size={input_size}")


@register("seed_cnn", limits={"width": (0.001, 1000.0)})
def seed_cnn(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0) -> nn.Sequential:
    """The design brief's CNN, layer for layer (Keras "valid" convolutions, logits out):

    Conv 64 3x3 ReLU -> MaxPool 2 -> Conv 64 3x3 ReLU -> MaxPool 2 -> Flatten -> Dense 1024 ReLU
    -> Dense ``num_classes``. For 28x28x1 inputs: 1,687,242 parameters. ``width`` scales every
    hidden layer (64 filters and 1024 units at 1.0), e.g. for distillation students.
    """
    side = _conv_out(_conv_out(input_size, 3) // 2, 3) // 2  # 28 -> 26 -> 13 -> 11 -> 5
    _check_side("seed_cnn", side, input_size, 10)
    c, hidden = _scaled(64, width), _scaled(1024, width)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, c, 3),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(c, c, 3),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(c * side * side, hidden),
            relu3=nn.ReLU(),
            fc2=nn.Linear(hidden, num_classes),
        )
    )


@register("lenet5", limits={"width": (0.001, 1000.0)})
def lenet5(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0) -> nn.Sequential:
    """LeNet-5 with ReLU and max pooling (padding 2 on the first conv so 28x28 works as 32x32)."""
    side = _conv_out(_conv_out(input_size, 5, padding=2) // 2, 5) // 2  # 28 -> 28 -> 14 -> 10 -> 5
    _check_side("lenet5", side, input_size, 12)
    c1, c2, h1, h2 = (_scaled(n, width) for n in (6, 16, 120, 84))
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, c1, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(c1, c2, 5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(c2 * side * side, h1),
            relu3=nn.ReLU(),
            fc2=nn.Linear(h1, h2),
            relu4=nn.ReLU(),
            fc3=nn.Linear(h2, num_classes),
        )
    )
