"""Segment whole volumes with a checkpoint and score them on their ORIGINAL voxel grid.

Prediction is the explain pipeline's own: the checkpoint's preprocessing
(:func:`medcam.volumes.preprocessing.prepare_array`, i.e. the MONAI transforms of
training), MONAI's sliding-window inference (:func:`medcam.core.windows.predict`), and the
label map returned to the original grid through the inverse of the spatial transforms
(nearest neighbour), so Dice is computed against the untouched labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medcam.data.base import regions_class_order
from medcam.metrics.dice import label_dice, nanmean, region_dice
from medcam.models import classes
from medcam.models.checkpoint import ModelBundle


def labels_from_logits(logits: torch.Tensor, activation: str, regions: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """Hard label map ``(N, 1, *spatial)`` with the dataset's label values.

    :func:`medcam.models.classes.labels_from_logits` (the one rule: argmax, or for sigmoid
    region heads nnU-Net's ordering) with the regions painted with the label value each
    adds (``regions_class_order``).
    """
    order = regions_class_order(regions) if activation == "sigmoid" else None
    return classes.labels_from_logits(logits, activation, order)[:, None]


@torch.no_grad()
def segment(
    bundle: ModelBundle,
    image: np.ndarray,
    affine: np.ndarray,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = 2,
    overlap: float = 0.25,
) -> np.ndarray:
    """Label map (spatial shape of ``image``) for ``image`` (C, *spatial) with voxel-to-RAS ``affine``.

    ``roi_size`` defaults to the checkpoint's patch size (whole image when it has none).
    """
    from medcam.core.windows import SlidingWindow, predict
    from medcam.volumes.preprocessing import prepare_array

    meta = bundle.meta
    grid = prepare_array(image, affine, meta.preprocessing, spatial_dims=meta.spatial_dims)
    roi = tuple(roi_size) if roi_size is not None else meta.patch_size
    window = SlidingWindow(roi, overlap=overlap, mode="gaussian", batch_size=sw_batch_size)
    logits = predict(bundle.model, grid.image, window)
    labels = labels_from_logits(logits, meta.activation, meta.regions)
    return grid.to_source(labels[0].float(), mode="nearest")[0].round().astype(np.int64)


@dataclass(frozen=True)
class Evaluation:
    per_case: list[dict[str, float]]

    @property
    def mean(self) -> dict[str, float]:
        names = self.per_case[0].keys() if self.per_case else []
        return {name: nanmean([case[name] for case in self.per_case]) for name in names}

    def table(self) -> str:
        """Markdown table: mean Dice per class and region over the cases (NaN cases skipped)."""
        mean = self.mean
        rows = [f"| {name} | {value:.3f} |" for name, value in mean.items() if not math.isnan(value)]
        return "\n".join(["| structure | mean Dice |", "|---|---|", *rows])


def evaluate_cases(
    bundle: ModelBundle, cases: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], **kwargs: Any
) -> Evaluation:
    """Dice per label (background excluded) and per region for (image, label, affine) triples."""
    label_names = {n: v for n, v in bundle.meta.labels.items() if n != "background"}
    if bundle.meta.activation != "softmax":
        label_names = {}
    results = []
    for image, label, affine in cases:
        pred = torch.as_tensor(segment(bundle, image, affine, **kwargs))
        truth = torch.as_tensor(np.asarray(label).reshape(pred.shape).astype(np.int64))
        scores = label_dice(pred, truth, label_names)
        scores.update(region_dice(pred, truth, bundle.meta.regions))
        results.append(scores)
    return Evaluation(results)
