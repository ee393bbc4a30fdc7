"""Pruning models slimkit did not write (issue 18): Hugging Face ``transformers`` families built from
configs (random weights), the traps that used to return broken or half-changed models, custom layers."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimkitError
from slimkit.graph import ParamLayout, analyze, register_pruner
from slimkit.prune import ChannelPruneConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


class Logits(nn.Module):
    """What a user writes around a ``transformers`` model: ``forward(x)`` returns a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.m(x)
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _prune_and_check(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> float:
    """Prune at ``ratio``; the model must run on the example and on another batch size with the same
    output shapes. Returns the share of parameters kept."""
    model.eval()
    with torch.no_grad():
        shapes = [model(x).shape, model(torch.cat([x, x, x[:1]])).shape]
    before = _params(model)
    sk.apply_(model, ChannelPruneConfig(ratio=ratio), example_inputs=x)
    with torch.no_grad():
        assert [model(x).shape, model(torch.cat([x, x, x[:1]])).shape] == shapes
    return _params(model) / before


def _decoder(family: str, **kw: int) -> nn.Module:
    """A small ``<family>ForCausalLM`` (Llama, Gemma...) with grouped-query attention, wrapped."""
    sizes = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96}
    config = getattr(transformers, f"{family}Config")(**{**sizes, "num_hidden_layers": 2, "vocab_size": 100, **kw})
    torch.manual_seed(0)
    return Logits(getattr(transformers, f"{family}ForCausalLM")(config))


def _llama(**kw: int) -> nn.Module:
    return _decoder("Llama", **kw)


TEXT = torch.randint(0, 100, (2, 10))
IMAGES = torch.randn(2, 3, 32, 32)


VISION = {"num_labels": 5}
FAMILIES = {  # model class, config class, config arguments, example
    "resnet": (
        "ResNetForImageClassification",
        "ResNetConfig",
        {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], **VISION},
        IMAGES,
    ),
    "convnext": (
        "ConvNextForImageClassification",
        "ConvNextConfig",
        {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2, **VISION},
        IMAGES,
    ),
    "vit": (
        "ViTForImageClassification",
        "ViTConfig",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 8,
            **VISION,
        },
        IMAGES,
    ),
    "swin": (
        "SwinForImageClassification",
        "SwinConfig",
        {
            "image_size": 32,
            "patch_size": 2,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 4],
            "window_size": 4,
            **VISION,
        },
        IMAGES,
    ),
    "efficientnet": (
        "EfficientNetForImageClassification",
        "EfficientNetConfig",
        {"image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 0.2, "hidden_dim": 320, **VISION},
        IMAGES,
    ),
    "poolformer": (
        "PoolFormerForImageClassification",
        "PoolFormerConfig",
        {
            "hidden_sizes": [16, 32],
            "depths": [1, 1],
            "num_encoder_blocks": 2,
            "patch_sizes": [7, 3],
            "strides": [4, 2],
            "padding": [2, 1],
            **VISION,
        },
        IMAGES,
    ),
    "bert": (
        "BertForSequenceClassification",
        "BertConfig",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "vocab_size": 100,
        },
        TEXT,
    ),
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        {"n_embd": 32, "n_head": 4, "n_layer": 2, "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 0},
        TEXT,
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_families_prune_and_run_on_a_new_batch_size(family: str) -> None:
    model_class, config_class, kwargs, x = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs))
    kept = _prune_and_check(Logits(model), x)
    assert kept <= 0.8, f"{family} kept {kept:.0%} of its parameters"


def test_grouped_query_attention_prunes_key_value_heads_with_the_query_heads_that_share_them() -> None:
    model = _llama()
    attn = model.m.model.layers[0].self_attn
    head_dim = attn.head_dim
    _prune_and_check(model, TEXT)
    q_heads, kv_heads = attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim
    assert attn.head_dim == head_dim and kv_heads == 1 and q_heads == 2  # 4 query heads share 2 kv heads
    assert attn.v_proj.out_features == attn.k_proj.out_features and attn.o_proj.in_features == q_heads * head_dim


def test_tied_input_and_output_embeddings_stay_tied() -> None:
    model = _llama(tie_word_embeddings=True)
    assert model.m.lm_head.weight is model.m.model.embed_tokens.weight
    kept = _prune_and_check(model, TEXT)
    assert kept < 0.7
    lm, emb = model.m.lm_head, model.m.model.embed_tokens
    assert lm.weight is emb.weight and lm.in_features == emb.embedding_dim < 64


