from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import slimkit as sk
from slimkit.compress import (
    BucketedEmbedding,
    EmbeddingBucketConfig,
    EmbeddingQuantConfig,
    QuantizedEmbedding,
    embedding_bytes,
)
from slimkit.core.errors import SlimkitError
from slimkit.evaluate import count_params
from slimkit.io import onnx_agreement
from tests.conftest import CliRun


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), dim=st.integers(1, 19), bits=st.sampled_from([4, 8]), seed=st.integers(0, 999))
def test_each_row_is_within_half_a_step(rows: int, dim: int, bits: int, seed: int) -> None:
    torch.manual_seed(seed)
    table = nn.Embedding(rows, dim)
    with torch.no_grad():
        table.weight.mul_(torch.rand(rows, 1) * 10)  # rows of very different ranges
    q = QuantizedEmbedding.from_embedding(table, bits)
    ids = torch.arange(rows)
    step = q.scale.float()[:, None]
    # half a quantization step, plus float16 rounding of the row's offset and of the step itself
    bound = step / 2 + table.weight.abs().amax(1, keepdim=True) * 2e-3 + 1e-6
    assert ((q(ids) - table.weight).abs() <= bound).all()
    assert q(ids[:, None]).shape == (rows, 1, dim)  # any id shape


def test_recsys_tables_4x_smaller_with_auc_kept(tmp_path: Path) -> None:
    data = sk.data.load("synthetic-recsys")
    torch.manual_seed(0)
    model = sk.zoo.create_for("recsys_mlp", data)
    sk.train.fit(model, data.train, epochs=2, progress=False)
    before = sk.evaluate(model, data, split="val", latency=False)
    small = copy.deepcopy(model)
    sk.apply_(small, EmbeddingQuantConfig(bits=4))
    after = sk.evaluate(small, data, split="val", latency=False)
    assert embedding_bytes(model) >= 4 * embedding_bytes(small)
    assert before.metrics["auc"] - after.metrics["auc"] <= 0.005
    assert after.bytes < 0.6 * before.bytes  # the checkpoint shrinks with the tables
    # saves, reloads and exports with the same outputs
    x = data.splits["val"][0][:256]
    sk.save(small, tmp_path / "ckpt", example=x)
    again = sk.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
    path = sk.export(small, tmp_path / "m.onnx", x)
    assert onnx_agreement(small, path, x)["max_abs_diff"] < 1e-4


def test_layers_skips_and_errors() -> None:
    model = sk.zoo.create("recsys_mlp")
    record = sk.records(sk.apply_(model, EmbeddingQuantConfig(bits=8, layers=("embeddings.0",), min_rows=2)))[-1]
    assert record.changed == ["embeddings.0"] and isinstance(model.embeddings[0], QuantizedEmbedding)
    assert isinstance(model.embeddings[1], nn.Embedding)
    record = sk.records(sk.apply_(model, EmbeddingQuantConfig(bits=8, min_rows=100)))[-1]
    assert "4 rows (min_rows=100)" in record.skipped["embeddings.3"]
    with pytest.raises(SlimkitError, match="bits=4 or bits=8"):
        EmbeddingQuantConfig(bits=2)
    with pytest.raises(SlimkitError, match="no nn.Embedding"):
        sk.apply_(sk.zoo.create("lenet5"), EmbeddingQuantConfig())
    with pytest.raises(SlimkitError, match="no Embedding layer named 'nope'"):
        sk.apply_(sk.zoo.create("recsys_mlp"), EmbeddingQuantConfig(layers=("nope",)))


def test_cli_embedding_bits(tmp_path: Path, cli: CliRun) -> None:
    ckpt = sk.save(sk.zoo.create("recsys_mlp"), tmp_path / "rec")
    code, out, err = cli("compress", ckpt, "--embedding-bits", "4", "-o", tmp_path / "small")
    assert code == 0, err
    assert "embedding tables 97,536 -> 18,288 bytes" in out
    assert isinstance(sk.load(tmp_path / "small").embeddings[0], QuantizedEmbedding)


