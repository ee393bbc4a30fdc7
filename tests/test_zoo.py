from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimkitError, UnknownNameError
from slimkit.evaluate import count_macs, count_params
from tests.conftest import zoo_example

# Multiply-accumulates per sample worked out by hand from the layer shapes.
HAND_MACS = {
    # conv1 26*26*64*9 + conv2 11*11*64*(64*9) + fc1 1600*1024 + fc2 1024*10
    "seed_cnn": 26 * 26 * 64 * 9 + 11 * 11 * 64 * 576 + 1600 * 1024 + 1024 * 10,
    # conv1 28*28*6*25 + conv2 10*10*16*150 + 400*120 + 120*84 + 84*10
    "lenet5": 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10,
    # LSTM: 4 gates * 128 hidden * (64 input + 128 state) per step, 32 steps; head 128*2
    "text_lstm": 4 * 128 * (64 + 128) * 32 + 128 * 2,
    # per block: q,k,v,out 4*32*64*64 + scores and mixing 2*32*32*64 + FFN 2*32*64*128; 2 blocks; head 64*2
    "text_transformer": 2 * (4 * 32 * 64 * 64 + 2 * 32 * 32 * 64 + 2 * 32 * 64 * 128) + 64 * 2,
    # pairwise dots 4*4*16, MLP (4*16 + 6) -> 128 -> 64 -> 2
    "recsys_mlp": 4 * 4 * 16 + 70 * 128 + 128 * 64 + 64 * 2,
}


def layer_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Independent count for conv/linear-only models: output elements x (in / groups) x kernel."""
    total = [0]

    def hook(m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total[0] += out[0].numel() * k
        elif isinstance(m, nn.Linear):
            total[0] += out[0].numel() * m.in_features
        elif isinstance(m, nn.ConvTranspose2d):  # every input element meets out_channels x kernel weights
            total[0] += _inp[0][0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in handles:
        h.remove()
    return total[0]


def test_seed_cnn_is_the_briefs_model() -> None:
    model = sk.zoo.create("seed_cnn")
    assert count_params(model) == 1_687_242
    kinds = [type(m).__name__ for m in model]
    assert kinds == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert model.conv1.out_channels == 64 and model.fc1.out_features == 1024


@pytest.mark.parametrize("name", sk.zoo.list())
def test_every_zoo_model_runs_and_macs_match_hand_count(name: str) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create(name).eval()
    x = zoo_example(name)
    out = model(x)
    assert out.shape[0] == len(x) and torch.isfinite(out).all()
    expected = HAND_MACS[name] if name in HAND_MACS else layer_macs(model, x)
    assert count_macs(model, x) == expected


def test_resnet_and_mobilenet_options() -> None:
    small = sk.zoo.create("resnet_cifar", depth=8, width=0.5, in_channels=1, num_classes=4)
    assert small(torch.rand(2, 1, 20, 20)).shape == (2, 4)
    assert count_params(sk.zoo.create("resnet_cifar", depth=56)) > count_params(sk.zoo.create("resnet_cifar"))
    with pytest.raises(SlimkitError, match="6n \\+ 2"):
        sk.zoo.create("resnet_cifar", depth=21)
    m = sk.zoo.create("mobilenet_v2", width=0.35, in_channels=1, num_classes=10, stem_stride=1)
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    depthwise = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)


def test_text_models_ignore_padding() -> None:
    torch.manual_seed(0)
    for name, kwargs in [
        ("text_lstm", {}),
        ("text_lstm", {"cell": "gru", "bidirectional": True}),
        ("text_transformer", {}),
    ]:
        model = sk.zoo.create(name, **kwargs).eval()
        x = torch.randint(1, 1000, (2, 32))
        x[:, 10:] = 0
        shorter = x[:, :10]
        if name == "text_transformer":  # attention masks padding exactly
            assert torch.allclose(model(x), model(shorter), atol=1e-5)
        assert torch.isfinite(model(torch.zeros(2, 32, dtype=torch.long))).all()  # all-padding rows


def test_macs_for_torch_recurrent_and_attention_layers() -> None:
    """The layers flop_counter misses: RNN cells and nn.TransformerEncoder's fused fast path."""
    gru = nn.GRU(16, 32, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.rand(3, 10, 16)
    per_step = 3 * 32 * (16 + 32) + 3 * 32 * (64 + 32)  # layer 1 input 16, layer 2 input 2*32
    assert count_macs(gru, x) == 2 * per_step * 10
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2).eval()
    t = 32
    per_layer = 4 * t * 64 * 64 + 2 * t * t * 64 + 2 * t * 64 * 128
    assert count_macs(enc, torch.rand(2, t, 64)) == 2 * per_layer
    mha = nn.MultiheadAttention(64, 4, batch_first=True)

    class SelfAttn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x)[0]

    assert count_macs(SelfAttn(), torch.rand(2, t, 64)) == 4 * t * 64 * 64 + 2 * t * t * 64


def test_create_errors() -> None:
    with pytest.raises(UnknownNameError, match="seed_cnn"):
        sk.zoo.create("seed_cn")
    with pytest.raises(SlimkitError, match="does not take \\['widht'\\]"):
        sk.zoo.create("mobilenet_v2", widht=0.5)


def test_create_for_shapes_model_to_data(digits: sk.data.Dataset) -> None:
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8)
    assert model.conv1.in_channels == 1 and model(digits.example).shape == (4, 10)
    with pytest.raises(SlimkitError, match="seed_cnn needs inputs of at least 10x10"):
        sk.zoo.create_for("seed_cnn", digits)
    rec = sk.data.load("synthetic-recsys")
    model = sk.zoo.create_for("recsys_mlp", rec)
    assert [e.num_embeddings for e in model.embeddings] == rec.meta["cardinalities"]
