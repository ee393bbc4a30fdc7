from __future__ import annotations

import copy
import math
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimkitError
from slimkit.evaluate import count_macs, count_params
from slimkit.graph import analyze, pruner_for
from slimkit.io import onnx_agreement
from slimkit.prune import ChannelPruneConfig, prune_channels
from tests.conftest import zoo_example


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", sk.zoo.list())
def test_every_zoo_model_prunes_runs_saves_and_exports(name: str, ratio: float, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create(name).eval()
    x = zoo_example(name)
    params, macs = count_params(model), count_macs(model, x)
    sk.apply_(model, ChannelPruneConfig(ratio=ratio), example_inputs=x)
    assert count_params(model) < params and count_macs(model, x) < macs
    out = model(x)
    assert torch.isfinite(out).all()
    sk.save(model, tmp_path / "ckpt", example=x)
    assert torch.equal(sk.load(tmp_path / "ckpt")(x), out)  # the recorded shape changes replay
    if ratio == 0.5:
        path = sk.export(model, tmp_path / "m.onnx", x)
        assert onnx_agreement(model, path, x)["max_abs_diff"] < 1e-4


def test_ratio_zero_changes_nothing() -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("resnet_cifar", depth=8).eval()
    x = zoo_example("resnet_cifar")
    before = model(x)
    record = prune_channels(model, ChannelPruneConfig(ratio=0.0), x)
    assert record.details["groups"] == {} and record.changed == []
    assert torch.equal(model(x), before)


def test_the_briefs_conv1_64_to_32_by_l1() -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("seed_cnn").eval()
    # group importance: conv1's filters (weights + bias) and the conv2 input slices that read them,
    # each normalised by its mean, averaged
    own = model.conv1.weight.detach().abs().flatten(1).sum(1) + model.conv1.bias.detach().abs()
    read = model.conv2.weight.detach().abs().sum((0, 2, 3))
    score = (own / own.mean() + read / read.mean()) / 2
    config = ChannelPruneConfig(ratio=0.0, ratios={"conv1": 0.5}, importance="l1")
    record = prune_channels(model, config, zoo_example("seed_cnn"))
    assert model.conv1.out_channels == 32 and model.conv2.in_channels == 32
    assert model.conv2.out_channels == 64 and model.fc1.in_features == 1600  # only the named group shrinks
    assert record.details["groups"] == {"conv1.out": "64 -> 32"}
    kept = torch.sort(torch.argsort(score, descending=True)[:32]).values
    torch.manual_seed(0)
    original = sk.zoo.create("seed_cnn")
    assert torch.equal(model.conv1.weight, original.conv1.weight[kept])
    assert torch.equal(model.conv2.weight, original.conv2.weight[:, kept])


def test_sum_aggregate_ranks_by_the_norm_of_every_weight_a_unit_removes() -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("seed_cnn").eval()
    # conv1's filter and bias, and the conv2 input slice that reads the channel: one vector per unit
    own = model.conv1.weight.detach().pow(2).flatten(1).sum(1) + model.conv1.bias.detach().pow(2)
    read = model.conv2.weight.detach().pow(2).sum((0, 2, 3))
    score = (own + read).sqrt()
    config = ChannelPruneConfig(ratio=0.0, ratios={"conv1": 0.5}, importance="l2", aggregate="sum")
    prune_channels(model, config, zoo_example("seed_cnn"))
    kept = torch.sort(torch.argsort(score, descending=True)[:32]).values
    torch.manual_seed(0)
    assert torch.equal(model.conv1.weight, sk.zoo.create("seed_cnn").conv1.weight[kept])
    with pytest.raises(SlimkitError, match="unknown aggregate 'max'"):
        ChannelPruneConfig(aggregate="max")


def test_pruned_brief_model_recovers_on_mnist(trained_cnn: nn.Module, mnist: sk.data.Dataset) -> None:
    import copy

    model = copy.deepcopy(trained_cnn)
    before = sk.evaluate(model, mnist, latency=False).metrics["accuracy"]
    prune_channels(model, ChannelPruneConfig(ratio=0.0, ratios={"conv1": 0.5}, importance="l1"), mnist.example)
    pruned = sk.evaluate(model, mnist, latency=False).metrics["accuracy"]
    sk.train.fit(model, mnist.train, epochs=1, lr=5e-4, progress=False)
    tuned = sk.evaluate(model, mnist, latency=False).metrics["accuracy"]
    assert tuned >= before - 0.01 and tuned >= pruned


# ---------------------------------------------------------------- random models (property tests)
class RandomNet(nn.Module):
    """An image model assembled from the supported layer types, driven by a block list."""

    def __init__(self, blocks: list[str], width: int, classes: int = 3) -> None:
        super().__init__()
        self.kinds = blocks
        self.layers = nn.ModuleList()
        c = 3
        for kind in blocks:
            if kind == "conv":
                self.layers.append(nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()))
            elif kind == "residual":
                body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1))
                self.layers.append(body)
                width = c
            elif kind == "concat":
                self.layers.append(nn.ModuleList([nn.Conv2d(c, width, 1), nn.Conv2d(c, width // 2 + 1, 3, padding=1)]))
            elif kind == "depthwise":
                self.layers.append(
                    nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU6())
                )
            elif kind == "grouped":  # ResNeXt-style: 1x1 to an even width, then a 2-group 3x3
                g = 2 * width
                self.layers.append(
                    nn.Sequential(
                        nn.Conv2d(c, g, 1), nn.ReLU(), nn.Conv2d(g, g, 3, padding=1, groups=2), nn.BatchNorm2d(g)
                    )
                )
            c = {"conv": width, "residual": c, "concat": width + width // 2 + 1, "depthwise": c, "grouped": 2 * width}[
                kind
            ]
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(c * 4, 16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            if kind == "residual":
                x = torch.relu(x + layer(x))
            elif kind == "concat":
                x = torch.cat([layer[0](x), layer[1](x)], dim=1)
            else:
                x = layer(x)
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.pool(x), 1))))


