from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import slimkit as sk
from slimkit.core.errors import ModelFileError
from slimkit.io.checkpoint import weights_bytes
from slimkit.io.codecs import decode_state, encode_state


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3000),
    density=st.floats(0.0, 1.0),
    distinct=st.one_of(st.none(), st.integers(1, 300)),
    seed=st.integers(0, 2**16),
)
def test_encoding_is_exact(n: int, density: float, distinct: int | None, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, generator=g)
    if distinct is not None:
        t = torch.randn(distinct, generator=g)[torch.randint(0, distinct, (n,), generator=g)]
    t = t * (torch.rand(n, generator=g) < density)
    tensors, encodings = encode_state({"w": t.reshape(1, -1)})
    assert torch.equal(decode_state(tensors, encodings)["w"], t.reshape(1, -1))


def test_sparse_and_clustered_checkpoints_shrink(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("seed_cnn").eval()
    dense = len(weights_bytes(model)[0])
    with torch.no_grad():
        w = model.fc1.weight
        w.mul_(w.abs() > w.abs().quantile(0.9))  # 90% zeros in the largest layer
    sparse = len(weights_bytes(model)[0])
    assert sparse < 0.2 * dense
    with torch.no_grad():
        for p in model.parameters():  # 16 shared values per tensor
            centroids = torch.linspace(float(p.min()), float(p.max()), 16)
            p.copy_(centroids[(p.reshape(-1, 1) - centroids).abs().argmin(1)].reshape(p.shape))
    x = torch.rand(2, 1, 28, 28)
    sk.save(model, tmp_path / "ckpt")
    size = (tmp_path / "ckpt" / "weights.safetensors").stat().st_size
    assert size < 0.2 * dense
    assert torch.equal(sk.load(tmp_path / "ckpt")(x), model(x))
    sk.save(model, tmp_path / "plain", compress=False)
    assert (tmp_path / "plain" / "weights.safetensors").stat().st_size > 0.95 * dense


def test_damaged_encoding() -> None:
    tensors, encodings = encode_state({"w": torch.zeros(1000)})
    assert encodings["w"]["codec"] == "sparse"
    del tensors["w.__values"]
    with pytest.raises(ModelFileError, match="encoded tensor 'w' is damaged"):
        decode_state(tensors, encodings)
