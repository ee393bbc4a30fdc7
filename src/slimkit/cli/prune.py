"""``slimkit prune``: structured pruning (or sparsity) of a checkpoint, with optional fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import Factory, Force, ModelPath, TrustPickle, console, is_keras, print_keras_result


@app.command("prune")
def prune_command(
    model: ModelPath,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Checkpoint folder to write (a .keras model: .keras file or folder).")
    ],
    ratio: Annotated[float, typer.Option(help="Share of channels/units removed per group.")] = 0.5,
    importance: Annotated[
        str, typer.Option(help="l1, l2, taylor, bn_scale, activation, apoz, output or random.")
    ] = "l2",
    aggregate: Annotated[
        str, typer.Option(help="Combine a group's layers: 'normalized' (equal say) or 'sum' (norm of all its weights).")
    ] = "normalized",
    target_macs: Annotated[float | None, typer.Option(help="Keep this share of the MACs (e.g. 0.25).")] = None,
    target_params: Annotated[float | None, typer.Option(help="Keep this share of the parameters.")] = None,
    global_ranking: Annotated[bool, typer.Option("--global", help="Rank units of all layers together.")] = False,
    refit: Annotated[
        bool, typer.Option(help="Refit the Linear layers reading pruned units by least squares on calibration data.")
    ] = False,
    round_to: Annotated[
        str, typer.Option(help="Keep widths multiples of this; 'auto' = this CPU's SIMD channel block (8 or 16).")
    ] = "1",
    protect: Annotated[list[str] | None, typer.Option(help="Layer (or re:pattern) never pruned; repeatable.")] = None,
    sparsity: Annotated[float | None, typer.Option(help="Unstructured magnitude sparsity instead (e.g. 0.9).")] = None,
    nm: Annotated[str | None, typer.Option(help="N:M sparsity instead, e.g. 2:4.")] = None,
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Dataset for importance, fine-tuning, accuracy.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Prune in this many rounds (fine-tuning in between).")] = 1,
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after each round.")] = 0,
    distill: Annotated[bool, typer.Option(help="Fine-tune with distillation from the unpruned model.")] = True,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 5e-4,
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Prune MODEL and save the smaller checkpoint with a before/after report.json."""
    from slimkit.core.errors import SlimkitError
    from slimkit.evaluate import compare
    from slimkit.prune import ChannelPruneConfig, MagnitudePruneConfig, NMSparsityConfig
    from slimkit.workflows import prune_checkpoint

    if sparsity is not None and nm is not None:
        raise SlimkitError("choose one of --sparsity and --nm")
    if is_keras(model):
        from slimkit.keras.workflows import prune_file, unsupported

        supported = (
            "--ratio, --target-macs, --target-params, --importance l1/l2, --round-to, --protect, --data, "
            "--finetune-epochs, --distill, --lr"
        )
        torch_only = {
            "--sparsity": sparsity is not None,
            "--nm": nm is not None,
            "--global": global_ranking,
            "--steps": steps != 1,
            "--aggregate": aggregate != "normalized",
            "--refit": refit,
        }
        for flag, used in torch_only.items():
            if used:
                raise unsupported("prune", flag, supported)
        if importance not in ("l1", "l2"):
            raise unsupported("prune", f"--importance {importance}", supported)
        if round_to != "auto" and not round_to.isdigit():
            raise SlimkitError(f"--round-to takes a whole number or 'auto', got {round_to!r}")
        result = prune_file(
            model,
            output,
            ratio=ratio,
            importance=importance,
            target_macs=target_macs,
            target_params=target_params,
            round_to=round_to if round_to == "auto" else int(round_to),
            protect=protect or [],
            data=data,
            finetune_epochs=finetune_epochs,
            distill=distill,
            lr=lr,
            force=force,
        )
        print_keras_result(result)
        return
    if sparsity is not None:
        config = MagnitudePruneConfig(sparsity=sparsity, protected=protect or [])
    elif nm is not None:
        n, _, m = nm.partition(":")
        if not (n.isdigit() and m.isdigit()):
            raise SlimkitError(f"--nm takes N:M such as 2:4, got {nm!r}")
        config = NMSparsityConfig(n=int(n), m=int(m), protected=protect or [])
    else:
        if round_to != "auto" and not round_to.isdigit():
            raise SlimkitError(f"--round-to takes a whole number or 'auto', got {round_to!r}")
        config = ChannelPruneConfig(
            ratio=ratio,
            importance=importance,
            aggregate=aggregate,
            target_macs=target_macs,
            target_params=target_params,
            global_ranking=global_ranking,
            refit=refit,
            round_to=round_to if round_to == "auto" else int(round_to),
            protected=protect or [],
        )
    result = prune_checkpoint(
        model,
        output,
        config=config,
        data=data,
        steps=steps,
        finetune_epochs=finetune_epochs,
        distill=distill,
        lr=lr,
        factory=factory,
        trust_pickle=trust_pickle,
        force=force,
    )
    console.print(compare(result["before"], result["after"]))
    for record in result["records"]:
        for layer, why in record.skipped.items():
            console.print(f"[yellow]skipped[/yellow] {layer}: {why}")
    console.print(f"saved {output}")