blocks = st.lists(st.sampled_from(["conv", "residual", "concat", "depthwise", "grouped"]), min_size=1, max_size=4)


def _randomized(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


@settings(max_examples=25, deadline=None)
@given(kinds=blocks, width=st.integers(2, 8), seed=st.integers(0, 1000), ratio=st.floats(0.1, 0.8))
def test_random_models_prune_and_higher_ratio_never_adds_params(
    kinds: list[str], width: int, seed: int, ratio: float
) -> None:
    torch.manual_seed(seed)
    x = torch.rand(2, 3, 6, 6)
    net = _randomized(RandomNet(kinds, width), seed)
    base = net(x)
    zero = _randomized(RandomNet(kinds, width), seed)
    zero.load_state_dict(net.state_dict())
    prune_channels(zero, ChannelPruneConfig(ratio=0.0), x)
    assert torch.equal(zero(x), base)
    sizes = []
    for r in (ratio / 2, ratio):
        pruned = _randomized(RandomNet(kinds, width), seed)
        pruned.load_state_dict(net.state_dict())
        prune_channels(pruned, ChannelPruneConfig(ratio=r), x)
        assert pruned(x).shape == base.shape
        sizes.append(count_params(pruned))
    assert sizes[1] <= sizes[0] <= count_params(net)


@settings(max_examples=25, deadline=None)
@given(kinds=blocks, width=st.integers(3, 8), seed=st.integers(0, 1000))
def test_removing_dead_units_keeps_outputs(kinds: list[str], width: int, seed: int) -> None:
    """Zero every weight a unit owns (and its BatchNorm mean): it contributes nothing, so removing it is exact."""
    torch.manual_seed(seed)
    x = torch.rand(2, 3, 6, 6)
    net = _randomized(RandomNet(kinds, width), seed)
    graph = analyze(net, x)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for group in graph.groups:
            dead = rng.choice(len(group), size=len(group) // 2, replace=False)
            for u in dead:
                for slot, idx in zip(group.slots, group.unit(u), strict=True):
                    m = net.get_submodule(slot.module)
                    for p in m.parameters(recurse=False):
                        if slot.kind == "in" and getattr(m, "groups", 1) > 1 and p.dim() > 1:
                            per_out = p.shape[0] // m.groups  # input i is column i % per_in of its group's rows
                            for k, pos in (divmod(int(i), p.shape[1]) for i in idx):
                                p[k * per_out : (k + 1) * per_out, pos] = 0
                        elif slot.kind in ("out", "ch", "feat") or p.dim() > 1:
                            view = p if slot.kind in ("out", "ch", "feat") else p.transpose(0, 1)
                            view[torch.as_tensor(idx)] = 0
                    if isinstance(m, nn.BatchNorm2d):
                        m.running_mean[torch.as_tensor(idx)] = 0
    before = net(x)
    # the dead units have the lowest magnitude, so l1 importance removes exactly them
    prune_channels(net, ChannelPruneConfig(ratio=0.5, importance="l1"), x)
    assert torch.allclose(net(x), before, atol=1e-5)


@pytest.mark.parametrize("name", ["recsys_mlp", "unet"])
def test_pairwise_dots_and_transposed_convolutions_prune_exactly(name: str) -> None:
    """The recommender's pairwise dot products tie every table's embedding width into one group; a U-Net's
    transposed convolutions read and write prunable channels. Removing units zeroed everywhere is exact."""
    torch.manual_seed(0)
    net = sk.zoo.create(name).eval()
    x = zoo_example(name)
    graph = analyze(net, x)
    assert not graph.skipped.keys() - {"top.4", "head"}  # only the output layer keeps its width
    if name == "recsys_mlp":
        emb = next(g for g in graph.groups if any(s.module == "embeddings.3" for s in g.slots))
        assert {f"embeddings.{i}" for i in range(4)} <= {s.module for s in emb.slots}
    with torch.no_grad():
        for group in graph.groups:
            for slot, idx in zip(group.slots, group.unit(0), strict=True):
                m = net.get_submodule(slot.module)
                for pname, p in m.named_parameters(recurse=False):
                    for d in range(p.dim()):
                        if pruner_for(m).kind(m, pname, d) == slot.kind:
                            p.index_fill_(d, torch.as_tensor(idx), 0.0)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean[torch.as_tensor(idx)] = 0
    before = net(x)
    ratios = {next(s.module for s in g.slots if s.producer): 1 / len(g) for g in graph.groups}
    prune_channels(net, ChannelPruneConfig(ratio=0.0, ratios=ratios, importance="l1"), x)
    assert count_params(net) < count_params(sk.zoo.create(name))
    assert torch.allclose(net(x), before, atol=1e-5)


# ---------------------------------------------------------------- options
def test_global_ranking_target_macs_and_round_to() -> None:
    torch.manual_seed(0)
    x = zoo_example("resnet_cifar")
    model = sk.zoo.create("resnet_cifar").eval()
    macs = count_macs(model, x)
    record = prune_channels(model, ChannelPruneConfig(target_macs=0.25, global_ranking=True, round_to=4), x)
    after = count_macs(model, x)
    assert after <= 0.25 * macs and after >= 0.15 * macs  # met, without overshooting wildly
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 4 == 0 for w in widths)
    assert len(set(record.details["groups"].values())) > 1  # non-uniform: groups shrink differently


def test_round_to_auto_uses_the_cpu_channel_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` resolves to the ONNX Runtime channel block of the CPU and is recorded as a number."""
    from slimkit.core import hardware

    x = zoo_example("mobilenet_v2")
    for flags, block in ((frozenset({"avx2", "avx512f"}), 16), (frozenset({"avx2"}), 8)):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(hardware, "is_x86", lambda: True)
        model = sk.zoo.create("mobilenet_v2").eval()
        record = prune_channels(model, ChannelPruneConfig(ratio=0.5, round_to="auto"), x)
        assert record.details["round_to"] == block
        widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels >= block]
        assert widths and all(w % block == 0 for w in widths)


def test_target_params_on_text_model() -> None:
    model = sk.zoo.create("text_lstm").eval()
    x = zoo_example("text_lstm")
    params = count_params(model)
    prune_channels(model, ChannelPruneConfig(target_params=0.5), x)
    assert count_params(model) <= 0.5 * params


@pytest.mark.parametrize("method", ["l1", "l2", "taylor", "bn_scale", "activation", "apoz", "output", "random"])
def test_every_importance_method(method: str, digits: sk.data.Dataset) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8)
    sk.train.fit(model, digits.train, epochs=1, progress=False)
    base = sk.evaluate(model, digits, latency=False).metrics["accuracy"]
    record = prune_channels(model, ChannelPruneConfig(ratio=0.25, importance=method), digits.example, data=digits.train)
    assert record.details["groups"]
    acc = sk.evaluate(model, digits, latency=False).metrics["accuracy"]
    assert 0.0 <= acc <= 1.0 and base > 0.3


def test_refit_reconstructs_removed_units_from_the_kept_ones() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():  # units 8..15 are units 0..7 at half the scale (relu(z / 2) = relu(z) / 2): redundant
        model[0].weight[8:] = model[0].weight[:8] / 2
        model[0].bias[8:] = model[0].bias[:8] / 2
        model[2].weight[:, 8:] /= 2
    x = torch.randn(256, 8)
    want = model(x)
    errors = {}
    for refit in (False, True):
        pruned = copy.deepcopy(model)
        record = prune_channels(pruned, ChannelPruneConfig(ratio=0.5, refit=refit), x)
        assert pruned[0].out_features == pruned[2].in_features == 8 and pruned[0].weight.shape[0] == 8
        assert record.details["refitted"] == (["2"] if refit else [])
        errors[refit] = float((pruned(x) - want).detach().abs().max())
    assert errors[True] < 0.01 * errors[False]  # the removed units' contribution is folded into the kept ones


def test_output_importance_weighs_heads_against_ffn_units_per_parameter() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2, vocab_size=100
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()
    x = {"input_ids": torch.randint(0, 100, (64, 12))}
    with torch.no_grad():
        want = bert(**x).last_hidden_state
    errors, params = {}, {}
    for name, cfg in {
        "uniform l2": ChannelPruneConfig(target_params=0.8),
        "global output + refit": ChannelPruneConfig(
            target_params=0.8, importance="output", global_ranking=True, refit=True
        ),
    }.items():
        model = copy.deepcopy(bert)
        sk.apply_(model, cfg, example_inputs=x)
        params[name] = count_params(model)
        with torch.no_grad():
            errors[name] = float((model(**x).last_hidden_state - want).pow(2).mean() / want.pow(2).mean())
    assert params["global output + refit"] <= 0.8 * count_params(bert) and params["uniform l2"] <= 0.8 * count_params(
        bert
    )
    assert errors["global output + refit"] < 0.5 * errors["uniform l2"]


def test_bn_recalibration_after_pruning_recovers_accuracy(digits: sk.data.Dataset) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8)
    sk.train.fit(model, digits.train, epochs=3, progress=False)
    acc = {}
    for recalibrate in (False, True):
        pruned = copy.deepcopy(model)
        config = ChannelPruneConfig(ratio=0.5, recalibrate_bn=recalibrate)
        record = prune_channels(pruned, config, digits.example, data=digits.train)
        assert record.details["bn_recalibrated"] is recalibrate
        acc[recalibrate] = sk.evaluate(pruned, digits, split="val", latency=False).metrics["accuracy"]
    assert acc[True] > acc[False] + 0.05, acc


def test_protected_layers_and_skipped_reasons() -> None:
    model = sk.zoo.create("seed_cnn").eval()
    x = zoo_example("seed_cnn")
    record = prune_channels(model, ChannelPruneConfig(ratio=0.5, protected=["fc1"]), x)
    assert model.fc1.out_features == 1024 and model.conv1.out_channels == 32
    assert record.skipped["fc1"] == "protected by the user"
    assert "model output" in record.skipped["fc2"]

    class Unsupported(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Bilinear(8, 8, 6)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.fc(self.b(h, h))

    record = prune_channels(Unsupported().eval(), ChannelPruneConfig(ratio=0.5), torch.rand(2, 4))
    assert "cannot analyse: bilinear in b" in record.skipped["b"]
    assert "bilinear in b" in record.skipped["a"]  # its output feeds the unknown layer: left alone


def test_math_on_traced_sizes_still_prunes() -> None:
    """Tracing first skips fx's wrapping of ``math`` (faster) and falls back to it when needed."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.fc(h / math.sqrt(h.shape[-1]))

    model = Scaled().eval()
    prune_channels(model, ChannelPruneConfig(ratio=0.5), torch.rand(2, 4))
    assert model.a.out_features == 4 and model.fc.in_features == 4


def test_pruning_leaves_no_tracing_attributes_on_the_model() -> None:
    """torch.fx stores a forward's tensor constants (recsys_mlp's pair indices) on the traced model."""
    model = sk.zoo.create("recsys_mlp").eval()
    before = set(vars(model))
    prune_channels(model, ChannelPruneConfig(ratio=0.5), zoo_example("recsys_mlp"))
    assert model.top[0].out_features < 128
    assert not [k for k in set(vars(model)) - before if k.startswith("_tensor_constant")]


class TorchAttentionNet(nn.Module):
    """nn.TransformerEncoder plus a cross-attention nn.MultiheadAttention (not batch-first)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.memory = nn.Linear(8, 32)
        self.cross = nn.MultiheadAttention(32, 4)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 8)
        h = self.enc(self.inp(x))
        mem = self.memory(x).transpose(0, 1)  # (T, B, 32)
        q = h.transpose(0, 1)
        return self.out(self.cross(q, mem, mem)[0].mean(0))


def test_torch_multihead_attention_heads_are_pruned(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TorchAttentionNet().eval()
    x = torch.rand(2, 5, 8)
    before = model(x)
    prune_channels(model, ChannelPruneConfig(ratio=0.0), x)  # conversion alone changes nothing
    assert torch.allclose(model(x), before, atol=1e-5)
    record = prune_channels(model, ChannelPruneConfig(ratio=0.5), x)
    assert model.enc.layers[0].self_attn.heads == 2 and model.cross.heads == 2
    assert model.enc.layers[0].linear1.out_features == 32 and model.inp.out_features == 16
    assert "enc.layers.0.self_attn.heads" in record.details["groups"]
    assert model(x).shape == (2, 3)
    path = sk.export(model, tmp_path / "m.onnx", x)
    assert onnx_agreement(model, path, x)["max_abs_diff"] < 1e-4


def test_bad_configs() -> None:
    with pytest.raises(SlimkitError, match="must be in \\[0, 1\\)"):
        ChannelPruneConfig(ratio=1.0)
    with pytest.raises(SlimkitError, match="round_to must be an integer >= 1 or 'auto'"):
        ChannelPruneConfig(round_to="fast")
    with pytest.raises(SlimkitError, match="unknown importance"):
        ChannelPruneConfig(importance="l3")
    with pytest.raises(SlimkitError, match="needs labelled batches"):
        sk.apply_(
            sk.zoo.create("seed_cnn"), ChannelPruneConfig(importance="taylor"), example_inputs=zoo_example("seed_cnn")
        )
    with pytest.raises(SlimkitError, match="pass example_inputs"):
        sk.apply_(sk.zoo.create("seed_cnn"), ChannelPruneConfig())
    with pytest.raises(SlimkitError, match="cannot reach the target"):
        prune_channels(sk.zoo.create("seed_cnn"), ChannelPruneConfig(target_params=0.001), zoo_example("seed_cnn"))
    config = ChannelPruneConfig(ratio=0.3, ratios={"conv1": 0.5}, protected=["fc1"])
    assert sk.Config.from_dict(config.to_dict()) == config


def test_slot_rows_cover_lstm_gates() -> None:
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    rows = pruner_for(lstm).rows(lstm, "hidden", lambda p: p.detach())
    # per layer and direction: 4 gates x (in + 6 + 2 biases) + 6 recurrent columns (+ 4*6*2 inputs for layer 2)
    per_unit = 2 * (4 * (4 + 6 + 2) + 4 * 6) + 2 * (4 * (12 + 6 + 2) + 4 * 6 + 2 * 4 * 6)
    assert rows.shape == (6, per_unit)


@pytest.mark.parametrize("order", ["data-flow", "shuffled"])
def test_id_components_match_scipy(order: str) -> None:
    """The union-find gives scipy's partition, also on a graph whose ids need many passes (then scipy
    itself finishes it)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from slimkit.graph.ids import IdSpace

    rng = np.random.default_rng(0)
    space = IdSpace()
    ids = space.alloc(3000)
    path = ids if order == "data-flow" else ids[torch.from_numpy(rng.permutation(3000))]
    space.unify(path[:1000], path[1:1001])  # one long chain
    a, b = torch.from_numpy(rng.integers(1500, 3000, (2, 400)))
    space.unify(a, b)  # scattered pairs
    labels = space.components()
    edges = (np.concatenate(space._a), np.concatenate(space._b))
    expected = connected_components(coo_matrix((np.ones(len(edges[0])), edges), shape=(3000, 3000)), directed=False)[1]
    pairs = np.unique(np.stack([labels, expected]), axis=1)  # one-to-one iff the partitions are equal
    assert len(pairs[0]) == len(np.unique(labels)) == len(np.unique(expected))
