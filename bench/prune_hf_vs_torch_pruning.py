"""slimkit vs Torch-Pruning 1.6.1 on Hugging Face ``transformers`` families (random weights, no download).

Each family is built from a small config and wrapped so that ``forward(x)`` returns the logits (or
the last hidden state), as a user would. Both tools prune it at ratio 0.5 with L2 magnitude
importance, the way a new user calls them: slimkit with ``sk.apply_(model,
ChannelPruneConfig(ratio=0.5), example_inputs=x)``, Torch-Pruning with ``MetaPruner`` (the
output layer ignored, no per-model settings). Each (family, tool) runs in a fresh process, so the
added memory is the peak RSS during pruning minus the RSS before it (``VmHWM`` reset through
``/proc/self/clear_refs``). Reported: ok / refused (raised) / unpruned (no parameter removed) /
broken (fails to run, or an output shape changes, on the example or on a new batch size), the
share of parameters and MACs kept, the time, the added memory, and whether the pruned model
exports to ONNX and agrees with PyTorch on ONNX Runtime (max |diff| < 1e-3 x output scale).

Run: ``.venv/bin/python bench/prune_hf_vs_torch_pruning.py`` (about 10 minutes on 2 cores);
``--families bert gpt2`` for a subset. Figures go to bench/RESULTS-prune-hf.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

IMAGES = (2, 3, 32, 32)
VISION = {"num_labels": 10}
TEXT = {"vocab_size": 1000}
DECODER = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    **TEXT,
}
ENCODER = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, "num_hidden_layers": 2, **TEXT}
FAMILIES = {  # name: (model class, config class, config arguments, input)
    "resnet": (
        "ResNetForImageClassification",
        "ResNetConfig",
        {"embedding_size": 16, "hidden_sizes": [16, 32, 64], "depths": [1, 1, 1], **VISION},
        "image",
    ),
    "convnext": (
        "ConvNextForImageClassification",
        "ConvNextConfig",
        {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2, **VISION},
        "image",
    ),
    "vit": (
        "ViTForImageClassification",
        "ViTConfig",
        {**ENCODER, "image_size": 32, "patch_size": 8, **VISION},
        "image",
    ),
    "deit": (
        "DeiTForImageClassification",
        "DeiTConfig",
        {**ENCODER, "image_size": 32, "patch_size": 8, **VISION},
        "image",
    ),
    "mobilenet_v2": (
        "MobileNetV2ForImageClassification",
        "MobileNetV2Config",
        {"depth_multiplier": 0.35, "image_size": 32, **VISION},
        "image",
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
        "image",
    ),
    "regnet": (
        "RegNetForImageClassification",
        "RegNetConfig",
        {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "groups_width": 8, **VISION},
        "image",
    ),
    "efficientnet": (
        "EfficientNetForImageClassification",
        "EfficientNetConfig",
        {"image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 0.2, "hidden_dim": 320, **VISION},
        "image",
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
        "image",
    ),
    "bert": ("BertForSequenceClassification", "BertConfig", ENCODER, "text"),
    "distilbert": (
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        {"dim": 64, "n_heads": 4, "hidden_dim": 128, "n_layers": 2, **TEXT},
        "text",
    ),
    "roberta": ("RobertaForSequenceClassification", "RobertaConfig", {**ENCODER, "pad_token_id": 1}, "text"),
    "albert": ("AlbertForSequenceClassification", "AlbertConfig", {**ENCODER, "embedding_size": 32}, "text"),
    "electra": ("ElectraForSequenceClassification", "ElectraConfig", {**ENCODER, "embedding_size": 32}, "text"),
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        {"n_embd": 64, "n_head": 4, "n_layer": 2, "bos_token_id": 0, "eos_token_id": 0, **TEXT},
        "text",
    ),
    "llama": ("LlamaForCausalLM", "LlamaConfig", DECODER, "text"),
    "mistral": ("MistralForCausalLM", "MistralConfig", DECODER, "text"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", DECODER, "text"),
    "phi3": (
        "Phi3ForCausalLM",
        "Phi3Config",
        {**DECODER, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0},
        "text",
    ),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", {**DECODER, "head_dim": 16}, "text"),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", {**DECODER, "num_local_experts": 4}, "text"),
    "qwen2_moe": (
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        {**DECODER, "num_experts": 4, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64},
        "text",
    ),
}
LLAMA = {"num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False}
SCALE = {  # full-size architectures (random weights): time and memory at scale
    "bert-base": ("BertForSequenceClassification", "BertConfig", {}, "text"),
    "gpt2-small": ("GPT2LMHeadModel", "GPT2Config", {}, "text"),
    "llama-5m": (
        "LlamaForCausalLM",
        "LlamaConfig",
        {
            **LLAMA,
            "vocab_size": 4000,
            "hidden_size": 256,
            "intermediate_size": 688,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
        },
        "text",
    ),
    "llama-50m": (
        "LlamaForCausalLM",
        "LlamaConfig",
        {
            **LLAMA,
            "vocab_size": 8000,
            "hidden_size": 512,
            "intermediate_size": 1376,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
        },
        "text",
    ),
    "llama-250m": (
        "LlamaForCausalLM",
        "LlamaConfig",
        {**LLAMA, "hidden_size": 1024, "intermediate_size": 2752, "num_hidden_layers": 12, "num_attention_heads": 16},
        "text",
    ),
    "llama-1b": (
        "LlamaForCausalLM",
        "LlamaConfig",
        {**LLAMA, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32},
        "text",
    ),
}


class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.m(x)
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    import transformers

    transformers.logging.set_verbosity_error()
    model_class, config_class, kwargs, kind = FAMILIES.get(name) or SCALE[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs))
    vocab = getattr(model.config, "vocab_size", TEXT["vocab_size"])
    x = torch.randn(*IMAGES) if kind == "image" else torch.randint(0, vocab, (2, 16))
    return Logits(model).eval(), x


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def output_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last Linear producing the output's width (classifier or LM head), which both tools keep."""
    with torch.no_grad():
        width = model(x).shape[-1]
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == width][-1]


