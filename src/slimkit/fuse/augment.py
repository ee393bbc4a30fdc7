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

__all__ = ["random_affine"]


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
