"""A Hugging Face model folder with a task head (a user's fine-tuned classifier) through the command
line: loaded as the class its config names without running anything from the folder, optimized or
pruned with the user's own DataLoaders, written back as a folder its class loads; bad folders are one
line."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

DATA = """
import torch
from torch.utils.data import DataLoader, Dataset


class Pairs(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 200, (n, 12), generator=g)
        self.y = self.ids[:, :3].sum(1) % 2

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.y[i]}


def loaders():
    return {
        "train": DataLoader(Pairs(256, 0), batch_size=32, shuffle=True),
        "val": DataLoader(Pairs(64, 1), batch_size=64),
        "test": DataLoader(Pairs(64, 2), batch_size=64),
    }
"""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture()
def classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=200, dim=32, n_layers=2, n_heads=4, hidden_dim=128, num_labels=2)
    transformers.DistilBertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    (tmp_path / "userdata.py").write_text(DATA)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "clf"


def test_a_task_model_folder_is_optimized_and_written_back_as_a_folder_of_its_class(classifier: Path, cli) -> None:
    from slimkit.io import load

    before = _digest(classifier)
    code, out, err = cli(
        *("optimize", classifier, "-d", "userdata:loaders", "--target", "params=0.7", "--max-drop", "50"),
        *("--rounds", "1", "--finetune-epochs", "1", "--time-budget", "120", "-o", "out"),
    )
    assert code == 0, err
    assert "widths as a DistilBertConfig sizes them" in out  # sensitivity allocation, one width per config field
    assert _digest(classifier) == before  # the input folder is untouched
    original = load(classifier)
    assert type(original).__name__ == "DistilBertForSequenceClassification"
    slim = transformers.AutoModelForSequenceClassification.from_pretrained("out/checkpoint").eval()
    assert type(slim) is type(original) and type(load("out/checkpoint")) is type(original)
    assert sum(p.numel() for p in slim.parameters()) < 0.7 * sum(p.numel() for p in original.parameters())
    batch = {"input_ids": torch.randint(5, 200, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    onnx = load("out/model.onnx")
    with torch.no_grad():
        assert torch.allclose(slim(**batch).logits, torch.as_tensor(onnx(**batch)), atol=1e-4)


@pytest.mark.parametrize(
    "defect", ["pickle weights", "auto_map", "wrong class", "no such class", "bad json", "slimkit encoder"]
)
def test_bad_model_folders_are_one_line_and_write_nothing(classifier: Path, cli, defect: str) -> None:
    folder = classifier.parent / "bad"
    shutil.copytree(classifier, folder)
    config = json.loads((folder / "config.json").read_text())
    if defect == "pickle weights":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif defect == "auto_map":
        config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.Evil"}
    elif defect == "wrong class":
        config["architectures"] = ["BertForSequenceClassification"]
    elif defect == "no such class":
        config["architectures"] = ["os"]
    elif defect == "slimkit encoder":
        config["model_type"] = "slimkit_distilbert"
    if defect == "bad json":
        (folder / "config.json").write_text('{"architectures": [')
    else:
        (folder / "config.json").write_text(json.dumps(config))
    if defect == "slimkit encoder":  # optimize takes it to the text tools; every other command says where
        code, out, err = cli("evaluate", folder, "-d", "userdata:loaders")
    else:
        code, out, err = cli("optimize", folder, "-d", "userdata:loaders", "--target", "params=0.5", "-o", "out")
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    assert not Path("out").exists()
    what = {
        "pickle weights": "no .safetensors",
        "auto_map": "auto_map",
        "wrong class": "is architectures in config.json right",
        "no such class": "names no transformers model class",
        "bad json": "not readable JSON",
        "slimkit encoder": "load it with slimkit.text.load",
    }[defect]
    assert what in err


def test_prune_writes_a_folder_of_the_same_class(classifier: Path, cli) -> None:
    code, out, err = cli("prune", classifier, "-d", "userdata:loaders", "--ratio", "0.5", "-o", "small")
    assert code == 0, err
    small = transformers.DistilBertForSequenceClassification.from_pretrained("small")
    assert small.config.hidden_dim == 64 and json.loads(Path("small/report.json").read_text())["after"]["params"]


def test_a_transformers_models_program_loads_in_a_new_process(classifier: Path) -> None:
    """``model.pt2`` of a transformers model returns its output class (SequenceClassifierOutput), whose
    pytree type must be registered before torch can read the program."""
    from slimkit.io import export, load

    model = load(classifier)
    batch = {"input_ids": torch.randint(5, 200, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    export(model, classifier.parent / "clf.pt2", batch)
    torch.save(batch, classifier.parent / "batch.pt")
    script = (
        "import sys, torch, slimkit as sk; m = sk.load(sys.argv[1]); b = torch.load(sys.argv[2]); "
        "print(m(**b).logits.tolist())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "clf.pt2", "batch.pt"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        want = model(**batch).logits
    assert torch.allclose(torch.tensor(json.loads(done.stdout.strip().splitlines()[-1])), want, atol=1e-5)


def _decoder(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=200, n_embd=32, n_layer=2, n_head=4, n_positions=16, num_labels=2)
        return transformers.GPT2ForSequenceClassification(config)
    if kind == "mixtral":  # mixture of experts, run by torch._grouped_mm (which ONNX has no operator for)
        config = transformers.MixtralConfig(
            vocab_size=200,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            num_labels=2,
        )
        return transformers.MixtralForSequenceClassification(config)
    config = transformers.LlamaConfig(
        vocab_size=200,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=16,
        num_labels=2,
    )
    return transformers.LlamaForSequenceClassification(config)


@pytest.mark.parametrize(
    "kind", ["gpt2", pytest.param("llama", marks=pytest.mark.slow), "mixtral"]
)  # Mixtral has Llama's attention
def test_decoder_classifiers_export_without_their_key_value_cache(tmp_path: Path, kind: str) -> None:
    """A decoder returns its key / value cache (a DynamicCache, not a tensor) unless ``use_cache`` is
    off, and experts run by ``grouped_mm`` have no ONNX operator: both exports turn the cache off and
    run the experts as dense matmuls for the export only (which OpenVINO runs too)."""
    from slimkit.io import OnnxModel, export, load
    from slimkit.io.onnx import runtimes

    model = _decoder(kind).eval()
    model.config.pad_token_id = 0
    batch = {"input_ids": torch.randint(5, 200, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    with torch.no_grad():
        want = model(**batch).logits
    for name in ("m.onnx", "m.pt2"):
        export(model, tmp_path / name, batch)
        out = load(tmp_path / name)(**batch)
        got = torch.as_tensor(out.logits if hasattr(out, "logits") else out)  # the program / the ONNX file
        assert torch.allclose(got, want, atol=1e-5), name
    if kind == "mixtral" and "openvino" in runtimes():
        out = OnnxModel(tmp_path / "m.onnx", runtime="openvino")(**batch)
        assert torch.allclose(torch.as_tensor(out), want, atol=1e-4)
    assert model.config.use_cache is True  # the user's settings are back
    assert kind != "mixtral" or model.config._experts_implementation == "grouped_mm"


@pytest.mark.parametrize("family", ["Mixtral", "GptOss"])  # GPT-OSS: transposed, interleaved, biased experts
def test_exports_run_the_experts_densely_with_the_same_outputs(family: str) -> None:
    from transformers.integrations.moe import ExpertsInterface

    from slimkit.io.pretrained import DENSE_EXPERTS, dense_experts

    config = getattr(transformers, f"{family}Config")(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    ExpertsInterface.register(DENSE_EXPERTS, dense_experts)
    ids = torch.randint(0, 100, (3, 10))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        model.set_experts_implementation(DENSE_EXPERTS)
        torch.testing.assert_close(model(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


def test_a_pruned_config_transformers_would_refuse_is_not_written_as_a_folder(tmp_path: Path) -> None:
    """A Llama whose hidden width is no longer a multiple of its heads: transformers refuses to save
    such a config, so ``sk.save`` says so in one line (``optimize`` then writes ``model.pt2``; this
    was an internal error) and writes nothing."""
    import slimkit as sk
    from slimkit.core.errors import UnknownModelError
    from slimkit.prune import ChannelPruneConfig

    model = _decoder("llama")
    model.config.pad_token_id = 0
    batch = {"input_ids": torch.randint(5, 200, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    sk.apply_(model, ChannelPruneConfig(ratios={"model.embed_tokens": 2 / 32}, ratio=0.0), example_inputs=batch)
    assert model.config.hidden_size == 32 and model.model.embed_tokens.embedding_dim == 30
    with pytest.raises(UnknownModelError, match=r"no valid LlamaConfig .*not a multiple of the number of attention"):
        sk.save(model, tmp_path / "folder", example=batch)
    assert not (tmp_path / "folder").exists()


def test_evaluate_scores_a_token_classifier_with_the_task_named(cli, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=3
    )
    model = transformers.BertForTokenClassification(config).eval()
    model.save_pretrained(tmp_path / "tagger")
    tagging = DATA.replace('"labels": self.y[i]', '"labels": self.ids[i] % 3')  # a tag per token
    (tmp_path / "tagdata.py").write_text(tagging)  # a new module name: imports are cached
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("evaluate", "tagger", "-d", "tagdata:loaders", "--no-latency")
    assert code == 2 and "--task" in err and "Traceback" not in err  # scored as classification: one line
    code, out, err = cli(
        "evaluate", "tagger", "-d", "tagdata:loaders", "--task", "ner", "--no-latency", "--json", "r.json"
    )
    assert code == 0, err
    ids = torch.randint(5, 200, (64, 12), generator=torch.Generator().manual_seed(2))  # the test split
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.argmax(-1)
    got = json.loads(Path("r.json").read_text())["metrics"]
    assert got["accuracy"] == pytest.approx(float((pred == ids % 3).float().mean()))


def test_encoder_folders_still_go_to_the_text_tools(tmp_path: Path) -> None:
    from slimkit.cli.common import is_encoder_folder

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    transformers.BertModel(config).save_pretrained(tmp_path / "bare")
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "head")
    assert is_encoder_folder(tmp_path / "bare") and not is_encoder_folder(tmp_path / "head")
    from slimkit import text
    from slimkit.core.errors import ModelFileError

    with pytest.raises(ModelFileError, match="has no tokenizer: save it beside the model"):
        text.load(tmp_path / "bare")  # mean pooling needs the tokenizer next to the weights