def prune_slimkit(model: nn.Module, x: torch.Tensor) -> None:
    import slimkit as sk
    from slimkit.prune import ChannelPruneConfig

    sk.apply_(model, ChannelPruneConfig(ratio=0.5), example_inputs=x)


def prune_torch_pruning(model: nn.Module, x: torch.Tensor) -> None:
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[output_layer(model, x)],
    )
    pruner.step()


def run_one(name: str, tool: str) -> dict:
    """Build, prune, check and export one family with one tool (in this process)."""
    warnings.filterwarnings("ignore")
    from slimkit.evaluate import count_macs

    model, x = build(name)
    with torch.no_grad():
        shapes = [model(x).shape, model(torch.cat([x, x[:1]])).shape]
    original_onnx = onnx_agreement(model, x) if name in FAMILIES and tool == "slimkit" else None
    params0, macs0 = sum(p.numel() for p in model.parameters()), count_macs(model, x)
    rss0 = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    try:
        (prune_slimkit if tool == "slimkit" else prune_torch_pruning)(model, x)
    except Exception as exc:  # noqa: BLE001  (a refusal is a result)
        return {"status": "refused", "why": f"{type(exc).__name__}: {str(exc)[:160]}"}
    seconds = time.perf_counter() - start
    added_mb = (_rss_kb("VmHWM") - rss0) / 1024
    params = sum(p.numel() for p in model.parameters())
    row = {"seconds": seconds, "added_mb": added_mb, "params": params / params0}
    try:
        with torch.no_grad():
            got = [model(x).shape, model(torch.cat([x, x[:1]])).shape]
        if got != shapes:
            return {**row, "status": "broken", "why": f"output shapes {got} instead of {shapes}"}
    except Exception as exc:  # noqa: BLE001
        return {**row, "status": "broken", "why": f"{type(exc).__name__}: {str(exc)[:160]}"}
    row["macs"] = count_macs(model, x) / macs0
    row["status"] = "ok" if params < params0 else "unpruned"
    row["onnx"] = onnx_agreement(model, x) if name in FAMILIES else "-"
    if original_onnx is not None and original_onnx != "yes":
        row["onnx"] += f" (unpruned: {original_onnx[:40]})"
    row["params_before"] = params0
    if name in FAMILIES and tool == "slimkit":
        row["onnx"] += f", save_pretrained: {pretrained_roundtrip(model, x)}"
    return row


