"""Image-folder datasets: one sub-folder per class, decoded batch by batch, bad files refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import slimkit as sk
from slimkit.core.errors import DataError
from tests.conftest import CliRun


def _folder(root: Path, digits: sk.data.Dataset, per_class: int = 20, classes: int = 3) -> Path:
    x, y = digits.splits["train"]
    for label in range(classes):
        (root / f"class_{label}").mkdir(parents=True)
        rows = (y == label).nonzero().flatten()[:per_class]
        for i, row in enumerate(rows):
            pixels = (x[row, 0].numpy() * 255).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / f"class_{label}" / f"{i:03d}.png")
    (root / "notes.txt").write_text("not a class folder")
    return root


def test_image_folder_splits_per_class_and_reads_the_images(
    tmp_path: Path, digits: sk.data.Dataset, cli: CliRun
) -> None:
    root = _folder(tmp_path / "imgs", digits)
    data = sk.data.load(root)
    sizes = {s: len(getattr(data, s).dataset) for s in ("train", "val", "test")}
    assert sizes == {"train": 48, "val": 6, "test": 6}  # 10% + 10% of each class's 20 images
    images, labels = next(iter(data.val))
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    first = data.val.dataset.files[0]
    expected = np.asarray(Image.open(first), dtype=np.float32) / 255
    assert torch.allclose(data.val.dataset[0][0][0], torch.from_numpy(expected))
    again = sk.data.load(root)  # seeded: the same split
    assert again.test.dataset.files == data.test.dataset.files
    resized = sk.data.load(root, size=(16, 12))
    assert next(iter(resized.train))[0].shape[1:] == (1, 12, 16)
    ckpt = sk.save(sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.5), tmp_path / "cnn")
    code, out, _ = cli("evaluate", ckpt, "-d", root)
    assert code == 0 and "accuracy" in out.lower()


def test_image_folder_errors_are_one_line(tmp_path: Path, digits: sk.data.Dataset, cli: CliRun) -> None:
    from slimkit.data.folder import image_folder

    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.new("L", (4, 4)).save(one / "only" / "a.png")
    with pytest.raises(DataError, match="1 class sub-folder"):
        image_folder(one)
    root = _folder(tmp_path / "imgs", digits, per_class=5)
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png is not a readable image"):  # when met, wherever it is
        for _ in image_folder(root, val=0, test=0).train:
            pass
    ckpt = sk.save(sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.5), tmp_path / "cnn")
    code, out, err = cli("evaluate", ckpt, "-d", root)
    assert code == 2 and "broken.png is not a readable image" in err and "Traceback" not in err + out
