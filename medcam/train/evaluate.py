"""Segment whole volumes with a checkpoint and score them on their ORIGINAL voxel grid.

Prediction repeats exactly the preprocessing the checkpoint records (the same MONAI
transforms as training), runs the network by sliding window (or on the whole image),
and maps the label map back through the inverse of the spatial transforms (MONAI
``Invertd``, nearest neighbour), so Dice is computed against the untouched labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from medcam.data.base import regions_class_order
from medcam.data.transforms import preprocessing_transforms
from medcam.errors import UserError
from medcam.models.checkpoint import ModelBundle
from medcam.train.metrics import label_dice, nanmean, region_dice


def _labels_from_logits(bundle: ModelBundle, logits: torch.Tensor) -> torch.Tensor:
    meta = bundle.meta
    if meta.activation == "softmax":
        return logits.argmax(1, keepdim=True)
    # sigmoid region heads: paint broad to narrow regions with the label each one adds
    order = regions_class_order(meta.regions)
    on = torch.sigmoid(logits) > 0.5
    labels = torch.zeros_like(on[:, :1], dtype=torch.long)
    for channel, value in enumerate(order):
        labels[on[:, channel : channel + 1]] = value
    return labels


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
    from monai.inferers import sliding_window_inference

    meta = bundle.meta
    if image.ndim != meta.spatial_dims + 1:
        raise UserError(f"image shape {image.shape}: the model expects (channels, {meta.spatial_dims} spatial dims)")
    pre = Compose(preprocessing_transforms(meta.preprocessing, meta.spatial_dims, keys=("image",), label_key=None))
    data = pre({"image": MetaTensor(torch.as_tensor(image, dtype=torch.float32), affine=torch.as_tensor(affine))})
    x = data["image"]
    first = next(bundle.model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    batch = x.as_tensor()[None].to(device)
    roi = tuple(roi_size) if roi_size is not None else meta.patch_size
    if roi is None:
        logits = bundle.model(batch)
    else:
        logits = sliding_window_inference(batch, roi, sw_batch_size, bundle.model, overlap=overlap, mode="gaussian")
    labels = _labels_from_logits(bundle, logits if isinstance(logits, torch.Tensor) else logits[0])
    data["pred"] = MetaTensor(labels[0].float().cpu(), affine=x.affine, applied_operations=x.applied_operations)
    data["pred"].meta = dict(x.meta)
    inverted = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(data)
    out = inverted["pred"]
    return np.asarray(out.as_tensor() if hasattr(out, "as_tensor") else out)[0].round().astype(np.int64)


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