def test_cli_embedding_keep(tmp_path: Path, cli: CliRun) -> None:
    data = sk.data.load("synthetic-recsys")
    ckpt = sk.save(sk.zoo.create_for("recsys_mlp", data), tmp_path / "rec")
    code, _, err = cli("compress", ckpt, "--embedding-keep", "0.5", "-o", tmp_path / "small")
    assert code != 0 and "--embedding-keep counts how often each id is used: pass --data" in err
    code, out, err = cli(
        "compress", ckpt, "--embedding-keep", "0.5", "--data", "synthetic-recsys", "-o", tmp_path / "small"
    )
    assert code == 0, err
    small = sk.load(tmp_path / "small")
    for i, n in enumerate(data.meta["cardinalities"]):
        table = small.embeddings[i]
        if n >= 100:  # min_rows
            assert isinstance(table, BucketedEmbedding) and table.table.num_embeddings == round(n / 2) + 1
    assert "embedding tables" in out


def test_lowrank_tables_exact_at_full_rank_and_smaller_below() -> None:
    from slimkit.compress import LowRankConfig

    torch.manual_seed(0)
    model = sk.zoo.create("recsys_mlp").eval()
    x = torch.stack([torch.randint(0, n, (64,)) for n in (1000, 500, 20, 4)], 1)
    before = model(x)
    full = copy.deepcopy(model)
    sk.apply_(full, LowRankConfig(rank=16, layers=("embeddings.0", "embeddings.1")))
    assert torch.allclose(full(x), before, atol=1e-4)
    small = copy.deepcopy(model)
    record = sk.records(sk.apply_(small, LowRankConfig(rank=4, layers=("re:embeddings\\..",))))[-1]
    assert record.changed == ["embeddings.0", "embeddings.1", "embeddings.2"]
    assert "would not save parameters" in record.skipped["embeddings.3"]  # 4 rows: rank 4 is full rank
    assert count_params(small) < count_params(model)
    sk.apply_(small, EmbeddingQuantConfig(bits=4))  # composes: the narrow tables quantize too
    assert isinstance(small.embeddings[0].narrow, QuantizedEmbedding)
    pca = sk.apply_(copy.deepcopy(model), LowRankConfig(method="pca", rank=4, layers=("embeddings.0",)), x)
    assert "factorized by svd" in sk.records(pca)[-1].skipped["embeddings.0"]


def test_lowrank_tables_weigh_rows_by_use_and_keep_the_most_used_exact(tmp_path: Path) -> None:
    from slimkit.compress import FactorizedEmbedding, LowRankConfig

    torch.manual_seed(0)
    model = sk.zoo.create("recsys_mlp").eval()
    x = torch.stack([torch.randint(0, n, (3000,)) for n in (1000, 500, 20, 4)], 1)
    x[:, 0] = torch.randint(0, 50, (3000,)) ** 2 // 50  # table 0: a skewed few ids (0 most of all)
    table = model.embeddings[0].weight.detach().clone()
    used = torch.bincount(x[:, 0], minlength=1000)

    def error(m: nn.Module) -> float:  # squared row error, weighted by use
        rows = m.embeddings[0](torch.arange(1000)).detach()
        return float((used[:, None] * (rows - table) ** 2).sum())

    cfg = LowRankConfig(rank=4, layers=("embeddings.0",))
    plain = sk.apply_(copy.deepcopy(model), cfg)
    weighted = sk.apply_(copy.deepcopy(model), cfg, example_inputs=x)
    assert error(weighted) < 0.8 * error(plain)
    exact = sk.apply_(
        copy.deepcopy(model), dataclasses.replace(cfg, exact_rows=0.01), example_inputs=[x[:1000], x[1000:]]
    )
    emb = exact.embeddings[0]
    assert isinstance(emb, FactorizedEmbedding) and emb.exact_rows == 10 and emb.rank == 4
    top = torch.sort(-used, stable=True).indices[:10]
    with torch.no_grad():
        assert torch.allclose(emb(top), table[top], atol=1e-5)  # the 10 most used ids come out exactly
    assert error(exact) < error(weighted)
    layer = sk.records(exact)[-1].details["layers"]["embeddings.0"]
    assert layer["params_after"] == count_params(emb) < layer["params_before"]
    sk.save(exact, tmp_path / "ckpt", example=x[:8])
    again = sk.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(again(x), exact(x))
    path = sk.export(exact, tmp_path / "m.onnx", x[:64])
    assert onnx_agreement(exact, path, x[:64])["max_abs_diff"] < 1e-4
    with pytest.raises(SlimkitError, match="exact_rows .* needs calibration inputs"):
        sk.apply_(copy.deepcopy(model), dataclasses.replace(cfg, exact_rows=0.01))
    with pytest.raises(SlimkitError, match="exact_rows"):
        LowRankConfig(exact_rows=1.0)


