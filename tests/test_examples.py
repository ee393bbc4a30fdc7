"""The documented user-loop examples run, and slimkit never trains or scores by itself in them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import slimkit as sk
from slimkit.evaluate import count_macs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def slimkit_never_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("slimkit trained or scored by itself")

    monkeypatch.setattr(sk.train, "fit", refuse)
    for name in ("evaluate", "run"):
        monkeypatch.setattr(sk.task.Task, name, refuse)


def test_plain_pytorch_loop_example(slimkit_never_trains: None) -> None:
    result = _example("own_loop_pytorch").main(epochs=4, macs=0.35, max_drop=2.0)
    assert result.target_met
    assert count_macs(result.model, result.backend.example) <= 0.35 * result.before.macs
    assert result.after.metrics["accuracy"] >= result.before.metrics["accuracy"] - 0.03


def test_hugging_face_trainer_example(slimkit_never_trains: None) -> None:
    pytest.importorskip("accelerate")
    result = _example("own_loop_hf_trainer").main(train_size=600, eval_size=200, epochs=1, macs=0.6, max_drop=5.0)
    assert result.chosen_candidate.costs["macs"] <= 0.6 * result.base_val["costs"]["macs"]
    assert type(result.model).__name__ == "BertForSequenceClassification"
    assert result.after.metrics.keys() == {"accuracy", "loss"}  # what the Trainer's evaluate returned
