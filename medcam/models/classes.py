"""Class names of a checkpoint: which output channels a ``--class`` means, segment names, and labels from logits.

A name is a checkpoint label (one output channel) or a region of a softmax head
(several labels merged, e.g. KiTS's ``masses``). Label maps come from logits one way
everywhere: argmax for softmax heads; for sigmoid region heads nnU-Net's rule, each
channel above 0.5 painting its value from the broadest region to the narrowest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from medcam.core.ops import class_argmax
from medcam.core.targets import ClassTarget, PixelSet, SegmentationTarget, Target, TargetError
from medcam.models.checkpoint import CheckpointMeta


@dataclass(frozen=True)
class ClassChoice:
    """The explained class: a checkpoint label (one output channel) or a region (several)."""

    name: str
    kind: str  # "label" | "region"
    channels: tuple[int, ...]

    def target(self, meta: CheckpointMeta, pixels: PixelSet) -> Target:
        if meta.task == "classification":
            return ClassTarget(self.channels[0], activation=activation(meta))
        index: int | tuple[int, ...] = self.channels[0] if len(self.channels) == 1 else self.channels
        return SegmentationTarget(index, pixels=pixels, activation=activation(meta))


def activation(meta: CheckpointMeta) -> Literal["sigmoid", "softmax"]:
    return "sigmoid" if meta.activation == "sigmoid" else "softmax"


def resolve_class(meta: CheckpointMeta, name: str) -> ClassChoice:
    """A label or region name of the checkpoint (case-insensitive); unknown names list the valid ones."""
    labels = {k.lower(): (k, v) for k, v in meta.labels.items()}
    regions = {k.lower(): (k, v) for k, v in meta.regions.items()}
    key = name.strip().lower()
    if key in labels:
        label, channel = labels[key]
        return ClassChoice(label, "label", (int(channel),))
    if key in regions:
        region, values = regions[key]
        if meta.activation == "sigmoid" or meta.task != "segmentation":
            raise TargetError(
                f"region {region!r} merges labels {list(values)}, which is defined for softmax segmentation heads; "
                f"this model has {meta.activation} outputs {sorted(meta.labels)}, explain one of them"
            )
        channels = tuple(sorted({int(v) for v in values}))
        n_out = max(meta.labels.values()) + 1 if meta.labels else 0
        if any(not 0 <= c < n_out for c in channels):
            raise TargetError(f"region {region!r} uses labels {list(channels)} but the model has {n_out} outputs")
        return ClassChoice(region, "region", channels)
    by_channel = sorted(meta.labels, key=lambda k: (meta.labels[k], k))
    valid = f"labels: {', '.join(by_channel) or 'none'}"
    if meta.regions:
        valid += f"; regions: {', '.join(meta.regions)}"
    raise TargetError(f"class {name!r} is not in this checkpoint ({valid}); pass one of them to --class")


def segments(meta: CheckpointMeta) -> dict[int, str]:
    """Label value -> segment name of the written label map (background left out).

    A sigmoid head's channel ``c`` is written as value ``c + 1`` (one segment per region
    channel, docs/explain.md).
    """
    if meta.activation == "sigmoid":
        return {int(c) + 1: name for name, c in sorted(meta.labels.items(), key=lambda kv: kv[1])}
    return {int(c): name for name, c in sorted(meta.labels.items(), key=lambda kv: kv[1]) if int(c) != 0}


def labels_from_logits(
    logits: torch.Tensor, activation: str, order: Sequence[int] | None = None, *, dtype: torch.dtype = torch.long
) -> torch.Tensor:
    """Hard label map ``(N, *spatial)`` from logits ``(N, C, *spatial)``.

    Softmax heads: the argmax. Sigmoid heads: channel ``c`` above 0.5 paints the value
    ``order[c]``, channels in order, so a later (narrower) region overwrites an earlier
    one; ``order`` defaults to ``c + 1`` (the segments of :func:`segments`), and a
    dataset's ``regions_class_order`` gives its own label values (training's Dice).
    """
    if activation != "sigmoid":
        return class_argmax(logits, dtype)
    values = list(order) if order is not None else [c + 1 for c in range(logits.shape[1])]
    labels = torch.zeros((logits.shape[0], *logits.shape[2:]), dtype=dtype, device=logits.device)
    for channel, value in enumerate(values):
        labels[logits[:, channel] > 0] = value  # sigmoid(logit) > 0.5
    return labels


def label_dtype(channels: int) -> torch.dtype:
    """uint8 up to 255 labels (the labelmap is a full-volume array), else int16."""
    return torch.uint8 if channels < 256 else torch.int16


__all__ = ["ClassChoice", "activation", "label_dtype", "labels_from_logits", "resolve_class", "segments"]
