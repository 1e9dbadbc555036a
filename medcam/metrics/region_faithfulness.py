"""Faithfulness for segmentation targets: perturbations sized by the explained pixel set M.

Average Drop and whole-image deletion / insertion (:mod:`.faithfulness`) do not rank
explanations of a small structure: a 3D tumour covers ~0.1 % of a CT volume, so a 1 %
deletion step already removes ~10 x |M| voxels, and a soft mask times a CT image turns
tissue into other tissue. Here every perturbation is binary (a voxel is either the
input or the baseline) and its size is a multiple of ``unit`` voxels, by default |M|
(the size of the bound target's pixel set, per sample):

* keep-top-k: only the k most salient voxels stay, the rest shows the baseline;
  ``f_c`` should stay high (higher is better);
* remove-top-k: the k most salient voxels show the baseline; ``f_c`` should fall
  (lower is better);
* deletion / insertion over ``k = 0 .. extent x unit`` in ``steps`` steps, the AUC on
  the normalised axis [0, 1]. Insertion starts from the baseline, which for a
  segmentation target on the air baseline (``"min"``) scores ~0, so the curve measures
  what the map restores.

k in {0.5, 1, 2, 4} x |M| by default. Every score is only meaningful next to two
controls on the same sample, a random map (the floor) and the truth mask (the
ceiling): :func:`normalised` gives ``(O - O_random) / (O_truth - O_random)``, 0 for
the random map and 1 for the truth mask whichever direction the raw score runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medcam.core.hooks import OutputSelector
from medcam.errors import UserError
from medcam.metrics.faithfulness import trapezoid_auc
from medcam.metrics.ordering import BaselineSpec, resolve_baseline, saliency_rank
from medcam.metrics.scoring import Scorer, TargetSpec, check_maps, scoring

DEFAULT_MULTIPLES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
DEFAULT_BASELINE = "min"
DEFAULT_EXTENT = 4.0
DEFAULT_STEPS = 8


@dataclass(frozen=True)
class TopKScores:
    """``f_c`` with the top-k voxels kept / removed, ``(N, len(multiples))``; ``unit`` ``(N,)`` voxels."""

    multiples: tuple[float, ...]
    unit: Tensor
    original: Tensor
    baseline: Tensor
    keep: Tensor
    remove: Tensor

    @property
    def keep_score(self) -> Tensor:
        """Mean over the multiples of the kept-voxel score, ``(N,)``; higher is better."""
        return self.keep.mean(dim=1)

    @property
    def remove_score(self) -> Tensor:
        """Mean over the multiples of the score left after removal, ``(N,)``; lower is better."""
        return self.remove.mean(dim=1)


@dataclass(frozen=True)
class ScaledCurves:
    """Deletion and insertion over ``k = fraction x extent x unit`` voxels; ``scores`` ``(N, steps + 1)``."""

    fractions: Tensor
    extent: float
    unit: Tensor
    deletion: Tensor
    insertion: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        return trapezoid_auc(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> Tensor:
        return trapezoid_auc(self.insertion, self.fractions)

    @property
    def insertion_start(self) -> Tensor:
        """The insertion curve's first score (the baseline's): ~0 for a fair start."""
        return self.insertion[:, 0]


def pixel_set_size(scorer: Scorer, unit: int | Sequence[int] | None, count: int) -> Tensor:
    """``unit`` per sample: given, or |M| of the bound segmentation target."""
    if unit is None:
        mask = scorer.target.mask
        if mask is None:
            raise UserError(
                "region faithfulness sizes its perturbations by the pixel set M of a segmentation target; "
                "for a classifier pass unit=<number of pixels>"
            )
        return mask.flatten(1).sum(dim=1).long().cpu()
    values = torch.as_tensor([unit] * count if isinstance(unit, int) else list(unit), dtype=torch.long)
    if values.numel() != count or bool((values < 1).any()):
        raise UserError(f"unit must be a positive number of pixels (one, or one per sample), got {unit!r}")
    return values


def _perturbed(scorer: Scorer, x: Tensor, rank: Tensor, counts: Tensor, base: Tensor, n: int, *, keep: bool) -> Tensor:
    """Scores of sample ``n`` with its ``counts[j]`` top-ranked voxels kept (or removed)."""
    spatial = x.shape[2:]
    scores = []
    for start in range(0, counts.numel(), scorer.batch_size):
        k = counts[start : start + scorer.batch_size].to(x.device).view(-1, 1, *([1] * len(spatial)))
        top = rank.view(1, 1, *spatial) < k
        chosen = top if keep else ~top  # where the input shows
        scores.append(scorer.copies(torch.where(chosen, x[n : n + 1], base[n : n + 1]), n))
    return torch.cat(scores)


def keep_remove_top_k(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    multiples: Sequence[float] = DEFAULT_MULTIPLES,
    unit: int | Sequence[int] | None = None,
    baseline: BaselineSpec = DEFAULT_BASELINE,
    batch_size: int = 16,
    seed: int = 0,
    output: OutputSelector = None,
) -> TopKScores:
    """Keep-top-k and remove-top-k for ``k = m x unit`` voxels, each ``m`` of ``multiples``.

    Ties in the map (a binary mask, a flat map) are broken by a seeded random order.
    """
    maps = check_maps(x, maps)
    chosen = tuple(float(m) for m in multiples)
    if not chosen or any(m <= 0 for m in chosen):
        raise UserError(f"multiples must be positive multiples of the unit, got {multiples!r}")
    generator = torch.Generator().manual_seed(seed)
    with scoring(model, x, target, batch_size=batch_size, output=output) as scorer:
        sizes = pixel_set_size(scorer, unit, x.shape[0])
        base = resolve_baseline(x, baseline)
        original, floor = scorer(x), scorer(base)
        total = maps[0].numel()
        keep, remove = [], []
        for n in range(x.shape[0]):
            rank = saliency_rank(maps[n], generator)
            counts = torch.tensor([min(total, round(m * int(sizes[n]))) for m in chosen])
            keep.append(_perturbed(scorer, x, rank, counts, base, n, keep=True))
            remove.append(_perturbed(scorer, x, rank, counts, base, n, keep=False))
    return TopKScores(chosen, sizes, original, floor, torch.stack(keep), torch.stack(remove))


def scaled_deletion_insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    extent: float = DEFAULT_EXTENT,
    steps: int = DEFAULT_STEPS,
    unit: int | Sequence[int] | None = None,
    baseline: BaselineSpec = DEFAULT_BASELINE,
    batch_size: int = 16,
    seed: int = 0,
    output: OutputSelector = None,
) -> ScaledCurves:
    """Deletion (towards ``baseline``) and insertion (from ``baseline``) of up to ``extent x unit`` voxels.

    Both curves use one pixel order; step j changes ``round(j / steps x extent x unit)``
    voxels, so the AUC (on [0, 1]) compares maps by how they order the first few |M|
    voxels, not the whole volume.
    """
    maps = check_maps(x, maps)
    if steps < 1 or extent <= 0:
        raise UserError(f"steps must be >= 1 and extent > 0, got steps={steps}, extent={extent}")
    fractions = torch.arange(steps + 1, dtype=torch.float64) / steps
    generator = torch.Generator().manual_seed(seed)
    with scoring(model, x, target, batch_size=batch_size, output=output) as scorer:
        sizes = pixel_set_size(scorer, unit, x.shape[0])
        base = resolve_baseline(x, baseline)
        total = maps[0].numel()
        deletion, insertion = [], []
        for n in range(x.shape[0]):
            rank = saliency_rank(maps[n], generator)
            counts = torch.round(fractions * extent * int(sizes[n])).long().clamp_max(total)
            deletion.append(_perturbed(scorer, x, rank, counts, base, n, keep=False))
            insertion.append(_perturbed(scorer, x, rank, counts, base, n, keep=True))
    return ScaledCurves(fractions, float(extent), sizes, torch.stack(deletion), torch.stack(insertion))


def random_map(like: Tensor, seed: int = 0) -> Tensor:
    """The random-map control: seeded uniform noise shaped like ``like`` ``(N, *spatial)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(like.shape, generator=generator).to(like.device)


def normalised(score: Tensor | float, random: Tensor | float, truth: Tensor | float) -> Tensor:
    """``(O - O_random) / (O_truth - O_random)``: 0 = the random map, 1 = the truth mask.

    NaN where the controls tie (the metric cannot tell them apart on that sample).
    """
    o, r, t = (torch.as_tensor(v, dtype=torch.float64) for v in (score, random, truth))
    span = t - r
    return torch.where(span.abs() > 1e-12, (o - r) / torch.where(span.abs() > 1e-12, span, 1.0), float("nan"))
