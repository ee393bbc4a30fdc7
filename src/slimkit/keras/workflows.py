"""The CLI verbs' jobs for ``.keras`` files: load, transform natively in Keras, measure, save.

Each function is what ``slimkit VERB model.keras ...`` runs (the CLI only parses and prints).
Measurements go through the model's ONNX export and ONNX Runtime (:func:`evaluate`), with the
dataset laid out for the model (channels-last images), so reports compare like with like.
Options a verb has only for PyTorch models raise a one-line error naming what Keras supports.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimkit.core.errors import SlimkitError
from slimkit.core.files import atomic_path, check_output
from slimkit.core.transform import TransformRecord
from slimkit.evaluate.report import Report
from slimkit.keras._graph import load
from slimkit.keras.cost import count_macs, count_params, group_widths
from slimkit.keras.data import arrays, for_model
from slimkit.keras.files import export_onnx, save
from slimkit.train import DistillConfig

__all__ = [
    "evaluate",
    "export_file",
    "fuse_file",
    "lowrank_file",
    "prune_file",
    "quantize_file",
    "simplify_file",
    "unsupported",
]


def unsupported(verb: str, what: str, supported: str) -> SlimkitError:
    """The error for an option a verb has only for PyTorch models."""
    return SlimkitError(f"slimkit {verb}: {what} is not available for .keras models; supported for Keras: {supported}")


def evaluate(
    model: Any,
    data: Any,
    *,
    split: str = "test",
    latency: bool = True,
    batch_sizes: tuple[int, ...] = (1, 64),
    latency_runs: int = 30,
    runtime: str = "onnxruntime",
) -> Report:
    """:func:`slimkit.evaluate` of a Keras model: quality and latency on ``runtime`` of its fp32 ONNX
    export on ``split`` (data laid out for the model); params and MACs of the Keras model."""
    from slimkit.evaluate import evaluate as evaluate_onnx
    from slimkit.io.onnx import OnnxModel

    model = load(model)
    ds = for_model(data, model)
    with tempfile.TemporaryDirectory(prefix="slimkit-keras-") as tmp:
        path = export_onnx(model, Path(tmp) / f"{model.name}.onnx")
        report = evaluate_onnx(
            OnnxModel(path, runtime=runtime),
            ds,
            split=split,
            latency=latency,
            batch_sizes=batch_sizes,
            latency_runs=latency_runs,
        )
    report.model = f"{model.name} (Keras, fp32 ONNX)"
    report.params, report.macs = count_params(model), count_macs(model)
    return report


def _write(model: Any, output: Path, report: dict[str, Any] | None, force: bool) -> Path:
    """``output.keras`` as a file, or a folder with ``model.keras`` (+ ``report.json``)."""
    import json

    if output.suffix.lower() == ".keras":
        return save(model, output, force=force)
    with atomic_path(output, force=force) as tmp:  # the folder appears whole, or the old one stays
        tmp.mkdir()
        save(model, tmp / "model.keras")
        if report is not None:
            (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return output


def _recover(original: Any, model: Any, data: Any, epochs: int, lr: float, distill: bool) -> None:
    from slimkit.keras.distill import fit

    ds = for_model(data, model)
    fit(
        model,
        arrays(ds, "train"),
        arrays(ds, "val"),
        epochs=epochs,
        lr=lr,
        teacher=original if distill else None,
        augment=ds.augment,
    )


def _before_after(original: Any, model: Any, data: Any, records: list[TransformRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {"records": records}
    if data is not None:
        out["before"] = evaluate(original, data, latency=False)
        out["after"] = evaluate(model, data, latency=False)
    else:
        out["before"] = out["after"] = None
    out["params"] = (count_params(original), count_params(model))
    out["macs"] = (count_macs(original), count_macs(model))
    return out


def _report(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "before": result["before"].to_dict() if result["before"] else None,
        "after": result["after"].to_dict() if result["after"] else None,
        "records": [r.to_dict() if hasattr(r, "to_dict") else str(r) for r in result["records"]],
        "params": result["params"],
        "macs": result["macs"],
    }


def prune_file(
    path: str | Path,
    output: str | Path,
    *,
    ratio: float = 0.5,
    importance: str = "l2",
    target_macs: float | None = None,
    target_params: float | None = None,
    round_to: int | str = 1,
    protect: Sequence[str] = (),
    data: Any = None,
    finetune_epochs: int = 0,
    distill: bool = True,
    lr: float = 5e-4,
    force: bool = False,
) -> dict[str, Any]:
    """Prune a ``.keras`` model's Conv filters / Dense units (uniform ``ratio`` or a MACs / params
    budget), optionally fine-tune with Keras ``fit`` (distilled from the original), save ``output``."""
    from slimkit.core.transform import apply_, records
    from slimkit.prune import ChannelPruneConfig

    output = Path(output)
    check_output(output, force)
    model = load(path)
    if finetune_epochs and data is None:
        raise SlimkitError("fine-tuning (--finetune-epochs) needs --data")
    cfg = ChannelPruneConfig(
        ratio=ratio,
        importance=importance,
        target_macs=target_macs,
        target_params=target_params,
        round_to=round_to,
        protected=list(protect),
    )
    small = apply_(model, cfg)
    if finetune_epochs:
        _recover(model, small, data, finetune_epochs, lr, distill)
    result = _before_after(model, small, data, records(small)[-1:])
    result["output"] = _write(small, output, _report(result), force)
    return result


def lowrank_file(
    path: str | Path,
    output: str | Path | None,
    *,
    ratio: float,
    layers: Sequence[str] | None,
    data: Any,
    samples: int = 2000,
    epochs: int = 0,
    lr: float = 1e-4,
    force: bool = False,
) -> dict[str, Any]:
    """Narrow Dense layers of a ``.keras`` model to ``ratio`` of their units by activation PCA
    (:func:`slimkit.keras.pca_dense`, the next Dense refit); every narrowable Dense without ``layers``."""
    from slimkit.keras._graph import Graph
    from slimkit.keras.prune import pca_dense

    model = load(path)
    output = Path(output) if output else Path(path).with_name(f"{Path(path).stem}-compressed.keras")
    check_output(output, force)
    if not 0 < ratio < 1:
        raise SlimkitError(f"--lowrank must be in (0, 1) (the share of units kept), got {ratio}")
    ds = for_model(data, model)
    x = arrays(ds, "train")[0][:samples]
    dense = [c.name for c in Graph(model).calls if c.kind == "Dense"]
    names = list(layers) if layers else dense
    small, records, skipped = model, [], {}
    for name in names:
        units = small.get_layer(name).units if name in dense else 0
        try:
            small, rec = pca_dense(small, name, max(1, round(units * ratio)), x)
            records.append(rec)
        except SlimkitError as exc:
            if layers:
                raise
            skipped[name] = str(exc)
    if not records:
        raise SlimkitError(f"no Dense layer of {model.name} can be narrowed: " + "; ".join(skipped.values()))
    records[-1].skipped.update(skipped)
    if epochs:
        _recover(model, small, data, epochs, lr, distill=False)
    result = _before_after(model, small, data, records)
    result["output"] = _write(small, output, _report(result), force)
    return result


def simplify_file(
    path: str | Path,
    output: str | Path,
    *,
    fold: bool = False,
    remove: Sequence[str] = (),
    remove_types: Sequence[str] = (),
    repair: str = "transfer",
    data: Any = None,
    epochs: int = 0,
    lr: float = 1e-3,
    force: bool = False,
) -> dict[str, Any]:
    """Remove layers (by name or Keras class name) with shape repair and / or fold BatchNormalization
    of a ``.keras`` model; optionally fine-tune; save ``output``."""
    from slimkit.core.transform import apply_, records
    from slimkit.simplify import FoldConfig, RemoveLayersConfig

    output = Path(output)
    check_output(output, force)
    model = load(path)
    if not (fold or remove or remove_types):
        raise SlimkitError("give --fold, --remove NAME or --remove-type CLASS (Keras class names, e.g. MaxPooling2D)")
    if epochs and data is None:
        raise SlimkitError("fine-tuning (--epochs) needs --data")
    small = model
    if remove or remove_types:
        small = apply_(small, RemoveLayersConfig(names=list(remove), types=list(remove_types), repair=repair))
    if fold:
        small = apply_(small, FoldConfig())
    if epochs:
        _recover(model, small, data, epochs, lr, distill=False)
    result = _before_after(model, small, data, records(small))
    result["output"] = _write(small, output, _report(result), force)
    return result


def export_file(path: str | Path, output: str | Path, *, data: Any = None, force: bool = False) -> dict[str, Any]:
    """The ``.keras`` model as ONNX; with ``data``, top-1 agreement of ONNX Runtime with Keras on its test split."""
    import numpy as np
    import torch

    from slimkit.io.onnx import OnnxModel

    model = load(path)
    output = export_onnx(model, output, force=force)
    out: dict[str, Any] = {"output": output}
    if data is not None:
        x = arrays(for_model(data, model), "test")[0]
        onnx = OnnxModel(output)
        a = np.asarray(model.predict(x, batch_size=256, verbose=0))
        b = np.concatenate([onnx(torch.from_numpy(xb)).numpy() for xb in np.array_split(x, -(-len(x) // 256))])
        out["top1_agreement"] = float((a.argmax(-1) == b.argmax(-1)).mean())
        out["max_abs_diff"] = float(np.abs(a - b).max())
    return out


def quantize_file(path: str | Path, data: Any, config: Any, output: str | Path, *, force: bool = False) -> Any:
    """int8 ONNX of a ``.keras`` model: its fp32 ONNX export quantized by :func:`slimkit.compress.quantize`
    (static calibration and the accuracy check on the dataset laid out for the model)."""
    from slimkit.compress import quantize

    model = load(path)
    check_output(output, force)
    ds = for_model(data, model)
    with tempfile.TemporaryDirectory(prefix="slimkit-keras-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "model.onnx")
        return quantize(fp32, ds, config, output, force=force)


def distill_file(
    path: str | Path,
    output: str | Path,
    *,
    data: Any,
    width: float = 0.5,
    temperature: float = DistillConfig.temperature,
    alpha: float = DistillConfig.alpha,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Distil a ``.keras`` teacher into a student derived from it (every prunable group narrowed to
    ``width`` by l2 importance, weights kept) with Keras ``fit``; save the student to ``output``."""
    from slimkit.keras.distill import distill
    from slimkit.keras.prune import prune_units

    output = Path(output)
    check_output(output, force)
    if not 0 < width <= 1:
        raise SlimkitError(f"--width must be in (0, 1], got {width}")
    teacher = load(path)
    student, derive = prune_units(teacher, dict.fromkeys(group_widths(teacher), 1 - width) if width < 1 else 0.0)
    cfg = DistillConfig(temperature=temperature, alpha=alpha)
    student, record = distill(student, teacher, for_model(data, teacher), cfg, epochs=epochs, lr=lr, seed=seed)
    result = _before_after(teacher, student, data, [derive, record])
    result["output"] = _write(student, output, _report(result), force)
    return result


