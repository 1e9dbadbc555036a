"""Localisation: does the map point at the object a human annotated?

Pure functions on maps ``(N, *spatial)`` and ground truth (a boolean mask of the same
shape, or ``(*spatial)`` shared by every sample); 2D and 3D alike.

* Box IoU (Ban 2025; Zhou et al. 2016): threshold the map at ``threshold`` times its
  maximum (default 0.1), keep the largest connected region, take its bounding box,
  and compare it with the ground-truth box by intersection over union.
* Pointing game (Zhang et al. 2018): a hit when the map's maximum lies in the object.
* Energy inside the mask (Wang et al. 2020, "energy-based pointing game"): the share
  of the map's (non-negative) mass inside the object.
* Dice of the thresholded map (same threshold) against the object mask.

A box is given by ``start`` (inclusive) and ``stop`` (exclusive) voxel indices in the
array's axis order. A map that is zero everywhere highlights nothing: its box is
``None``, its IoU, pointing game, energy and Dice are 0. An empty ground truth has no
right answer, so it is an error rather than a silent 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from medcam.errors import UserError

Connectivity = Literal["face", "full"]


@dataclass(frozen=True)
class BoundingBox:
    """An axis-aligned box ``start <= p < stop`` in voxel indices."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop) or any(b <= a for a, b in zip(self.start, self.stop, strict=True)):
            raise UserError(f"a box needs start < stop in every axis, got {self.start}..{self.stop}")

    @property
    def volume(self) -> int:
        return int(np.prod([b - a for a, b in zip(self.start, self.stop, strict=True)]))

    def intersection(self, other: BoundingBox) -> int:
        if len(self.start) != len(other.start):
            raise UserError(f"cannot compare a {len(self.start)}D box with a {len(other.start)}D box")
        sides = [
            max(0, min(b1, b2) - max(a1, a2))
            for a1, b1, a2, b2 in zip(self.start, self.stop, other.start, other.stop, strict=True)
        ]
        return int(np.prod(sides))


def box_iou(a: BoundingBox | None, b: BoundingBox | None) -> float:
    """Intersection over union of two boxes in voxel counts; a missing box scores 0."""
    if a is None or b is None:
        return 0.0
    inter = a.intersection(b)
    return inter / (a.volume + b.volume - inter)


def box_of_mask(mask: Tensor | np.ndarray) -> BoundingBox | None:
    """The tightest box around the True voxels of one ``(*spatial)`` mask; ``None`` if empty."""
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    found = np.nonzero(array)
    if found[0].size == 0:
        return None
    return BoundingBox(tuple(int(i.min()) for i in found), tuple(int(i.max()) + 1 for i in found))


def threshold_map(maps: Tensor, threshold: float = 0.1) -> Tensor:
    """``map > threshold * max(map)`` per sample; a map with no positive value gives an empty mask."""
    if not 0.0 <= threshold < 1.0:
        raise UserError(f"threshold is a fraction of the map's maximum in [0, 1), got {threshold}")
    dims = tuple(range(1, maps.ndim))
    top = maps.amax(dim=dims, keepdim=True)
    return (maps > threshold * top) & (top > 0)


def largest_component(mask: Tensor, connectivity: Connectivity = "full") -> Tensor:
    """The largest connected region of each sample's mask ``(N, *spatial)`` (ties: the first found).

    ``"full"`` connects diagonal neighbours too (8 in 2D, 26 in 3D), like the contour
    tracing of Ban's box extraction; ``"face"`` only face neighbours (4 / 6).
    """
    if connectivity not in ("face", "full"):
        raise UserError(f"connectivity={connectivity!r} is not known; use 'face' or 'full'")
    array = mask.detach().cpu().numpy().astype(bool)
    rank = array.ndim - 1
    structure = ndimage.generate_binary_structure(rank, rank if connectivity == "full" else 1)
    out = np.zeros_like(array)
    for n, sample in enumerate(array):
        labels, count = ndimage.label(sample, structure=structure)
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            out[n] = labels == int(np.argmax(sizes)) + 1
    return torch.from_numpy(out).to(mask.device)


