"""Training-time distortions for image members: small random rotations, scalings and shifts.

Members of an ensemble of digit classifiers gain from being trained on mildly distorted digits
(Simard et al. 2003; Ciresan et al. 2011, committees of CNNs trained on affine / elastic
distortions of MNIST): each member sees different draws, the training set is effectively larger,
and the members overfit less and less alike. Labels are unchanged: a digit rotated by a few
degrees is the same digit (rotations are kept small so that a 6 never becomes a 9).

>>> import torch
>>> from slimkit.fuse.augment import random_affine
>>> distort = random_affine()
>>> x = torch.rand(8, 1, 28, 28)
>>> distort(x).shape
torch.Size([8, 1, 28, 28])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from slimkit.core.errors import SlimkitError

__all__ = ["elastic", "random_affine"]


def random_affine(
    max_rotation: float = 10.0, max_scale: float = 0.1, max_shift: float = 2.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch transform: rotate each image by up to ``max_rotation`` degrees, scale it by up to
    ``1 +- max_scale`` and shift it by up to ``max_shift`` pixels (bilinear, zero fill).

    Draws come from torch's global generator, so ``slimkit.train.fit(seed=...)`` makes them
    reproducible. Inputs are image batches (B, C, H, W); shape and dtype are kept, and values stay
    within the input's range (bilinear interpolation of zero-filled images).
    """
    if max_rotation < 0 or max_shift < 0 or not 0 <= max_scale < 1:
        raise SlimkitError(
            f"random_affine needs max_rotation >= 0, max_shift >= 0 and 0 <= max_scale < 1, got "
            f"{max_rotation}, {max_shift}, {max_scale}"
        )

    def distort(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if x.dim() != 4:
            raise SlimkitError(f"random_affine needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        angle = (torch.rand(b) * 2 - 1) * math.radians(max_rotation)  # (B,)
        scale = 1 + (torch.rand(b) * 2 - 1) * max_scale  # (B,)
        shift = (torch.rand(b, 2) * 2 - 1) * max_shift  # (B, 2) in pixels (x, y)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # theta maps output coordinates to input coordinates, both in [-1, 1]
        theta = torch.stack(
            [
                torch.stack([cos, -sin, -2 * shift[:, 0] / w], dim=1),
                torch.stack([sin, cos, -2 * shift[:, 1] / h], dim=1),
            ],
            dim=1,
        )  # (B, 2, 3)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    distort.__name__ = f"random_affine({max_rotation:g}, {max_scale:g}, {max_shift:g})"
    return distort


def elastic(alpha: float = 34.0, sigma: float = 4.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch transform: Simard et al.'s (2003) elastic distortion of each image.

    Every pixel gets a random displacement drawn uniformly from [-1, 1] per axis; the field is
    smoothed by a Gaussian of standard deviation ``sigma`` pixels and scaled by ``alpha`` pixels,
    then the image is resampled there (bilinear, zero fill). Simard et al. used ``alpha=34,
    sigma=4`` on 28 x 28 digits (the defaults): displacements of about 1.4 pixels (standard
    deviation) that vary smoothly across the digit, so strokes bend like handwriting rather than
    the whole digit moving. ``alpha=0`` leaves images unchanged.

    Draws come from torch's global generator (reproducible under ``fit(seed=...)``); inputs are
    image batches (B, C, H, W), shape and dtype are kept.

    >>> import torch
    >>> from slimkit.fuse.augment import elastic
    >>> elastic()(torch.rand(8, 1, 28, 28)).shape
    torch.Size([8, 1, 28, 28])
    """
    if alpha < 0 or sigma <= 0:
        raise SlimkitError(f"elastic needs alpha >= 0 and sigma > 0, got {alpha}, {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (2r+1,) normalised: the blur keeps the field's mean

    def distort(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if x.dim() != 4:
            raise SlimkitError(f"elastic needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        field = torch.rand(b * 2, 1, h, w) * 2 - 1  # (2B, 1, H, W): dx and dy of every image
        k = kernel.to(field.dtype)
        field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="constant"), k.view(1, 1, 1, -1))  # along W
        field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="constant"), k.view(1, 1, -1, 1))  # along H
        shift = alpha * field.view(b, 2, h, w)  # (B, 2, H, W) displacement in pixels (x, y)
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)  # pixel centres in [-1, 1] (align_corners=False)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
        grid = torch.stack([gx + 2 * shift[:, 0] / w, gy + 2 * shift[:, 1] / h], dim=-1)  # (B, H, W, 2)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)

    distort.__name__ = f"elastic({alpha:g}, {sigma:g})"
    return distort
