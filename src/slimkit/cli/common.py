"""Shared CLI helpers: model loading flags, key=value arguments, rich output."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from slimkit.core.errors import SlimkitError
from slimkit.core.files import protect, unprotect_all

console = Console()
err_console = Console(stderr=True)

ModelPath = Annotated[
    Path, typer.Argument(help="Checkpoint folder, .safetensors, .pt2, .onnx, a Keras 3 .keras file, or a pickle.")
]
Factory = Annotated[
    str | None, typer.Option(help="'package.module:function' that builds the model (for .safetensors and pickles).")
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow loading a torch.save pickle (it can run code). Use only for files you trust."
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
Device = Annotated[
    str | None,
    typer.Option(help="Where to fine-tune and evaluate: auto, cpu, cuda, cuda:N or mps (default: cpu)."),
]
Amp = Annotated[str | None, typer.Option(help="Mixed-precision fine-tuning: bf16, or fp16 (CUDA only).")]
Runtime = Annotated[
    str,
    typer.Option(
        help="onnxruntime or openvino (pip install 'slimkit[openvino]'): the runtime latency is measured on; "
        "'slimkit env' lists those installed."
    ),
]
TaskName = Annotated[
    str | None,
    typer.Option(
        help="What the model is for: classification, binary, regression, ranking, dense, tokens, causal-lm, "
        "seq2seq or fidelity (default: the data's, else classification)."
    ),
]
DataName = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Dataset name (see 'slimkit env'), a .npz file, a folder of class sub-folders of images, or "
        "'package.module:function' returning your "
        "DataLoaders (a dict of train / val / test, a tuple, or slimkit Loaders).",
    ),
]


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: ``lo`` / ``hi`` bounds, each closed unless ``*_open``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        lo = None if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        hi = None if self.hi is None else f"{'<' if self.hi_open else '<='} {self.hi:g}"
        if lo and hi and not self.lo_open and not self.hi_open:
            return f"in [{self.lo:g}, {self.hi:g}]"
        return " and ".join(x for x in (lo, hi) if x)


POSITIVE, COUNT, NON_NEGATIVE = Range(0, lo_open=True), Range(1), Range(0)
SHARE, KEPT_SHARE = Range(0, 1, hi_open=True), Range(0, 1, lo_open=True)  # removed: [0, 1); kept: (0, 1]
# One rule per option name for every verb; (verb, name) entries override. Every float must also be finite.
OPTION_RANGES: dict[str | tuple[str, str], Range] = {
    "lr": POSITIVE,
    "finetune_lr": POSITIVE,
    "temperature": POSITIVE,
    "drop_blocks": POSITIVE,
    "alpha": Range(0, 1),
    "beta": NON_NEGATIVE,
    "l2": NON_NEGATIVE,
    "max_drop": NON_NEGATIVE,
    "val_batches": COUNT,
    "steps_per_epoch": COUNT,
    "epochs": COUNT,
    "start_epochs": NON_NEGATIVE,
    "finetune_epochs": NON_NEGATIVE,
    "batch_size": COUNT,
    "patience": COUNT,
    "runs": COUNT,
    "samples": COUNT,
    "steps": COUNT,
    "rounds": COUNT,
    "trials": NON_NEGATIVE,
    "n": COUNT,
    "depth": COUNT,
    "seed": Range(0, 2**32 - 1),
    "cluster": Range(2, 256),
    "ratio": SHARE,
    "sparsity": SHARE,
    "target_macs": KEPT_SHARE,
    "target_params": KEPT_SHARE,
    "lowrank": KEPT_SHARE,
    "energy": KEPT_SHARE,
    "embedding_keep": KEPT_SHARE,
    "width": KEPT_SHARE,
    ("compress", "epochs"): NON_NEGATIVE,
    ("optimize", "finetune_epochs"): COUNT,
    ("simplify", "epochs"): NON_NEGATIVE,
}


OUTPUT_OPTIONS = ("output", "json_out")


def check_options(verb: str, values: dict[str, Any]) -> None:
    """Refuse NaN / infinite floats and out-of-range numbers among a verb's parsed options (one line each)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise SlimkitError(f"{flag} must be a finite number, got {value}")
        rule = OPTION_RANGES.get((verb, name), OPTION_RANGES.get(name))
        if rule is not None and value not in rule:
            raise SlimkitError(f"{flag} must be {rule}, got {value:g}")


def validated(verb: str, command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with :func:`check_options` run on its arguments first (typer reads the original's signature)."""
    signature = inspect.signature(command)

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        check_options(verb, bound.arguments)
        unprotect_all()
        for name, value in bound.arguments.items():  # every path the verb reads is an input: never replaced
            if name not in OUTPUT_OPTIONS:
                protect(*(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str | Path)))
        return command(*args, **kwargs)

    return run


def parse_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["width=0.5", "cell=gru"]`` -> ``{"width": 0.5, "cell": "gru"}`` (values read as JSON when they can be)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlimkitError(f"--arg takes key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def is_keras(path: Path) -> bool:
    """Whether the verb's model argument is a Keras 3 ``.keras`` file (handled by ``slimkit.keras.workflows``)."""
    return path.suffix.lower() == ".keras"


def is_encoder_folder(path: Path) -> bool:
    """Whether the model argument is a sentence encoder's folder (sentence-transformers, or a Hugging Face
    folder of a bare ``...Model``): handled by ``slimkit.text``. A folder of a model with a task head
    (``BertForSequenceClassification``...) loads with :func:`slimkit.io.load` like any other model."""
    from slimkit.io.pretrained import architecture, folder_config, is_pretrained_folder

    if not is_pretrained_folder(path):
        return False
    config = folder_config(path)
    name, model_type = architecture(config), str(config.get("model_type", ""))
    if (path / "modules.json").is_file() or name is None or model_type.startswith("slimkit_"):
        return True  # slimkit_<family>: written by slimkit.text
    from slimkit.core.optional import require

    auto = require("transformers.models.auto.modeling_auto", extra="text", package="transformers")
    return name == auto.MODEL_MAPPING_NAMES.get(model_type)


def print_keras_result(result: dict[str, Any]) -> None:
    """Before / after figures of a Keras job (``slimkit.keras.workflows``), and what was skipped."""
    from slimkit.evaluate import compare

    if result.get("before") is not None:
        console.print(compare(result["before"], result["after"]))
    else:
        (p0, p1), (m0, m1) = result["params"], result["macs"]
        console.print(f"params {p0:,} -> {p1:,}; MACs {m0:,} -> {m1:,}")
    for record in result["records"]:
        console.print(str(record), markup=False)  # what changed, and every skipped layer with the reason
    console.print(f"saved {result['output']}")


def load_model(path: Path, factory: str | None, trust_pickle: bool) -> Any:
    if is_keras(path):
        raise SlimkitError(f"{path}: this command does not take .keras models yet")
    from slimkit.io import load

    return load(path, factory=factory, trust_pickle=trust_pickle)