def test_shape_checks_and_python_on_sizes_in_forward_do_not_stop_the_analysis() -> None:
    class Checked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.fc1 = nn.Linear(16, 32)
            self.fc2 = nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] != 3:  # ordinary input checks, as in transformers models
                raise ValueError("expected RGB")
            h = F.relu(self.conv(x)).mean((2, 3))
            width = h.shape[-1]  # a size read from a tensor follows pruning
            return self.fc2(F.relu(self.fc1(h.view(-1, width))))

    model = Checked()
    _prune_and_check(model, IMAGES)
    assert model.conv.out_channels == 8 and model.fc1.out_features == 16


def test_an_unknown_operation_between_a_convolution_and_its_batchnorm_never_returns_a_broken_model() -> None:
    class Rolled(nn.Module):
        def __init__(self, dims: int) -> None:
            super().__init__()
            self.dims = dims
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.roll(self.conv(x), shifts=1, dims=self.dims)  # channels (1) or width (3)
            return self.head(F.relu(self.bn(h)).mean((2, 3)))

    along_channels = Rolled(1)
    _prune_and_check(along_channels, IMAGES)
    assert along_channels.conv.out_channels == 16  # rolling mixes channels: left alone, model intact
    assert "rolled along a feature dimension" in sk.records(along_channels)[-1].skipped["conv"]
    along_width = Rolled(3)
    _prune_and_check(along_width, IMAGES)
    assert along_width.conv.out_channels == along_width.bn.num_features == 8


def test_convolution_subclasses_and_weights_computed_in_forward() -> None:
    class MyConv(nn.Conv2d):  # a subclass defined outside torch.nn, forward inherited
        pass

    class StandardizedConv(nn.Conv2d):  # weight standardisation: the weight is computed in forward
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (
                self.weight.std((1, 2, 3), keepdim=True) + 1e-5
            )
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    for cls, pruned in ((MyConv, True), (StandardizedConv, False)):
        model = nn.Sequential(cls(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))
        _prune_and_check(model, IMAGES)
        assert (model[0].out_channels == model[1].num_features == 8) is pruned, cls.__name__


def test_a_group_whose_removal_breaks_the_model_is_put_back_and_reported() -> None:
    class Strict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.width = 32
            self.a = nn.Linear(8, 32)
            self.b = nn.Linear(32, 16)
            self.c = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            if h.shape[-1] != self.width:  # a check against a size attribute slimkit does not know
                raise ValueError(f"hidden width {h.shape[-1]} != {self.width}")
            return self.c(torch.relu(self.b(h)))

    model = Strict()
    _prune_and_check(model, torch.randn(3, 8))
    assert model.a.out_features == 32 and model.b.out_features == 8
    assert "breaks the model" in sk.records(model)[-1].skipped["a"]


def test_a_failed_call_leaves_the_model_bit_identical(tmp_path: Path) -> None:
    class WithAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.head = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))

    model = WithAttention().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    unreachable = ChannelPruneConfig(target_params=0.001)  # fails after the attention was converted
    with pytest.raises(SlimkitError, match="cannot reach the target"):
        sk.apply_(model, unreachable, example_inputs=torch.randn(2, 5, 8))
    assert [type(m) for m in model.modules()] == classes and isinstance(model.attn, nn.MultiheadAttention)
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    model.load_state_dict(state, strict=True)
    assert not sk.records(model)


