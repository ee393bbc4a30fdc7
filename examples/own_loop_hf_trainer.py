"""Your own training loop: Hugging Face ``Trainer`` trains and evaluates, slimkit decides and cuts.

slimkit measures sensitivity, prunes attention heads and FFN units to the budget and checks every
candidate against the quality constraint, but never trains or scores by itself: ``finetune`` and
``evaluate`` below are plain ``Trainer`` calls (with knowledge distillation from the original
model in ``compute_loss``). The model is a small BERT classifier built from a config (random
weights, no download) and trained here on real Rotten Tomatoes sentences.

    python examples/own_loop_hf_trainer.py            # ~2 minutes on 2 CPU cores
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import slimkit as sk
from slimkit.optimize import Target, optimize


class Sentences(torch.utils.data.Dataset):
    """Token ids and labels as the dicts a Hugging Face model takes."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": (self.ids[i] != 0).long(), "labels": self.labels[i]}


class DistillingTrainer(Trainer):
    """``Trainer`` whose loss mixes the labels' cross-entropy with the teacher's softened outputs."""

    def __init__(self, *args: Any, teacher: torch.nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, **kwargs: Any) -> Any:
        outputs = model(**inputs)
        loss = outputs.loss
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            t = 2.0
            soft = (
                F.kl_div(
                    F.log_softmax(outputs.logits / t, -1), F.softmax(teacher_logits / t, -1), reduction="batchmean"
                )
                * t
                * t
            )
            loss = 0.5 * loss + 0.5 * soft
        return (loss, outputs) if return_outputs else loss


def accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def main(
    train_size: int = 4000, eval_size: int | None = None, epochs: int = 3, macs: float = 0.5, max_drop: float = 2.0
) -> Any:
    torch.manual_seed(0)
    data = sk.data.load("rotten-tomatoes")
    sizes = {"train": train_size, "val": eval_size, "test": eval_size}
    splits = {k: Sentences(*(t[:n] for t in data.splits[k])) for k, n in sizes.items()}
    config = BertConfig(
        vocab_size=data.meta["vocab_size"],
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=64,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    workdir = tempfile.mkdtemp(prefix="trainer-")

    def args(train_epochs: int = 1) -> TrainingArguments:
        return TrainingArguments(
            output_dir=workdir,
            num_train_epochs=train_epochs,
            learning_rate=3e-4,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=256,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            seed=0,
        )

    def finetune(net: torch.nn.Module, n_epochs: int, teacher: torch.nn.Module | None) -> None:
        DistillingTrainer(model=net, args=args(n_epochs), train_dataset=splits["train"], teacher=teacher).train()

    def evaluate(net: torch.nn.Module, split: str) -> dict[str, float]:
        scores = Trainer(model=net, args=args(), eval_dataset=splits[split], compute_metrics=accuracy).evaluate()
        return {"accuracy": scores["eval_accuracy"], "loss": scores["eval_loss"]}

    finetune(model, epochs, None)  # the user's trained model
    print("original:", evaluate(model, "val"))
    example = {
        k: v[:4]
        for k, v in next(iter(torch.utils.data.DataLoader(splits["train"], batch_size=4))).items()
        if k != "labels"
    }
    result = optimize(
        model,
        target=Target(macs=macs, max_drop=max_drop),  # accuracy points on validation
        finetune=finetune,
        evaluate=evaluate,
        example_inputs=example,
        finetune_epochs=1,
        rounds=1,
        quantize=False,  # evaluate() runs Trainer, which takes torch modules, not an int8 ONNX file
        log=print,
    )
    print(result.comparison)
    return result


if __name__ == "__main__":
    main()
