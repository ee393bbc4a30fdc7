"""End-to-end fusion jobs behind the CLI verbs ``train-members`` and ``fuse``.

They call the library's public pieces in order, measure, and write their outputs atomically with
the resolved configuration and a ``report.json``; they never print.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.files import atomic_path, check_output
from slimkit.core.transform import records
from slimkit.evaluate import evaluate
from slimkit.fuse.distill import distill_ensemble
from slimkit.fuse.ensemble import METHODS, ensemble
from slimkit.fuse.members import best_member, train_members
from slimkit.fuse.soup import greedy_soup, uniform_soup
from slimkit.train import DistillConfig

SOUPS = ("uniform-soup", "greedy-soup")
ALL_METHODS = (*METHODS, *SOUPS)
BEST_MEMBER = "best-member"  # distill_into value: start the student from a copy of the best member

__all__ = ["ALL_METHODS", "BEST_MEMBER", "fuse_and_save", "train_members_and_save"]


def _measure(model: nn.Module, dataset: Any) -> dict[str, Any]:
    test = evaluate(model, dataset, latency=False)
    val = evaluate(model, dataset, split="val", latency=False)
    return {
        "val_accuracy": val.metrics["accuracy"],
        "test_accuracy": test.metrics["accuracy"],
        "params": test.params,
        "macs": test.macs,
    }


def train_members_and_save(
    *,
    model: str,
    data: str,
    n: int,
    output: str | Path,
    model_args: dict[str, Any] | None = None,
    from_start: bool = True,
    start_epochs: int = 8,
    epochs: int = 8,
    lr: float = 1e-3,
    finetune_lr: float | None = None,
    augment: bool | str | list[bool | str] = True,
    checkpoint: str = "last",
    bag: str | None = None,
    seed: int = 0,
    device: str | None = None,
    amp: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``n`` members (see :func:`slimkit.fuse.train_members`) and save them as ``output/member-<i>/``.

    With ``from_start`` the shared base is saved too (``output/start/``). ``output/members.json``
    holds the configuration, the kind of members (``shared-start`` for soups, ``independent`` for
    ensembles), each checkpoint's seed and validation / test accuracy, and ``best_member``: the
    index of the best member by validation accuracy (the fair baseline for a fused model). With
    ``bag`` (see :func:`slimkit.fuse.train_members`) each member also records
    ``held_out_accuracy``, its accuracy on its own validation data, and ``best_member`` is chosen
    on that (under ``bag="cv"`` the dataset's ``val`` split is training data for most members).
    """
    from slimkit import data as data_mod
    from slimkit.io import save

    skip = ("output", "force", "progress", "data_mod", "save", "device")
    config = {k: v for k, v in locals().items() if k not in skip}
    check_output(output, force)
    dataset = data_mod.load(data)
    result = train_members(
        model,
        dataset,
        n,
        model_args=model_args,
        from_start=from_start,
        start_epochs=start_epochs,
        epochs=epochs,
        lr=lr,
        finetune_lr=finetune_lr,
        augment=augment,
        checkpoint=checkpoint,
        bag=bag,
        seed=seed,
        progress=progress,
        device=device,
        amp=amp,
    )
    summary: dict[str, Any] = {"config": config, "kind": result.kind, "members": []}
    best, held_out = result.best()  # each member on its own validation data (the common val unless bagged)
    with atomic_path(output, force=force) as tmp:
        tmp.mkdir()
        if result.start is not None:
            save(result.start, tmp / "start", example=dataset.example)
            summary["start"] = {"path": "start", **_measure(result.start, dataset)}
        for i, (member, history, s) in enumerate(zip(result.members, result.histories, result.seeds, strict=True)):
            name = f"member-{i}"
            history_json = json.dumps(dataclasses.asdict(history), indent=2) + "\n"
            save(member, tmp / name, example=dataset.example, extra_files={"history.json": history_json})
            summary["members"].append({"path": name, "seed": s, **_measure(member, dataset)})
            if bag is not None:
                summary["members"][-1]["held_out_accuracy"] = held_out[i]
        summary["best_member"] = best
        (tmp / "members.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def fuse_and_save(
    *,
    checkpoints: list[str | Path],
    method: str,
    output: str | Path,
    data: str | None = None,
    distill_into: str | None = None,
    student_args: dict[str, Any] | None = None,
    distill_epochs: int = 10,
    temperature: float = DistillConfig.temperature,
    alpha: float = DistillConfig.alpha,
    lr: float | None = None,
    l2: float = 1e-2,
    seed: int = 0,
    device: str | None = None,
    amp: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fuse checkpoints with ``method`` (an ensemble method or a soup), optionally distil, save ``output``.

    ``output`` is the final model's checkpoint (the student when ``distill_into`` is given) with a
    ``report.json`` of every member's and the fused model's accuracy and MACs (measured when
    ``data`` is given) and ``best_member``, the index of the member with the best *validation*
    accuracy: the baseline a fused model must beat. ``distill_into`` is a zoo model name (a new
    student of that model, ``student_args``) or ``"best-member"`` (a copy of the best member).
    Every result (ensembles included) reloads with ``slimkit.load(output)``.
    """
    from slimkit import data as data_mod
    from slimkit.io import load, save
    from slimkit.zoo import create_for

    if method not in ALL_METHODS:
        raise SlimkitError(f"unknown fusion method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    if len(checkpoints) < 2:
        raise SlimkitError(f"fusion needs at least 2 checkpoints, got {len(checkpoints)}")
    resolved = [Path(c).resolve() for c in checkpoints]
    repeated = sorted({str(c) for c, r in zip(checkpoints, resolved, strict=True) if resolved.count(r) > 1})
    if repeated:
        raise SlimkitError(f"{', '.join(repeated)} is given more than once; fusion needs different members")
    if method in ("weighted", "select", "stack", "greedy-soup") and data is None:
        raise SlimkitError(f"method {method!r} is fitted on validation data: pass --data")
    if distill_into is not None and data is None:
        raise SlimkitError("--distill-into trains a student on data: pass --data")
    if distill_into == BEST_MEMBER and student_args:
        raise SlimkitError("--student-arg does not apply to --distill-into best-member (a copy of the member)")
    if lr is None:  # a copy of a trained member is fine-tuned gently; a new student learns from scratch
        lr = 3e-4 if distill_into == BEST_MEMBER else 1e-3
    config = {
        "checkpoints": [str(c) for c in checkpoints],
        "method": method,
        "data": data,
        "distill_into": distill_into,
        "student_args": student_args or {},
        "distill_epochs": distill_epochs,
        "temperature": temperature,
        "alpha": alpha,
        "lr": lr,
        "l2": l2,
        "seed": seed,
    }
    check_output(output, force)
    members = [load(c) for c in checkpoints]
    dataset = data_mod.load(data) if data is not None else None
    if method == "uniform-soup":
        fused = uniform_soup(members, bn_data=dataset)
    elif method == "greedy-soup":
        fused = greedy_soup(members, dataset)
    else:
        fused = ensemble(members, method, val=dataset, l2=l2)
    report: dict[str, Any] = {"config": config}
    best = None
    if dataset is not None:
        best = best_member(members, dataset)[0]
        report["members"] = [
            {"path": str(c), **_measure(m, dataset)} for c, m in zip(checkpoints, members, strict=True)
        ]
        report["best_member"] = best
        report["fused"] = _measure(fused, dataset)
    report["records"] = [r.to_dict() for r in records(fused)]
    final = fused
    if distill_into is not None:
        if distill_into == BEST_MEMBER:
            assert best is not None  # distill_into needs data (checked above)
            student = copy.deepcopy(members[best])
        else:
            student = create_for(distill_into, dataset, **(student_args or {}))
        cfg = DistillConfig(temperature=temperature, alpha=alpha)
        history = distill_ensemble(
            student,
            fused,
            dataset,
            cfg,
            epochs=distill_epochs,
            lr=lr,
            seed=seed,
            progress=progress,
            device=device,
            amp=amp,
        )
        distilled = records(student)[-1].details
        report["distilled"] = {
            **_measure(student, dataset),
            "best_val_accuracy": history.best_val_accuracy,
            "start_val_accuracy": distilled["start_val_accuracy"],
            "teacher_val_accuracy": distilled["teacher_val_accuracy"],
        }
        final = student
    example = dataset.example if dataset is not None else None
    save(final, output, example=example, force=force, extra_files={"report.json": json.dumps(report, indent=2) + "\n"})
    return report
