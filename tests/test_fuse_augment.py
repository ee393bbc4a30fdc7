"""Member augmentations: random affine maps, Simard et al.'s elastic distortion, one augmentation per member."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.fuse import elastic, random_affine, train_members
from tests.conftest import SMALL


def _displacement(distort, size: int = 28, batch: int = 16) -> torch.Tensor:  # noqa: ANN001
    """The x displacement (pixels) a transform applies, read off a horizontal ramp: (B, H - 12, W - 12)."""
    ramp = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size).expand(batch, 1, size, size)
    out = distort(ramp.contiguous())
    return (out - ramp)[:, 0, 6:-6, 6:-6]  # away from the border, where zero fill would show


def _distorted_blocks(distort) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Images of one bright block, ``distort``-ed; checks what every distortion must keep.
    Returns the images, the distorted images and the ink kept per image."""
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 8:20, 10:18] = 1.0  # a bright block well inside the frame
    torch.manual_seed(0)
    a = distort(x)
    torch.manual_seed(0)
    assert torch.equal(a, distort(x))  # draws come from torch's seeded generator
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 + 1e-6
    assert not torch.equal(a[0], a[1])  # each image gets its own draw
    with pytest.raises(sk.SlimkitError, match="image batches"):
        distort(torch.zeros(4, 28))
    return x, a, a.sum((1, 2, 3)) / x.sum((1, 2, 3))


def test_random_affine_keeps_shape_range_and_is_seeded() -> None:
    x, _, mass = _distorted_blocks(random_affine())
    assert torch.all((mass > 0.75) & (mass < 1.3))  # scale within +-10%: area within about +-21%
    assert torch.allclose(random_affine(0.0, 0.0, 0.0)(x), x, atol=1e-5)
    with pytest.raises(sk.SlimkitError, match="max_scale"):
        random_affine(max_scale=1.5)


def test_elastic_keeps_shape_range_and_is_seeded() -> None:
    x, a, mass = _distorted_blocks(elastic())
    assert not torch.allclose(a, x, atol=1e-3)
    # a smooth warp moves ink: locally it stretches or squeezes strokes, on average it keeps the ink
    assert torch.all((mass > 0.4) & (mass < 1.8)) and 0.85 < float(mass.mean()) < 1.15
    assert torch.allclose(elastic(alpha=0.0)(x), x, atol=1e-5)
    with pytest.raises(sk.SlimkitError, match="sigma > 0"):
        elastic(sigma=0.0)


def test_elastic_displacements_are_smooth_and_of_simards_size() -> None:
    torch.manual_seed(0)
    smooth = _displacement(elastic())  # alpha 34, sigma 4: Simard et al.'s MNIST setting
    assert 0.7 < float(smooth.std()) < 2.5  # about 1.4 pixels
    # neighbouring pixels move almost together: the field is smooth, the strokes bend
    step = (smooth[..., 1:] - smooth[..., :-1]).abs().mean() / smooth.abs().mean()
    assert float(step) < 0.3
    torch.manual_seed(0)
    rough = _displacement(elastic(alpha=2.0, sigma=0.3))  # hardly smoothed: pixels jitter independently
    assert float((rough[..., 1:] - rough[..., :-1]).abs().mean() / rough.abs().mean()) > 0.8


def test_each_member_gets_its_own_augmentation(digits: sk.data.Dataset) -> None:
    calls = [0, 0]

    def spy(i: int):  # noqa: ANN202
        def count(x: torch.Tensor) -> torch.Tensor:
            calls[i] += 1
            return x

        return count

    batches = len(digits.train)
    train_members("resnet_cifar", digits, n=2, model_args=SMALL, from_start=False, epochs=1, augment=[spy(0), spy(1)])
    assert calls == [batches, batches]
    calls[:] = [0, 0]
    train_members("resnet_cifar", digits, n=2, model_args=SMALL, start_epochs=1, epochs=1, augment=(spy(0), spy(1)))
    assert calls == [2 * batches, batches]  # the shared start uses the first member's augmentation
    run = train_members(
        "resnet_cifar", digits, n=2, model_args=SMALL, from_start=False, epochs=1, augment=["elastic", False]
    )
    assert len(run.members) == 2
    with pytest.raises(sk.SlimkitError, match="one augmentation per member: expected 3, got 2"):
        train_members("resnet_cifar", digits, n=3, from_start=False, augment=["affine", "elastic"])
    with pytest.raises(sk.SlimkitError, match="unknown augmentation 'warp'"):
        train_members("resnet_cifar", digits, n=2, from_start=False, augment=["affine", "warp"])
    text = sk.data.load("synthetic-text")
    with pytest.raises(sk.SlimkitError, match="augment='elastic' distorts images"):
        train_members("text_lstm", text, n=1, from_start=False, augment="elastic")