def pretrained_roundtrip(model: nn.Module, x: torch.Tensor) -> str:
    """'yes' if ``slimkit.io.save_pretrained`` writes a folder that ``from_pretrained`` loads to the same outputs."""
    from slimkit.io import save_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        try:
            save_pretrained(model, Path(tmp) / "hf", example_inputs=x)
            again = Logits(type(model.m).from_pretrained(Path(tmp) / "hf")).eval()
        except Exception as exc:  # noqa: BLE001
            return f"no ({str(exc)[:60]})"
        with torch.no_grad():
            diff = float((again(x) - model(x)).abs().max())
        return "yes" if diff < 1e-5 else f"differs ({diff:.1e})"


def onnx_agreement(model: nn.Module, x: torch.Tensor) -> str:
    """'yes' if the model exports to ONNX and ONNX Runtime agrees with PyTorch on a new batch size."""
    import onnxruntime as ort

    from slimkit.io.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        try:
            export_onnx(model, path, x)
        except Exception as exc:  # noqa: BLE001
            return f"export failed: {str(exc)[:80]}"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batch = torch.cat([x, x[:1]])
        feed = {session.get_inputs()[0].name: batch.numpy()}
        try:
            got = torch.from_numpy(session.run(None, feed)[0])
        except Exception as exc:  # noqa: BLE001
            return f"runtime failed: {str(exc)[:80]}"
        with torch.no_grad():
            want = model(batch)
        scale = float(want.abs().max()) or 1.0
        diff = float((got - want).abs().max()) / scale
        return "yes" if diff < 1e-3 else f"differs ({diff:.1e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--scale", action="store_true", help="BERT-base, GPT-2 small and Llama from 5M to 1B")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per (family, tool) run")
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "TOOL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        torch.set_num_threads(1)
        print(json.dumps(run_one(*args.one)))
        return
    import torch_pruning as tp
    import transformers

    import slimkit as sk

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, slimkit {sk.__version__}, "
        f"torch-pruning {tp.__version__} (PyPI 1.6.1 reports 1.6.0); ratio 0.5, 1 thread"
    )
    header = f"{'family':13s} {'tool':13s} {'status':9s} {'params':>7s} {'MACs':>6s} {'time s':>7s} {'+MB':>6s}  onnx"
    print(header)
    counts: dict[str, dict[str, int]] = {"slimkit": {}, "torch-pruning": {}}
    names = list(SCALE) if args.scale else args.families
    for name in names:
        for tool in ("slimkit", "torch-pruning"):
            if name in SCALE and name.startswith("llama") and tool != "slimkit" and name != "llama-5m":
                continue
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            try:
                done = subprocess.run(
                    [sys.executable, __file__, "--one", name, tool],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                    timeout=args.timeout,
                )
            except subprocess.TimeoutExpired:
                row = {"status": "timeout", "why": f"no result within {args.timeout:.0f} s"}
            else:
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                row = json.loads(lines[-1]) if lines else {"status": "crashed", "why": done.stderr.strip()[-160:]}
            counts[tool][row["status"]] = counts[tool].get(row["status"], 0) + 1
            if row["status"] in ("ok", "unpruned"):
                per = row["seconds"] / row["params_before"] * 1e9
                size = f"  ({row['params_before'] / 1e6:.0f}M params, {per:.1f} s per 1e9 params)" if args.scale else ""
                print(
                    f"{name:13s} {tool:13s} {row['status']:9s} {row['params']:7.2f} {row['macs']:6.2f} "
                    f"{row['seconds']:7.2f} {row['added_mb']:6.1f}  {row['onnx']}{size}"
                )
            else:
                print(f"{name:13s} {tool:13s} {row['status']:9s} {row.get('why', '')}")
    for tool, c in counts.items():
        print(f"{tool}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + f" of {len(names)}")


if __name__ == "__main__":
    main()
