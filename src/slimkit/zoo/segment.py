"""A small U-Net for dense prediction (segmentation): a class score per pixel."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.zoo.registry import register


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Ronneberger et al. (2015), shrunk: ``depth`` 2x down-samplings, channels doubling from ``width``;
    the decoder up-samples with transposed convolutions and concatenates the encoder's features."""

    def __init__(self, in_channels: int, num_classes: int, width: int, depth: int) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0])])
        self.down.extend(_block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.merge = nn.ModuleList(_block(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K, H, W)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge), strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


@register("unet", limits={"width": (1, 512), "depth": (1, 6)})
def unet(in_channels: int = 1, num_classes: int = 2, input_size: int = 64, width: int = 16, depth: int = 2) -> UNet:
    """A U-Net with ``depth`` levels below the first (input sides must divide by ``2**depth``)."""
    if input_size % 2**depth:
        raise SlimkitError(f"unet with depth={depth} needs input sides divisible by {2**depth}, got {input_size}")
    return UNet(in_channels, num_classes, width, depth)