def test_bucketing_keeps_used_rows_exact_and_shares_the_rest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("recsys_mlp")  # tables of 1000, 500, 20 and 4 ids
    x = torch.stack([torch.randint(0, n, (3000,)) for n in (1000, 500, 20, 4)], dim=1)
    x[:, 0] = torch.randint(0, 100, (3000,))  # table 0: only ids < 100 are ever used
    before = copy.deepcopy(model)
    record = sk.records(sk.apply_(model, EmbeddingBucketConfig(min_count=1), example_inputs=x))[-1]
    assert record.changed == ["embeddings.0"]  # tables 2 and 3 are small; every id of table 1 is used
    assert set(record.skipped) == {"embeddings.1", "embeddings.2", "embeddings.3"}
    table = model.get_submodule("embeddings.0")
    assert isinstance(table, BucketedEmbedding) and table.table.num_embeddings == 101
    assert record.details["tables"]["embeddings.0"]["uses_in_bucket"] == 0
    with torch.no_grad():
        assert torch.equal(model(x), before(x))  # every id seen keeps its own row
        unseen = before.embeddings[0].weight[100:].mean(0)  # never used: the plain mean of their rows
        assert torch.allclose(table(torch.tensor([500, 999])), unseen.expand(2, -1), atol=1e-6)
    assert embedding_bytes(model) < embedding_bytes(before)
    # composes with row-wise int8 (the shared table is an nn.Embedding), saves, reloads and exports
    sk.apply_(model, EmbeddingQuantConfig(bits=8, min_rows=100))
    assert isinstance(model.get_submodule("embeddings.0.table"), QuantizedEmbedding)
    sk.save(model, tmp_path / "ckpt", example=x[:8])
    again = sk.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    path = sk.export(model, tmp_path / "m.onnx", x[:64])
    assert onnx_agreement(model, path, x[:64])["max_abs_diff"] < 1e-4


def test_bucketing_by_fraction_weights_the_shared_row_by_use() -> None:
    table = nn.Embedding(200, 3)
    model = nn.Sequential(table)
    ids = torch.cat([torch.arange(200).repeat_interleave(torch.arange(200, 0, -1)), torch.tensor([199] * 50)])
    record = sk.records(sk.apply_(model, EmbeddingBucketConfig(keep=0.25), example_inputs=ids))[-1]
    new = model[0]
    assert new.table.num_embeddings == 51  # the 50 most used ids (0..49) + the bucket
    assert torch.equal(new.remap[:50], torch.arange(50, dtype=torch.int32))
    assert (new.remap[50:] == 50).all()
    counts = torch.bincount(ids, minlength=200)[50:].double()
    expected = (counts[:, None] * table.weight[50:].double()).sum(0) / counts.sum()
    assert torch.allclose(new.table.weight[50].double(), expected, atol=1e-6)
    assert record.details["tables"]["0"]["rows"] == 51


def test_bucketing_errors() -> None:
    with pytest.raises(SlimkitError, match="exactly one of keep"):
        EmbeddingBucketConfig()
    with pytest.raises(SlimkitError, match="fraction"):
        EmbeddingBucketConfig(keep=1.5)
    model = sk.zoo.create("recsys_mlp")
    with pytest.raises(SlimkitError, match="example_inputs"):
        sk.apply_(model, EmbeddingBucketConfig(keep=0.5))
    with pytest.raises(SlimkitError, match="no embedding table"):
        sk.apply_(nn.Sequential(nn.Linear(2, 2)), EmbeddingBucketConfig(keep=0.5), example_inputs=torch.zeros(1, 2))
