from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import ModelFileError, SlimkitError
from slimkit.core.surgery import build_module, module_spec, replace_module, set_module_attr
from slimkit.core.transform import select
from tests.conftest import zoo_example


def test_recorded_changes_replay_on_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("seed_cnn").eval()
    # shrink fc1 to 256 units (a stand-in for what pruning does) and drop pool1's successor shapes
    replace_module(model, "fc1", nn.Sequential(nn.Linear(1600, 64, bias=False), nn.Linear(64, 256)))
    replace_module(model, "fc2", nn.Linear(256, 10))
    replace_module(model, "relu3", nn.GELU(approximate="tanh"))
    x = zoo_example("seed_cnn")
    sk.save(model, tmp_path / "ckpt", example=x)
    spec = json.loads((tmp_path / "ckpt" / "spec.json").read_text())
    assert [c["path"] for c in spec["arch"]["changes"]] == ["fc1", "fc2", "relu3"]
    loaded = sk.load(tmp_path / "ckpt")
    assert torch.equal(model(x), loaded(x))
    assert loaded.fc1[0].out_features == 64


def test_set_attr_is_recorded(tmp_path: Path) -> None:
    model = sk.zoo.create("text_transformer", heads=4)
    set_module_attr(model, "blocks.0.attn", "heads", 2)
    replace_module(model, "blocks.0.attn.q_proj", nn.Linear(64, 32))
    replace_module(model, "blocks.0.attn.k_proj", nn.Linear(64, 32))
    replace_module(model, "blocks.0.attn.v_proj", nn.Linear(64, 32))
    replace_module(model, "blocks.0.attn.out_proj", nn.Linear(32, 64))
    x = zoo_example("text_transformer")
    sk.save(model.eval(), tmp_path / "ckpt")
    loaded = sk.load(tmp_path / "ckpt")
    assert loaded.blocks[0].attn.heads == 2
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(SlimkitError, match="no plain attribute"):
        set_module_attr(model, "blocks.0.attn", "q_proj", 3)


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1, bias=False),
        nn.Conv2d(8, 8, 3, padding="same", groups=8),
        nn.BatchNorm2d(8, eps=1e-3),
        nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True, proj_size=4),
        nn.GRU(8, 16),
        nn.Embedding(10, 4, padding_idx=0),
        nn.MultiheadAttention(16, 4, batch_first=True),
        nn.LayerNorm(16),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Dropout(0.1), nn.Identity())),
    ],
)
def test_module_spec_round_trip(module: nn.Module) -> None:
    rebuilt = build_module(json.loads(json.dumps(module_spec(module))))
    assert repr(rebuilt) == repr(module)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}


def test_unlisted_modules_are_refused() -> None:
    with pytest.raises(SlimkitError, match="cannot record a Bilinear"):
        replace_module(sk.zoo.create("seed_cnn"), "fc2", nn.Bilinear(2, 2, 2))
    with pytest.raises(ModelFileError, match="'os.system' is not allowed"):
        build_module({"type": "os.system", "args": {"command": "true"}})


def test_tampered_change_is_a_clear_error(tmp_path: Path) -> None:
    model = sk.zoo.create("seed_cnn")
    replace_module(model, "fc2", nn.Linear(1024, 3))
    sk.save(model, tmp_path / "ckpt")
    spec_path = tmp_path / "ckpt" / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec["arch"]["changes"][0]["path"] = "fc9"
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match="change 0 .* cannot be replayed: model has no submodule 'fc9'"):
        sk.load(tmp_path / "ckpt")


def test_select_by_name_and_regex() -> None:
    model = sk.zoo.create("resnet_cifar", depth=8)
    convs = select(model, None, (nn.Conv2d,))
    assert convs[0] == "conv1" and len(convs) == 1 + 3 * 2 + 2  # stem, 3 blocks x 2, 2 shortcuts
    assert select(model, [r"re:layer\d\.0\.conv1"], (nn.Conv2d,)) == [
        "layer1.0.conv1",
        "layer2.0.conv1",
        "layer3.0.conv1",
    ]
    with pytest.raises(SlimkitError, match="no Conv2d layer named 'conv9'"):
        select(model, ["conv9"], (nn.Conv2d,))