def map_boxes(maps: Tensor, threshold: float = 0.1, *, connectivity: Connectivity = "full") -> list[BoundingBox | None]:
    """Per sample: the box of the largest region of the map above ``threshold`` of its maximum."""
    regions = largest_component(threshold_map(maps, threshold), connectivity)
    return [box_of_mask(region) for region in regions]


def _ground_truth(maps: Tensor, truth: Tensor, what: str) -> Tensor:
    truth = truth.to(maps.device).bool()
    if truth.shape == maps.shape[1:]:
        truth = truth.unsqueeze(0).expand_as(maps)
    if truth.shape != maps.shape:
        raise UserError(
            f"the ground-truth {what} has shape {tuple(truth.shape)} but the maps are {tuple(maps.shape)}; "
            f"give one of shape {tuple(maps.shape[1:])} or {tuple(maps.shape)} on the map's grid"
        )
    empty = (truth.flatten(1).sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise UserError(
            f"the ground-truth {what} is empty for sample(s) {empty}, so localisation is undefined there; "
            "leave those samples out of localisation metrics"
        )
    return truth


def box_localisation(
    maps: Tensor,
    truth: Tensor | Sequence[BoundingBox],
    threshold: float = 0.1,
    *,
    connectivity: Connectivity = "full",
) -> Tensor:
    """IoU per sample of the map's box (largest region above ``threshold`` x max) and the true box.

    ``truth`` is a mask (its bounding box is the true box) or one :class:`BoundingBox` per sample.
    """
    masks = _ground_truth(maps, truth, "mask") if isinstance(truth, Tensor) else None
    boxes: list[BoundingBox | None] = [box_of_mask(t) for t in masks] if masks is not None else list(truth)
    if len(boxes) != maps.shape[0]:
        raise UserError(f"got {len(boxes)} ground-truth boxes for {maps.shape[0]} maps; give one per sample")
    found = map_boxes(maps, threshold, connectivity=connectivity)
    return torch.tensor([box_iou(p, t) for p, t in zip(found, boxes, strict=True)], dtype=torch.float64)


def pointing_game(maps: Tensor, truth: Tensor, *, tolerance: int = 0) -> Tensor:
    """1.0 per sample when the map's maximum lies inside the object, else 0.0.

    With several equal maxima every one must lie inside (a flat map does not get
    the benefit of the doubt); a map with no positive value is a miss.
    ``tolerance`` grows the object by that many voxels (Zhang et al. use 15 px at 224).
    """
    truth = _ground_truth(maps, truth, "mask")
    if tolerance > 0:
        array = truth.cpu().numpy()
        rank = array.ndim - 1
        structure = ndimage.generate_binary_structure(rank, rank)
        grown = np.stack([ndimage.binary_dilation(t, structure, iterations=tolerance) for t in array])
        truth = torch.from_numpy(grown).to(maps.device)
    dims = tuple(range(1, maps.ndim))
    top = maps.amax(dim=dims, keepdim=True)
    peak = maps == top
    outside = (peak & ~truth).flatten(1).any(dim=1)
    return ((~outside) & (top.flatten() > 0)).double().cpu()


def energy_inside(maps: Tensor, truth: Tensor) -> Tensor:
    """Share of the map's positive mass inside the object, ``sum(map * mask) / sum(map)``."""
    truth = _ground_truth(maps, truth, "mask")
    positive = maps.clamp_min(0).double()
    total = positive.flatten(1).sum(dim=1)
    inside = (positive * truth).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total)).cpu()


def mask_dice(predicted: Tensor, truth: Tensor) -> Tensor:
    """Dice of two boolean masks ``(N, ...)``, per sample: the one Dice of medcam.

    NaN when both masks are empty (nothing to find, nothing found: left out of
    averages), 0 when only one is.
    """
    predicted, truth = predicted.bool().flatten(1), truth.bool().flatten(1)
    inter = (predicted & truth).sum(dim=1).double()
    sizes = predicted.sum(dim=1).double() + truth.sum(dim=1).double()
    return (2 * inter / sizes).cpu()


def dice(maps: Tensor, truth: Tensor, threshold: float = 0.1) -> Tensor:
    """Dice of ``map > threshold * max`` with the object mask, per sample."""
    truth = _ground_truth(maps, truth, "mask")
    return mask_dice(threshold_map(maps, threshold), truth)
