"""Where training runs: devices, mixed precision, and transforms that keep the model's device and dtype."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimkit as sk
from slimkit.compress import LowRankConfig
from slimkit.core.device import check_amp, resolve_device, to_device
from slimkit.core.errors import SlimkitError
from slimkit.evaluate import count_params
from slimkit.fuse.soup import uniform_soup
from slimkit.optimize import FineTuneConfig, Recipe, SensitivityPruneConfig, Target, optimize
from slimkit.prune import ChannelPruneConfig
from slimkit.simplify import FoldConfig
from slimkit.task import Classification
from tests.conftest import CliRun

CPU = torch.device("cpu")
NO_CUDA = not torch.cuda.is_available()


def test_resolve_device_names_what_is_missing() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device(None, nn.Linear(2, 2).double()) == CPU  # None: where the model is
    if NO_CUDA:
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(SlimkitError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(SlimkitError, match="no CUDA device"):
            resolve_device("cuda:1")
    for bad in ("tpu", "gpu", "cpu:0", "cuda:x", ""):
        with pytest.raises(SlimkitError, match="unknown device"):
            resolve_device(bad)


def test_check_amp() -> None:
    assert check_amp(None, CPU) is None and check_amp("none", CPU) is None
    assert check_amp("bf16", CPU) == "bf16"
    with pytest.raises(SlimkitError, match="fp16 mixed precision needs a CUDA device"):
        check_amp("fp16", CPU)
    with pytest.raises(SlimkitError, match="unknown mixed precision"):
        check_amp("fp8", CPU)


def test_to_device_moves_nested_batches() -> None:
    batch = {"ids": torch.zeros(2, 3, dtype=torch.long), "extra": (torch.ones(2), "text")}
    moved = to_device(batch, CPU)
    assert moved["ids"] is batch["ids"] and moved["extra"][1] == "text"  # already there: no copy


def _classifier_data(n: int = 256, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32)


def test_fit_bf16_autocasts_the_forward_and_keeps_fp32_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype) if m.training else None)
    data = _classifier_data()
    history = sk.train.fit(model, data, val=data, epochs=4, lr=1e-2, device="cpu", amp="bf16", progress=False)
    assert set(seen) == {torch.bfloat16}  # the training forward ran in bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights did not
    assert history.best_val is not None and history.best_val > 0.9
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


def test_layers_on_another_device_are_one_line_errors() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2).to("meta"))  # the second layer elsewhere
    with pytest.raises(SlimkitError, match="weight 1.weight is on the meta device"):
        sk.train.fit(model, _classifier_data(), epochs=1, progress=False)
    with pytest.raises(SlimkitError, match="evaluation failed: the model and its inputs are on different devices"):
        Classification().evaluate(model, _classifier_data())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--device", "tpu"), "unknown device 'tpu'"),
        (("--amp", "fp16", "--device", "cpu"), "fp16 mixed precision needs a CUDA device"),
        (("--amp", "int3"), "unknown mixed precision"),
    ]
    + ([(("--device", "cuda"), "no CUDA device")] if NO_CUDA else []),
)
def test_cli_device_and_amp_errors(cli: CliRun, tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("resnet_cifar", num_classes=10, in_channels=1, depth=8)
    sk.save(model, tmp_path / "m", example=torch.zeros(2, 1, 8, 8))
    code, out, err = cli(
        "optimize", tmp_path / "m", "-d", "digits", "--target", "macs=0.5", "-o", tmp_path / "run", *flags
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(NO_CUDA, reason="no CUDA device here")]


@pytest.mark.parametrize(("device", "amp"), [("cpu", "bf16"), pytest.param("cuda", "fp16", marks=ON_GPU)])
def test_optimize_on_an_explicit_device_in_mixed_precision(
    digits: sk.data.Dataset, monkeypatch: pytest.MonkeyPatch, device: str, amp: str
) -> None:
    amps: list[str | None] = []
    real = sk.train.fit

    def fit(*args: object, **kwargs: object) -> sk.train.History:
        amps.append(kwargs.get("amp"))  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    sk.train.fit(model, digits.train, epochs=3, lr=3e-3, progress=False)
    before = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(sk.train, "fit", fit)
    recipe = Recipe((SensitivityPruneConfig(target_macs=0.5, probe_ratios=(0.5,)), FineTuneConfig(epochs=2, lr=1e-3)))
    result = optimize(
        model, digits, Target(macs=0.5, max_drop=5.0), recipe=recipe, quantize=False, device=device, amp=amp
    )
    assert result.target_met
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.dtype == torch.float32 and p.device.type == device for p in result.model.parameters())
    assert amps == [amp]  # the recovery fine-tuning ran in mixed precision


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=ON_GPU)])
def test_transforms_keep_a_float64_model_float64(digits: sk.data.Dataset, device: str) -> None:
    """Analysis, pruning, low-rank, folding and fusion create no tensor of another dtype or device than
    the model's: run on a float64 copy, every parameter and buffer stays float64 (and on the model's
    device) and the outputs match the float32 run."""
    torch.manual_seed(0)
    base = sk.zoo.create_for("resnet_cifar", digits, depth=8).eval().to(device)
    x = digits.splits["val"][0][:64].to(device)
    steps = [
        ChannelPruneConfig(ratio=0.5),
        FoldConfig(),
        LowRankConfig(method="pca-factor", ratio=0.5, layers=("layer3.0.conv2", "fc")),
        LowRankConfig(ratio=0.5, layers=("re:layer[12].*",)),
    ]
    single, double = copy.deepcopy(base), copy.deepcopy(base).double()
    for cfg in steps:
        single = sk.apply_(single, cfg, example_inputs=x)
        double = sk.apply_(double, cfg, example_inputs=x.double())
        tensors = [*double.parameters(), *double.buffers()]
        assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point()), type(cfg).__name__
        assert all(t.device.type == device for t in tensors), type(cfg).__name__
    assert isinstance(double.fc, nn.Sequential) and isinstance(double.layer1[0].conv1, nn.Sequential)  # factorized
    assert count_params(double) < 0.5 * count_params(base)
    with torch.no_grad():
        assert torch.allclose(double(x.double()).float(), single(x), atol=1e-4, rtol=1e-4)
    soup = uniform_soup([double, copy.deepcopy(double)])
    assert all(t.dtype == torch.float64 for t in soup.state_dict().values() if t.is_floating_point())
    with torch.no_grad():
        assert torch.allclose(soup(x.double()), double(x.double()))


def test_cli_train_and_distill_take_device_and_amp(cli: CliRun, tmp_path: Path) -> None:
    args = ("-m", "resnet_cifar", "-d", "digits", "-a", "depth=8", "--epochs", "1", "-o", tmp_path / "t")
    code, out, err = cli("train", *args, "--device", "cpu", "--amp", "bf16")
    assert code == 0, err
    assert sk.load(tmp_path / "t").conv1.weight.dtype == torch.float32
    code, out, err = cli(
        "distill", tmp_path / "t", "-d", "digits", "--epochs", "1", "-o", tmp_path / "s", "--amp", "fp16"
    )
    assert code == 2 and "fp16 mixed precision needs a CUDA device" in err and not (tmp_path / "s").exists()
