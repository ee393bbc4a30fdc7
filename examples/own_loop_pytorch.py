"""Your own training loop in plain PyTorch: slimkit decides and cuts, your code trains and scores.

``finetune(model, epochs, teacher)`` and ``evaluate(model, split)`` are all slimkit needs: it
measures each layer's sensitivity with your ``evaluate``, prunes to the budget, lets your
``finetune`` recover (with the original model as ``teacher`` for distillation) and keeps only
candidates that hold your quality constraint. Here: a small CNN on scikit-learn's real 8x8 digits.

    python examples/own_loop_pytorch.py               # ~20 seconds on 2 CPU cores
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimkit as sk
from slimkit.optimize import Target, optimize


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 16, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def main(epochs: int = 8, macs: float = 0.3, max_drop: float = 1.0) -> Any:
    torch.manual_seed(0)
    data = sk.data.load("digits")  # any tensors: slimkit only sees your functions and one example batch
    loaders = {k: DataLoader(TensorDataset(*data.splits[k]), batch_size=64, shuffle=k == "train") for k in data.splits}

    def finetune(model: nn.Module, n_epochs: int, teacher: nn.Module | None) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(n_epochs):
            model.train()
            for x, y in loaders["train"]:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if teacher is not None:  # knowledge distillation from the original model
                    with torch.no_grad():
                        soft = F.softmax(teacher(x) / 4, -1)
                    loss = 0.5 * loss + 0.5 * 16 * F.kl_div(F.log_softmax(logits / 4, -1), soft, reduction="batchmean")
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()

    def evaluate(model: Any, split: str) -> dict[str, float]:
        correct = total = 0
        with torch.no_grad():
            for x, y in loaders[split]:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        return {"accuracy": correct / total}

    model = make_model()
    finetune(model, epochs, None)  # the user's trained model
    result = optimize(
        model,
        target=Target(macs=macs, max_drop=max_drop),  # accuracy points on validation
        finetune=finetune,
        evaluate=evaluate,
        example_inputs=data.example,
        finetune_epochs=2,
        quantize=False,
        log=print,
    )
    print(result.comparison)
    return result


if __name__ == "__main__":
    main()