def fuse_file(
    paths: Sequence[str | Path], output: str | Path, *, method: str, data: Any = None, force: bool = False
) -> dict[str, Any]:
    """Fuse ``.keras`` members (``slimkit fuse a.keras b.keras ...``): an ensemble (mean, vote,
    weighted) or a soup (uniform-soup, greedy-soup); with ``data``, compared on the test split with
    the member that is best on validation."""
    from slimkit.keras.fuse import METHODS, ensemble, greedy_soup, uniform_soup

    output = Path(output)
    check_output(output, force)
    if method not in (*METHODS, "uniform-soup", "greedy-soup"):
        raise unsupported("fuse", f"--method {method}", f"{', '.join(METHODS)}, uniform-soup, greedy-soup")
    if data is None and method in ("weighted", "greedy-soup"):
        raise SlimkitError(f"--method {method} is fitted on the validation split: pass --data")
    members = [load(p) for p in paths]
    ds = for_model(data, members[0]) if data is not None else None
    if method == "uniform-soup":
        fused, record = uniform_soup(members, bn_data=ds)
    elif method == "greedy-soup":
        fused, record = greedy_soup(members, ds, bn_data=ds)
    else:
        fused, record = ensemble(members, method, val=ds)
    best = 0
    if data is not None:  # the baseline: the member a user would pick without fusing (best on validation)
        val = [evaluate(m, data, split="val", latency=False).metrics["accuracy"] for m in members]
        best = max(range(len(members)), key=lambda i: val[i])
        record.details["member_val_accuracy"] = val
    result = _before_after(members[best], fused, data, [record])
    result["output"] = _write(
        fused,
        output,
        {"method": method, "members": [str(p) for p in paths], "best_member": best, **_report(result)},
        force,
    )
    return result
