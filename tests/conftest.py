from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
import torch

import slimkit as sk
from slimkit.cli import main

CliRun = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True, scope="session")
def _quick_latency_turns() -> Iterator[None]:
    """Tests never assert timings: each turn of a latency measurement opens with one untimed call
    instead of 50 ms of them (hundreds of turns across the suite)."""
    from slimkit.evaluate import cost

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cost, "SETTLE_S", 0.0)
        yield


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CliRun:
    """Run the ``slimkit`` command line in-process: ``cli("train", ...)`` -> (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: object) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["slimkit", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        return int(exc.value.code or 0), out, err

    return run


@pytest.fixture(scope="session")
def mnist() -> sk.data.Dataset:
    return sk.data.load("mnist5k")


@pytest.fixture(scope="session")
def mini(mnist: sk.data.Dataset) -> sk.data.Dataset:
    """1,200 / 300 / 300 real MNIST digits: small enough for seconds-long runs."""
    s = mnist.splits
    splits = {
        "train": (s["train"][0][:1200], s["train"][1][:1200]),
        "val": (s["val"][0][:300], s["val"][1][:300]),
        "test": (s["test"][0][:300], s["test"][1][:300]),
    }
    return sk.data.Dataset(name="mnist-mini", splits=splits, classes=mnist.classes, meta=dict(mnist.meta))


@pytest.fixture(scope="session")
def digits() -> sk.data.Dataset:
    return sk.data.load("digits")


@pytest.fixture(scope="session")
def trained_cnn(mnist: sk.data.Dataset) -> torch.nn.Module:
    """seed_cnn after 3 quick epochs on mnist5k: a real, non-trivial model for export checks."""
    torch.manual_seed(0)
    model = sk.zoo.create_for("seed_cnn", mnist)
    sk.train.fit(model, mnist.train, epochs=3, progress=False)
    return model


SMALL = {"depth": 8, "width": 0.5}  # resnet_cifar small enough for member-training tests


# One input batch per zoo model, with the shapes the model's defaults expect.
def zoo_example(name: str, batch: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if name in ("seed_cnn", "lenet5"):
        return torch.rand(batch, 1, 28, 28, generator=g)
    if name in ("resnet_cifar", "mobilenet_v2"):
        return torch.rand(batch, 3, 32, 32, generator=g)
    if name.startswith("text_"):
        x = torch.randint(1, 1000, (batch, 32), generator=g)
        x[0, 20:] = 0  # some padding
        return x
    if name == "unet":
        return torch.rand(batch, 1, 64, 64, generator=g)
    if name == "recsys_mlp":
        return torch.stack([torch.randint(0, n, (batch,), generator=g) for n in (1000, 500, 20, 4)], dim=1)
    raise KeyError(name)
