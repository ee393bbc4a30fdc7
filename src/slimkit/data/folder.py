"""Image classification data from a folder: one sub-folder per class, images read on demand.

``root/cat/001.jpg``, ``root/dog/002.png`` ... become :class:`~slimkit.data.Loaders` whose
batches are ``(images, labels)``: images as float tensors in ``[0, 1]`` of shape ``(N, C, H, W)``
(``C`` 1 for grey-scale files, else 3), every image resized to ``size`` (default: the first
image's), labels the class index in sorted folder-name order. Files are split per class into
train / validation / test in a seeded order and decoded batch by batch: memory does not grow with
the folder. What ``slimkit ... -d FOLDER`` reads; needs Pillow (``pip install 'slimkit[images]'``).

A file that is not an image, is corrupt or declares more than ``MAX_PIXELS`` pixels (a
decompression bomb) stops the run with one line naming the file.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from slimkit.core.errors import DataError
from slimkit.core.optional import require
from slimkit.data.base import Loaders

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "ImageFiles", "image_folder", "is_image_folder"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 64_000_000  # about 8000 x 8000: larger declared sizes are refused before decoding
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(path: Path) -> bool:
    """A directory whose sub-folders hold image files (what :func:`image_folder` reads)."""
    return path.is_dir() and any(d.is_dir() and _images(d) for d in path.iterdir())


def _open(path: Path) -> Any:
    image = require("PIL.Image", extra="images", package="pillow")
    try:
        img = image.open(path)
        if img.width * img.height > MAX_PIXELS:
            raise DataError(
                f"{path}: {img.width} x {img.height} pixels is more than slimkit reads ({MAX_PIXELS:,}); "
                "resize the image or remove it"
            )
        img.load()
    except DataError:
        raise
    except Exception as exc:  # PIL raises its own types (UnidentifiedImageError, OSError, DecompressionBombError)
        raise DataError(f"{path} is not a readable image ({type(exc).__name__}); fix or remove the file") from None
    return img


class ImageFiles(torch.utils.data.Dataset):
    """Map-style dataset of ``(image, label)`` read from ``files`` when asked (see the module doc)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], size: tuple[int, int], channels: int) -> None:
        self.files, self.labels, self.size, self.channels = list(files), list(labels), size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = _open(self.files[i]).convert("L" if self.channels == 1 else "RGB")
        if img.size != self.size:
            img = img.resize(self.size)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        x = x[None] if self.channels == 1 else x.permute(2, 0, 1)
        return x.contiguous(), self.labels[i]


def image_folder(
    root: str | Path,
    *,
    size: tuple[int, int] | None = None,
    val: float = 0.1,
    test: float = 0.1,
    batch_size: int = 64,
    seed: int = 0,
) -> Loaders:
    """:class:`~slimkit.data.Loaders` over ``root``'s class sub-folders (see the module doc); ``size``
    is ``(width, height)``; ``val`` / ``test`` the share of each class's files in those splits."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give a folder with one sub-folder of images per class")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"val and test are shares of each class's images with val + test < 1, got {val}, {test}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _images(d))
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class sub-folder(s) with images; give one sub-folder per class (at least 2)"
        )
    rng = random.Random(seed)
    splits: dict[str, tuple[list[Path], list[int]]] = {s: ([], []) for s in ("train", "val", "test")}
    for label, name in enumerate(classes):
        files = _images(root / name)
        rng.shuffle(files)
        n_test, n_val = round(test * len(files)), round(val * len(files))
        parts = {"test": files[:n_test], "val": files[n_test : n_test + n_val], "train": files[n_test + n_val :]}
        for split, part in parts.items():
            splits[split][0].extend(part)
            splits[split][1].extend([label] * len(part))
    first = _open(splits["train"][0][0] if splits["train"][0] else next(iter(_images(root / classes[0]))))
    size = tuple(size) if size is not None else first.size
    channels = 1 if first.mode in GREY_MODES else 3

    def loader(split: str) -> DataLoader | None:
        files, labels = splits[split]
        if not files:
            return None
        data = ImageFiles(files, labels, size, channels)
        return DataLoader(
            data, batch_size=batch_size, shuffle=split == "train", generator=torch.Generator().manual_seed(seed)
        )

    shown = ", ".join(classes[:5]) + ("..." if len(classes) > 5 else "")
    return Loaders(
        train=loader("train"),
        val=loader("val"),
        test=loader("test"),
        task="classification",
        name=root.name,
        source=f"image folder {root} ({len(classes)} classes: {shown})",
    )
