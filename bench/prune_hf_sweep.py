"""Every ``transformers`` architecture with a causal-LM, image- or sequence-classification head, pruned.

For each model type of those three Auto mappings (a few hundred), the default config is shrunk
generically (hidden 64, 2 layers, 4 heads, FFN 128, small vocabulary and images; nothing chosen per
family), the model is built with random weights, wrapped so that ``forward(x)`` returns the logits,
and run on ``input_ids`` or ``pixel_values`` (whichever it takes). Models that do not build or run
unpruned from such a config are counted apart: they say nothing about pruning. The rest are pruned
with ``sk.apply_(model, ChannelPruneConfig(ratio=0.5), example_inputs=x)`` and checked as the
issue's hidden set will be: it must run on another batch size with the same output shape and keep
at most 80% of its parameters.

- ok: pruned, runs, same shapes, <= 0.8x params;  weak: runs, but keeps more than 0.8x;
- refused: slimkit raised;  broken: the pruned model fails or changes its output shape;
- not buildable / not runnable: the shrunken config does not make a working unpruned model.

``--save`` also writes each pruned model as a ``save_pretrained`` folder (reloaded and compared), and
the same with the ratio not rounded to whole config units (the baseline; ``--ratio 0.3`` splits 4 heads
unevenly).

Run: ``.venv/bin/python bench/prune_hf_sweep.py`` (about 25 minutes, one thread; ``--types`` for a few).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import signal
import sys
import warnings

import torch
from torch import nn

SMALL = {  # every int field of these names that a config has is set to this value
    **dict.fromkeys("hidden_size d_model n_embd dim".split(), 64),
    **dict.fromkeys("num_hidden_layers num_layers n_layer n_layers encoder_layers decoder_layers".split(), 2),
    **dict.fromkeys("num_attention_heads n_head n_heads num_heads encoder_attention_heads".split(), 4),
    **dict.fromkeys("decoder_attention_heads num_local_experts num_experts".split(), 4),
    **dict.fromkeys("intermediate_size ffn_dim d_ff encoder_ffn_dim decoder_ffn_dim hidden_dim d_inner".split(), 128),
    **dict.fromkeys("n_inner".split(), 128),
    **dict.fromkeys("head_dim v_head_dim kv_lora_rank".split(), 16),
    **dict.fromkeys("rotary_dim qk_rope_head_dim qk_nope_head_dim".split(), 8),
    "embed_dim": 32,
    "num_key_value_heads": 2,
    "moe_intermediate_size": 32,
    **dict.fromkeys("num_experts_per_tok moe_topk n_group topk_group".split(), 2),  # of the 4 experts
    "n_routed_experts": 4,
    "q_lora_rank": 24,
    "vocab_size": 256,
    "max_position_embeddings": 64,
    "image_size": 32,
    "patch_size": 4,
    "num_channels": 3,
    "num_labels": 5,
}
INPUTS = (
    ("input_ids", lambda: torch.randint(1, 200, (2, 16))),
    ("pixel_values", lambda: torch.randn(2, 3, 32, 32)),
    ("pixel_values", lambda: torch.randn(2, 3, 64, 64)),
    ("pixel_values", lambda: torch.randn(2, 3, 224, 224)),
)


class Logits(nn.Module):
    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.m, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.m(**{self.key: x})
        return out.logits if getattr(out, "logits", None) is not None else out[0]


def model_types() -> dict[str, str]:
    from transformers.models.auto import modeling_auto as auto

    out: dict[str, str] = {}
    for mapping in (
        auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    ):
        for model_type, cls in mapping.items():
            if isinstance(cls, str):
                out.setdefault(model_type, cls)
    return dict(sorted(out.items()))


def build(model_type: str, class_name: str) -> tuple[nn.Module, torch.Tensor] | str:
    """The wrapped model and an input it runs on, or why there is none."""
    import transformers

    config = transformers.AutoConfig.for_model(model_type)
    # each layer count before shrinking -> after (per-layer lists such as layer_types must follow it)
    counts = {v: SMALL[k] for k, v in vars(config).items() if "layer" in k and k in SMALL and isinstance(v, int)}
    for k, v in SMALL.items():
        if isinstance(getattr(config, k, None), int) and not isinstance(getattr(config, k), bool):
            with contextlib.suppress(AttributeError, ValueError):
                setattr(config, k, v)
    for k, v in list(vars(config).items()):  # lists of layer kinds ("full_attention") or flags
        per_layer = isinstance(v, list) and all(isinstance(e, str) or e in (0, 1) for e in v)
        if per_layer and counts.get(len(v), len(v)) < len(v):
            setattr(config, k, v[: counts[len(v)]])
    if getattr(config, "use_cache", None) is True:  # hybrid models' caches refuse the wrapper's calls
        config.use_cache = False
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if isinstance(getattr(config, k, None), int) and getattr(config, k) >= SMALL["vocab_size"]:
            setattr(config, k, 0)
    torch.manual_seed(0)
    try:
        with torch.device("meta"):  # counted before any memory is taken (some shrunken configs need > 24 GB)
            size = sum(p.numel() for p in getattr(transformers, class_name)._from_config(config).parameters())
        if size > 20e6:
            return "not buildable: more than 20M parameters from the shrunken config"
        model = getattr(transformers, class_name)._from_config(config).eval()
    except Exception as exc:  # noqa: BLE001
        return f"not buildable: {str(exc)[:80]}"
    why = ""
    for key, make in INPUTS:
        wrapped, x = Logits(model, key), make()
        try:
            with torch.no_grad():
                wrapped(x), wrapped(torch.cat([x, x[:1]]))
            return wrapped, x
        except Exception as exc:  # noqa: BLE001
            why = why or f"{key}: {str(exc)[:80]}"
    return f"not runnable: {why}"


def folder(model: nn.Module, x: torch.Tensor) -> str:
    """ "yes" when the pruned model saves as a ``save_pretrained`` folder that reloads to the same
    outputs (:func:`slimkit.io.save_pretrained` checks that), else why not."""
    import tempfile

    import slimkit as sk

    with tempfile.TemporaryDirectory() as tmp:
        try:
            sk.io.save_pretrained(model, f"{tmp}/hf", example_inputs=x)
        except Exception as exc:  # noqa: BLE001
            return str(exc).split(":")[0][:60]
    return "yes"


def check(model_type: str, class_name: str, ratio: float = 0.5, save: bool = False) -> dict:
    import copy

    import slimkit as sk
    from slimkit.prune import ChannelPruneConfig, structured

    built = build(model_type, class_name)
    if isinstance(built, str):
        return {"status": built.split(":")[0], "why": built}
    model, x = built
    with torch.no_grad():
        shapes = [model(x).shape, model(torch.cat([x, x[:1]])).shape]
    before = sum(p.numel() for p in model.parameters())
    plain = None
    if save:  # the baseline: the same ratio in every group, not rounded to whole config units
        plain, units = copy.deepcopy(model), structured.config_units
        structured.config_units = lambda *_: {}
        try:
            sk.apply_(plain, ChannelPruneConfig(ratio=ratio), example_inputs=x)
        except Exception:  # noqa: BLE001
            plain = None
        finally:
            structured.config_units = units
    try:
        sk.apply_(model, ChannelPruneConfig(ratio=ratio), example_inputs=x)
    except Exception as exc:  # noqa: BLE001
        return {"status": "refused", "why": f"{type(exc).__name__}: {str(exc)[:200]}"}
    try:
        with torch.no_grad():
            got = [model(x).shape, model(torch.cat([x, x[:1]])).shape]
    except Exception as exc:  # noqa: BLE001
        return {"status": "broken", "why": str(exc)[:200]}
    kept = sum(p.numel() for p in model.parameters()) / before
    if got != shapes:
        return {"status": "broken", "why": f"output shapes {got} instead of {shapes}"}
    skipped = {k: v for k, v in sk.records(model)[-1].skipped.items() if "interface" not in v}
    row = {
        "status": "ok" if kept <= 0.8 else "weak",
        "kept": round(kept, 3),
        "skipped": dict(list(skipped.items())[:3]),
    }
    if save:
        row["folder"] = folder(model, x)
        row["plain folder"] = "refused" if plain is None else folder(plain, x)
    return row


class _Timeout(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", help="model types to run (default: all)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds per model type")
    parser.add_argument("--ratio", type=float, default=0.5, help="share of every group's units removed")
    parser.add_argument(
        "--save",
        action="store_true",
        help="also save each pruned model as a from_pretrained folder, and the same ratio not rounded to config units",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    types = model_types()
    names = args.types or list(types)

    def alarm(*_: object) -> None:
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    counts: collections.Counter[str] = collections.Counter()
    for name in names:
        signal.alarm(args.timeout)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                row = check(name, types[name], args.ratio, args.save)
        except _Timeout:
            row = {"status": "timeout"}
        except Exception as exc:  # noqa: BLE001  (the sweep goes on)
            row = {"status": "not buildable", "why": str(exc)[:100]}
        finally:
            signal.alarm(0)
        counts[row["status"]] += 1
        for key in ("folder", "plain folder"):
            counts[f"{key} yes"] += row.get(key) == "yes"
        kept = f"{row['kept']:.2f}x" if "kept" in row else "-"
        why = row.get("why") or "; ".join(f"{k}: {v}" for k, v in row.get("skipped", {}).items())
        saved = f" folder: {row['folder']} (plain: {row['plain folder']})" if "folder" in row else ""
        print(f"{name:28s} {row['status']:14s} {kept:>6s} {saved} {why[:200]}", flush=True)
    print(", ".join(f"{k} {v}" for k, v in counts.most_common() if v) + f" of {len(names)}", file=sys.stdout)


if __name__ == "__main__":
    main()
