"""CT-slice classification (IQ-OTH/NCCD): torchvision backbones with a fresh head.

Weighted cross-entropy (``class_weights: auto`` = ``max(count) / count`` on the training
split), optionally a frozen backbone (only the head learns, the RobustCAM protocol), and
validation accuracy / macro F1 for best-checkpoint selection.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.transforms import RandFlipd
from torch import Tensor, nn

from medcam.data.base import Dataset
from medcam.data.transforms import LoadRecordd, preprocessing_transforms
from medcam.models.checkpoint import CheckpointMeta
from medcam.models.factory import build_model, default_cam_layers, head_name
from medcam.train.config import ConfigError, ExperimentConfig
from medcam.train.distributed import Context
from medcam.train.tasks import Task, plain


def class_weights_from_counts(counts: list[int]) -> list[float]:
    """``max(count) / count`` per class (the rarest class weighs most)."""
    if min(counts) == 0:
        raise ConfigError(f"a class has no training image (counts {counts}); class weights are undefined")
    return [max(counts) / c for c in counts]


def freeze_backbone(model: nn.Module) -> list[str]:
    """Stop gradients everywhere but the head; returns the names of the trainable parameters."""
    head = head_name(model)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(head + ".")
        if param.requires_grad:
            trainable.append(name)
    return trainable


class ClassificationTask(Task):
    """Image -> class with a torchvision classifier."""

    def __init__(self, config: ExperimentConfig, dataset: Dataset, ctx: Context) -> None:
        super().__init__(config, dataset, ctx)
        self.classes = dataset.labels
        args = config.model.arguments
        if args.get("num_classes") != len(self.classes):
            raise ConfigError(
                f"model.arguments.num_classes is {args.get('num_classes')} but {dataset.name} has "
                f"{len(self.classes)} classes ({', '.join(self.classes)})"
            )
        if config.preprocessing.size is None:
            raise ConfigError("classification needs preprocessing.size (images differ in size; e.g. [224, 224])")
        weights = config.training.class_weights
        if weights == "auto":
            counts = [0] * len(self.classes)
            for entry in self.all_train_entries:  # the split's class balance, also when max_cases trims it
                counts[int(entry["label"])] += 1
            self.weights: list[float] | None = class_weights_from_counts(counts)
        elif weights == "none":
            self.weights = None
        else:
            if len(weights) != len(self.classes):
                raise ConfigError(f"training.class_weights has {len(weights)} values for {len(self.classes)} classes")
            self.weights = [float(w) for w in weights]
        weight = torch.tensor(self.weights, dtype=torch.float32) if self.weights else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight).to(ctx.device)

    def build_model(self) -> nn.Module:
        model = build_model(self.config.model.architecture, **self.config.model.arguments)
        if self.config.training.frozen_backbone:
            freeze_backbone(model)
        return model

    def train_mode(self, model: nn.Module) -> None:
        """A frozen backbone stays in eval mode too, so its batch-norm statistics do not drift."""
        model.train()
        if self.config.training.frozen_backbone:
            inner = getattr(model, "module", model)  # DistributedDataParallel wraps the network
            head = head_name(inner)
            for name, child in inner.named_children():
                if name != head:
                    child.eval()

    def _deterministic(self) -> list[Any]:
        pre = self.config.preprocessing
        return [LoadRecordd(self.dataset), *preprocessing_transforms(pre, 2, keys=("image",), label_key=None)]

    def train_transforms(self) -> list[Any]:
        flips = [RandFlipd(keys="image", spatial_axis=axis, prob=0.5) for axis in self.config.training.flip_axes]
        return [*self._deterministic(), *flips]

    def val_transforms(self) -> list[Any]:
        return self._deterministic()

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        image = plain(batch["image"]).to(self.ctx.device)
        label = torch.as_tensor(batch["label"]).long().to(self.ctx.device)
        return self.loss_fn(model(image), label)

    def metric_names(self) -> list[str]:
        return ["score", "accuracy", "macro_f1", "val_loss", *[f"recall_{n}" for n in self.classes]]

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if not self.val_entries:
            return {}
        was_training = model.training
        model.eval()
        data = self.val_dataset()
        k = len(self.classes)
        confusion = torch.zeros(k, k, dtype=torch.long)
        losses = []
        for start in range(0, len(data), self.config.training.batch_size):
            records = [data[i] for i in range(start, min(len(data), start + self.config.training.batch_size))]
            image = torch.stack([plain(r["image"]) for r in records]).to(self.ctx.device)
            label = torch.tensor([int(r["label"]) for r in records], device=self.ctx.device)
            logits = model(image)
            losses.append(float(self.loss_fn(logits, label)) * len(records))
            for t, p in zip(label.tolist(), logits.argmax(1).tolist(), strict=True):
                confusion[t, p] += 1
        model.train(was_training)
        return classification_metrics(confusion, list(self.classes), sum(losses) / len(data))

    def metadata(self, model: nn.Module, training: dict[str, Any]) -> CheckpointMeta:
        c = self.config
        layers = list(c.model.cam_layers) if c.model.cam_layers else default_cam_layers(c.model.architecture, model)
        return CheckpointMeta(
            architecture=c.model.architecture,
            arguments=dict(c.model.arguments),
            task="classification",
            spatial_dims=2,
            in_channels=3,
            labels=dict(self.classes),
            activation="softmax",
            preprocessing=c.preprocessing,
            cam_layers=layers,
            training={**training, "class_weights": self.weights, "frozen_backbone": c.training.frozen_backbone},
        )


def classification_metrics(confusion: Tensor, names: list[str], loss: float) -> dict[str, float]:
    """Accuracy, macro F1 and per-class recall from a confusion matrix (rows: truth, columns: prediction)."""
    c = confusion.double()
    tp = c.diag()
    recall = tp / c.sum(1).clamp(min=1)
    precision = tp / c.sum(0).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    accuracy = float(tp.sum() / c.sum().clamp(min=1))
    out = {"score": accuracy, "accuracy": accuracy, "macro_f1": float(f1.mean()), "val_loss": loss}
    out.update({f"recall_{n}": float(r) for n, r in zip(names, recall, strict=True)})
    return out
