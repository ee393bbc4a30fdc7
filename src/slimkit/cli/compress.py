"""``slimkit compress``: low-rank factorization or weight sharing of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import Factory, Force, ModelPath, TrustPickle, console, is_keras, load_model, print_keras_result
from slimkit.core.errors import SlimkitError


@app.command("compress")
def compress_command(
    model: ModelPath,
    lowrank: Annotated[float | None, typer.Option(help="Low-rank: keep this fraction of each layer's rank.")] = None,
    energy: Annotated[float | None, typer.Option(help="Low-rank: keep this fraction of the spectrum's energy.")] = None,
    method: Annotated[str, typer.Option(help="Low-rank method: svd, pca (data-aware) or pca-factor.")] = "svd",
    cluster: Annotated[int | None, typer.Option(help="Weight sharing: k centroids per layer (2..256).")] = None,
    embedding_bits: Annotated[
        int | None, typer.Option(help="Embedding tables: row-wise int8 or int4 (8 or 4).")
    ] = None,
    embedding_keep: Annotated[
        float | None,
        typer.Option(help="Embedding tables: ids outside this most used fraction (counted on --data) share one row."),
    ] = None,
    layer: Annotated[list[str] | None, typer.Option(help="Layer name or re:pattern (repeatable; default all).")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset for pca calibration / fine-tuning.")] = None,
    samples: Annotated[int, typer.Option(help="Training samples used to calibrate pca.")] = 2000,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs afterwards (tied centroids when clustering).")] = 0,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 1e-4,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Checkpoint folder to write.")] = None,
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Factorize (--lowrank / --energy), cluster (--cluster), quantize the embedding tables
    (--embedding-bits) or let their rare ids share a row (--embedding-keep) of MODEL; save a checkpoint."""
    from torch import nn

    import slimkit as sk
    from slimkit.compress import ClusterConfig, EmbeddingBucketConfig, EmbeddingQuantConfig, LowRankConfig, tied
    from slimkit.evaluate import count_params

    if sum(v is not None for v in (lowrank, energy, cluster, embedding_bits, embedding_keep)) != 1:
        raise SlimkitError("give exactly one of --lowrank, --energy, --cluster, --embedding-bits or --embedding-keep")
    if epochs and data is None:
        raise SlimkitError("fine-tuning (--epochs) needs --data")
    layers = tuple(layer) if layer else None
    if is_keras(model):
        from slimkit.keras.workflows import lowrank_file, unsupported

        supported = "--lowrank RATIO --method pca --data D (Dense layers; --layer, --samples, --epochs, --lr)"
        if lowrank is None:
            raise unsupported("compress", "--energy / --cluster / --embedding-bits", supported)
        if method != "pca":
            raise unsupported("compress", f"--method {method}", supported)
        if data is None:
            raise SlimkitError("--method pca is data-aware: pass --data for calibration")
        result = lowrank_file(
            model, output, ratio=lowrank, layers=layers, data=data, samples=samples, epochs=epochs, lr=lr, force=force
        )
        print_keras_result(result)
        return
    if cluster is not None:
        cfg: sk.Config = ClusterConfig(k=cluster, layers=layers)
    elif embedding_bits is not None:
        cfg = EmbeddingQuantConfig(bits=embedding_bits, layers=layers)
    elif embedding_keep is not None:
        cfg = EmbeddingBucketConfig(keep=embedding_keep, layers=layers)
        if data is None:
            raise SlimkitError("--embedding-keep counts how often each id is used: pass --data")
    else:
        cfg = LowRankConfig(method=method, ratio=lowrank, energy=energy, layers=layers)
        if method != "svd" and data is None:
            raise SlimkitError(f"--method {method} is data-aware: pass --data for calibration")
    module = load_model(model, factory, trust_pickle)
    if not isinstance(module, nn.Module):
        raise SlimkitError(f"{model} is not a PyTorch model; compress takes a checkpoint, .safetensors or .pt2")
    dataset = sk.data.load(data) if data else None
    output = output or model.with_name(f"{model.stem}-compressed")
    before = count_params(module)
    x = dataset.splits["train"][0][: None if embedding_keep is not None else samples] if dataset else None
    sk.apply_(module, cfg, example_inputs=x)
    record = sk.records(module)[-1]
    console.print(str(record), markup=False)
    for name, info in record.details.get("layers", {}).items():
        console.print(f"  {name}: {info}", markup=False)
    if embedding_bits is not None or embedding_keep is not None:
        size = record.details["bytes"]
        console.print(f"embedding tables {size['before']:,} -> {size['after']:,} bytes")
    if epochs:
        fit = {"val": dataset.val, "epochs": epochs, "lr": lr, "progress": False}
        if cluster is not None:
            with tied(module):
                sk.train.fit(module, dataset.train, **fit)
        else:
            sk.train.fit(module, dataset.train, **fit)
    example = dataset.example if dataset else None
    sk.save(module, output, example=example, force=force)
    console.print(f"params {before:,} -> {count_params(module):,}; wrote {output}")