def test_registered_pruner_for_a_custom_layer_updates_its_size_attribute() -> None:
    class Gain(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n
            self.gain = nn.Parameter(torch.rand(n) + 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] != self.n:
                raise ValueError("width")
            return x * self.gain

    model = nn.Sequential(nn.Linear(8, 32), Gain(32), nn.ReLU(), nn.Linear(32, 4))
    graph = analyze(model, torch.randn(2, 8))
    assert "1" in {s.module for g in graph.groups for s in g.slots}  # the gain is part of fc's group
    _prune_and_check(copy.deepcopy(model), torch.randn(2, 8))  # without a rule: kept (its check fails)
    register_pruner(Gain, ParamLayout({"gain": ("ch",)}, sizes={"n": "ch"}))
    _prune_and_check(model, torch.randn(2, 8))
    assert model[1].n == model[0].out_features == 16 and model[1].gain.shape == (16,)


class CausalConv(nn.Module):
    """Mamba's short convolution: a depthwise kernel passed as ``conv.weight.squeeze(1).unsqueeze(1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv, self.out = nn.Linear(8, 16), nn.Conv1d(16, 16, 4, groups=16, padding=3), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).transpose(1, 2)
        kernel = self.conv.weight.squeeze(1)
        h = F.conv1d(h, kernel.unsqueeze(1), self.conv.bias, padding=3, groups=h.shape[1])[..., : x.shape[1]]
        return self.out(F.silu(h).transpose(1, 2))


def test_a_convolution_kernel_passed_as_a_view_of_its_weight_is_pruned_with_its_channels() -> None:
    model = CausalConv()
    assert _prune_and_check(model, torch.randn(2, 5, 8)) < 0.6
    assert model.inp.out_features == model.out.in_features == 8 and model.conv.weight.shape == (8, 1, 4)


def test_pruned_transformers_model_saves_without_pickle_and_reloads_to_identical_outputs(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    save_model(gpt2_logits(), str(tmp_path / "w.safetensors"))
    model = sk.load(tmp_path / "w.safetensors", factory="tests.test_prune_real_models:gpt2_logits").eval()
    sk.apply_(model, ChannelPruneConfig(ratio=0.5), example_inputs=TEXT)
    sk.save(model, tmp_path / "ckpt")
    again = sk.load(tmp_path / "ckpt", factory="tests.test_prune_real_models:gpt2_logits").eval()
    with torch.no_grad():
        assert torch.equal(model(TEXT), again(TEXT))
    assert _params(again) == _params(model) < _params(gpt2_logits())


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2_moe"])
def test_pruned_transformers_model_saves_pretrained_and_loads_with_from_pretrained(family: str, tmp_path: Path) -> None:
    model = {"llama": _llama, "gpt2": gpt2_logits, "qwen2_moe": lambda: Logits(_qwen2_moe("grouped_mm"))}[family]()
    sk.apply_(model, ChannelPruneConfig(ratio=0.5), example_inputs=TEXT)  # the same ratio in every layer
    sk.io.save_pretrained(model, tmp_path / "hf")
    again = type(model.m).from_pretrained(tmp_path / "hf").eval()  # what users call, no slimkit needed
    assert not list(tmp_path.glob("hf/*.bin")) and list(tmp_path.glob("hf/*.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(Logits(again)(TEXT), model(TEXT), atol=1e-6, rtol=1e-5)
    assert _params(again) == _params(model.m)
    with pytest.raises(SlimkitError, match="exists"):
        sk.io.save_pretrained(model, tmp_path / "hf")


def _family(family: str) -> tuple[nn.Module, torch.Tensor]:
    if family in ("llama", "qwen2"):
        return _decoder({"llama": "Llama", "qwen2": "Qwen2"}[family]).eval(), TEXT
    model_class, config_class, kwargs, x = FAMILIES[family]
    torch.manual_seed(0)
    return Logits(getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs))).eval(), x


@pytest.mark.parametrize("family", ["bert", "gpt2", "vit", "resnet", "convnext", "llama", "qwen2"])
def test_config_widths_from_uneven_sensitivities_save_as_from_pretrained_folders(family: str, tmp_path: Path) -> None:
    """Sensitivities that differ by group make per-layer widths; tied by the config's fields (every
    layer's FFN alike, BERT's hidden size with its heads, Llama's with its head count, which its config
    must divide), the budget is met and ``from_pretrained`` loads the folder to the same outputs."""
    from slimkit.evaluate.cost import count_params
    from slimkit.io.pretrained import config_ties
    from slimkit.optimize.pipeline import fit_widths
    from slimkit.optimize.sensitivity import CostModel, Sensitivity

    model, x = _family(family)
    costs = CostModel(model, x)
    curves = {p: {"ratios": [0.5], "loss": [1.0 + 0.1 * (i % 3)]} for i, p in enumerate(costs.groups)}
    sens = Sensitivity(key="", base={"loss": 1.0}, groups=curves)

    def pruned(ratios: dict[str, float]) -> nn.Module:
        return sk.apply_(copy.deepcopy(model), ChannelPruneConfig(ratio=0.0, ratios=ratios), example_inputs=x)

    def measure(ratios: dict[str, float]) -> dict[str, float]:
        return {"params": count_params(pruned(ratios))}

    def fit(classes: list | None) -> nn.Module:
        widths = fit_widths(costs, {"params": 0.75 * costs.base["params"]}, measure, sens=sens, classes=classes)[0]
        return pruned({p: 1 - w / costs.groups[p] for p, w in widths.items()})

    ties = config_ties(model, costs.groups, costs.slots)
    if family == "bert":  # the head size is the hidden size / heads: heads go with the hidden size
        assert ties.classes["hidden_size"][1:3] == [f"m.bert.encoder.layer.{i}.attention.self.query" for i in (0, 1)]
        assert "no BertConfig describes" in ties.check(fit(None))  # per-layer widths: no config
    if family == "llama":
        assert ties.units == {
            "intermediate_size": 96,
            "hidden_size+num_attention_heads+num_key_value_heads+head_dim": 2,
        }
    slim = fit(ties.tied(costs.groups))
    assert count_params(slim) <= 0.75 * costs.base["params"]
    sk.io.save_pretrained(slim, tmp_path / "hf", example_inputs=x)  # checks the reloaded folder's outputs
    again = type(slim.m).from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(Logits(again)(x), slim(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_one_ratio_that_splits_heads_unevenly_still_saves_as_a_from_pretrained_folder(
    family: str, tmp_path: Path
) -> None:
    """30% of 4 heads is not whole: the hidden size and heads (BERT: head size = hidden / heads; Llama:
    hidden a multiple of the heads) are pruned by the nearest whole number of heads, alike."""
    model, x = _family(family)
    sk.apply_(model, ChannelPruneConfig(ratio=0.3), example_inputs=x)
    sk.io.save_pretrained(model, tmp_path / "hf", example_inputs=x)  # checks the reloaded folder's outputs
    config = type(model.m).from_pretrained(tmp_path / "hf").config
    assert config.num_attention_heads < 4 and config.hidden_size % config.num_attention_heads == 0


def test_a_config_class_that_cannot_be_pruned_describably_is_pruned_as_asked() -> None:
    """MPT's heads are one indivisible unit and its head size is d_model / heads: no config describes a
    pruned d_model, so the one ratio is not rounded (to nothing) but applied as asked."""
    torch.manual_seed(0)
    config = transformers.MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=100, expansion_ratio=4)
    model = Logits(transformers.MptForCausalLM(config)).eval()
    assert _prune_and_check(model, TEXT, ratio=0.3) < 0.8


def test_widths_that_differ_between_layers_are_refused_by_save_pretrained_with_what_to_do(tmp_path: Path) -> None:
    model = _llama()
    sk.apply_(model, ChannelPruneConfig(ratios={"m.model.layers.0.mlp.gate_proj": 0.5}, ratio=0.0), example_inputs=TEXT)
    with pytest.raises(SlimkitError, match="describes the pruned LlamaForCausalLM.*factory"):
        sk.io.save_pretrained(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_save_pretrained_with_an_example_refuses_a_config_that_would_compute_differently(tmp_path: Path) -> None:
    model = _decoder("Gemma", head_dim=16).eval()  # scales its embeddings by sqrt(config.hidden_size)
    sk.apply_(model, ChannelPruneConfig(ratio=0.5), example_inputs=TEXT)
    with pytest.raises(SlimkitError, match="computes different outputs"):
        sk.io.save_pretrained(model, tmp_path / "hf", example_inputs=TEXT)
    assert not (tmp_path / "hf").exists()
    llama = _llama()
    sk.apply_(llama, ChannelPruneConfig(ratio=0.5), example_inputs=TEXT)
    sk.io.save_pretrained(llama, tmp_path / "llama", example_inputs=TEXT)  # checked against the reloaded folder


def gpt2_logits() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    return Logits(transformers.GPT2LMHeadModel(config)).eval()


def test_fused_qkv_split_and_literal_head_counts_follow_the_pruned_heads() -> None:
    gpt2 = gpt2_logits()  # c_attn(x).split(self.split_size, dim=2): one fused q/k/v projection
    _prune_and_check(gpt2, TEXT)
    attn = gpt2.m.transformer.h[0].attn
    assert attn.c_attn.nf == 3 * attn.split_size == 3 * 16 and attn.c_proj.weight.shape[0] == 16
    # StableLM writes q.view(bsz, q_len, self.num_heads, self.head_dim): the head count attribute follows
    stablelm = _decoder("StableLm", num_key_value_heads=4, num_hidden_layers=1)
    _prune_and_check(stablelm, TEXT)
    attn = stablelm.m.model.layers[0].self_attn
    assert attn.num_heads == 2 and attn.q_proj.out_features == 2 * attn.head_dim


def _qwen2_moe(implementation: str) -> nn.Module:
    config = transformers.Qwen2MoeConfig(
        vocab_size=100,
        hidden_size=32,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
    )
    config._experts_implementation = implementation  # how transformers runs the experts (3-D weights)
    torch.manual_seed(0)
    return transformers.Qwen2MoeForCausalLM(config).eval()


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm", "eager"])
def test_mixture_of_experts_prunes_every_experts_hidden_units_exactly(implementation: str) -> None:
    model = Logits(_qwen2_moe(implementation)).eval()
    experts = [layer.mlp.experts for layer in model.m.model.layers]
    with torch.no_grad():  # units 0..7 of every expert contribute nothing: removing them is exact
        for e in experts:
            e.gate_up_proj[:, [*range(8), *range(16, 24)]] = 0
            e.down_proj[:, :, :8] = 0
        want = model(TEXT)
    ratios = {r"re:.*\.experts": 0.5, "m.model.embed_tokens": 0.0}  # the embedding names the hidden width's group
    sk.apply_(model, ChannelPruneConfig(ratio=0.0, ratios=ratios), example_inputs=TEXT)
    assert [tuple(e.gate_up_proj.shape) for e in experts] == [(4, 16, 32)] * 2
    assert [tuple(e.down_proj.shape) for e in experts] == [(4, 32, 8)] * 2
    with torch.no_grad():
        torch.testing.assert_close(model(TEXT), want, atol=1e-5, rtol=1e-4)
    assert _prune_and_check(model, TEXT) < 0.5  # and the whole model prunes (experts, heads, widths)


def test_grouped_mm_widths_stay_multiples_of_8_at_an_uneven_ratio() -> None:
    model = Logits(_qwen2_moe("grouped_mm")).eval()  # hidden 32, experts of 16: 0.6 of them is uneven
    sk.apply_(model, ChannelPruneConfig(ratio=0.6), example_inputs=TEXT)
    experts = [layer.mlp.experts for layer in model.m.model.layers]
    widths = {model.m.model.embed_tokens.embedding_dim, *(e.down_proj.shape[-1] for e in experts)}
    assert widths == {16, 8}  # 13 and 7 kept units, rounded up to the kernel's 16-byte strides
    with torch.no_grad():  # in 16 bits too, where a multiple of 4 would not do
        assert model.to(torch.bfloat16)(TEXT).shape == (*TEXT.shape, 100)


def test_experts_and_shared_experts_sized_by_one_field_keep_one_aligned_width(tmp_path: Path) -> None:
    """GLM-4-MoE sizes its routed experts (``grouped_mm``: multiples of 8) and its shared expert by one
    field: both must keep the same aligned width for a config to describe the pruned model."""
    config = transformers.Glm4MoeConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
    )
    torch.manual_seed(0)
    model = Logits(transformers.Glm4MoeForCausalLM(config).eval())
    sk.apply_(model, ChannelPruneConfig(ratio=0.3), example_inputs=TEXT)
    moe = model.m.model.layers[1].mlp
    assert moe.experts.down_proj.shape[-1] == moe.shared_experts.down_proj.in_features == 24
    sk.io.save_pretrained(model, tmp_path / "hf", example_inputs=TEXT)  # reloaded and compared
    assert type(model.m).from_pretrained(tmp_path / "hf").config.moe_intermediate_size == 24


def test_refit_leaves_a_tied_output_layer_alone() -> None:
    model = _llama(tie_word_embeddings=True)
    x = torch.randint(0, 100, (16, 10))
    config = ChannelPruneConfig(ratio=0.5, importance="output", global_ranking=True, refit=True)
    sk.apply_(model, config, example_inputs=x)
    refitted = sk.records(model)[-1].details["refitted"]
    assert refitted and "m.lm_head" not in refitted  # its weight is the embedding matrix
    assert model.m.lm_head.weight is model.m.model.embed_tokens.weight
    with torch.no_grad():
        assert model(x).shape == (16, 10, 100)
