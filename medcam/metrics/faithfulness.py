"""Faithfulness: does the model's confidence follow the map?

Two families, both scored with ``f_c`` = the explained class probability (softmax or
sigmoid; for segmentation its mean over the pixel set M, see :mod:`.scoring`):

* Average Drop and Average Increase (Chattopadhay et al. 2018, as in Fusion-CAM,
  Dekdegue et al. 2026): ``Y = f_c(X)``, ``O = f_c(X * map)``;
  ``AD = mean_i max(0, Y_i - O_i) / Y_i * 100`` (lower is better) and
  ``AI = % of samples with O_i > Y_i`` (higher is better).
* Deletion and insertion (Petsiuk et al. 2018): pixels ordered by saliency are
  changed in ``1 / steps`` steps (1 % by default). Deletion replaces them, most
  salient first, with a baseline (zeros by default); insertion starts from a
  blurred input and restores them. The area under each curve (trapezoid rule on
  [0, 1]) summarises it: deletion lower is better, insertion higher is better, and
  ``overall = AUC(insertion) - AUC(deletion)``.

A "pixel" is a spatial location (all channels change together); 2D and 3D alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medcam.core.hooks import OutputSelector
from medcam.errors import UserError
from medcam.metrics.ordering import BaselineSpec, resolve_baseline, saliency_rank
from medcam.metrics.scoring import Scorer, TargetSpec, check_maps, scoring

_TINY = 1e-12


@dataclass(frozen=True)
class DropIncrease:
    """Per-sample scores on the input (``original``, Y) and on the masked input (``masked``, O)."""

    original: Tensor
    masked: Tensor

    @property
    def drop(self) -> Tensor:
        """``max(0, Y - O) / Y * 100`` per sample."""
        return (self.original - self.masked).clamp_min(0) / self.original.clamp_min(_TINY) * 100

    @property
    def increase(self) -> Tensor:
        """Whether ``O > Y`` per sample."""
        return self.masked > self.original

    @property
    def average_drop(self) -> float:
        return float(self.drop.mean())

    @property
    def average_increase(self) -> float:
        return float(self.increase.double().mean() * 100)


@dataclass(frozen=True)
class PerturbationCurve:
    """A deletion or insertion curve: ``scores[i, j]`` is ``f_c`` of sample i at ``fractions[j]``."""

    kind: str
    fractions: Tensor
    scores: Tensor

    @property
    def auc(self) -> Tensor:
        """Area under each sample's curve by the trapezoid rule, ``(N,)``."""
        return trapezoid_auc(self.scores, self.fractions)


@dataclass(frozen=True)
class DeletionInsertion:
    """Both curves on the same maps; ``overall = AUC(insertion) - AUC(deletion)`` per sample."""

    deletion: PerturbationCurve
    insertion: PerturbationCurve

    @property
    def overall(self) -> Tensor:
        return self.insertion.auc - self.deletion.auc


def trapezoid_auc(scores: Tensor, fractions: Tensor) -> Tensor:
    """``sum_j (s_j + s_{j+1}) / 2 * (x_{j+1} - x_j)`` along the last axis."""
    widths = fractions[1:] - fractions[:-1]
    return ((scores[..., 1:] + scores[..., :-1]) / 2 * widths).sum(dim=-1)


def mask_input(x: Tensor, maps: Tensor, baseline: Tensor) -> Tensor:
    """``X * map + baseline * (1 - map)``: the map (in [0, 1]) keeps what it highlights."""
    weight = maps.unsqueeze(1)
    return x * weight + baseline * (1 - weight)


def average_drop_increase(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    baseline: BaselineSpec = "zeros",
    batch_size: int = 32,
    output: OutputSelector = None,
) -> DropIncrease:
    """Average Drop / Average Increase of ``maps`` (``(N, *spatial)``, values in [0, 1]).

    ``O`` scores ``X * map`` (with ``baseline="zeros"``, the papers' definition) or
    ``X * map + B * (1 - map)`` for another baseline ``B``. Pass the explanation's
    bound target (``explanation.target``) to score exactly the class and M it explained.
    """
    maps = check_maps(x, maps)
    if maps.min() < 0 or maps.max() > 1:
        raise UserError(
            f"Average Drop masks the input with the map, so it needs values in [0, 1], got "
            f"[{float(maps.min()):.3g}, {float(maps.max()):.3g}]; explain with normalize='minmax'"
        )
    with scoring(model, x, target, batch_size=batch_size, output=output) as scorer:
        original = scorer(x)
        masked = scorer(mask_input(x, maps, resolve_baseline(x, baseline)))
    return DropIncrease(original, masked)


def _curve(
    scorer: Scorer, x: Tensor, maps: Tensor, substitute: Tensor, *, insert: bool, steps: int, seed: int
) -> PerturbationCurve:
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    fractions = torch.arange(steps + 1, dtype=torch.float64) / steps
    pixels = maps[0].numel()
    counts = torch.round(fractions * pixels).long().to(x.device)
    generator = torch.Generator().manual_seed(seed)
    spatial = tuple(x.shape[2:])
    rows = []
    for n in range(x.shape[0]):
        rank = saliency_rank(maps[n], generator).view(1, 1, *spatial)
        original, replaced = x[n : n + 1], substitute[n : n + 1]
        if insert:  # revealed pixels come from the input, the rest from the substitute
            original, replaced = replaced, original
        scores = []
        for start in range(0, steps + 1, scorer.batch_size):
            k = counts[start : start + scorer.batch_size].view(-1, 1, *([1] * len(spatial)))
            changed = rank < k  # (B, 1, *spatial): the k most salient pixels
            scores.append(scorer.copies(torch.where(changed, replaced, original), n))
        rows.append(torch.cat(scores))
    return PerturbationCurve("insertion" if insert else "deletion", fractions, torch.stack(rows))


def _curves(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec,
    plan: tuple[tuple[bool, BaselineSpec], ...],
    steps: int,
    blur_sigma: float | None,
    batch_size: int,
    seed: int,
    output: OutputSelector,
) -> list[PerturbationCurve]:
    """One curve per ``(insert, substitute)`` of ``plan``, all on one bound target and one pixel order."""
    maps = check_maps(x, maps)
    with scoring(model, x, target, batch_size=batch_size, output=output) as scorer:
        return [
            _curve(
                scorer, x, maps, resolve_baseline(x, spec, blur_sigma=blur_sigma), insert=insert, steps=steps, seed=seed
            )
            for insert, spec in plan
        ]


def deletion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 100,
    baseline: BaselineSpec = "zeros",
    blur_sigma: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    output: OutputSelector = None,
) -> PerturbationCurve:
    """Deletion curve: the most salient pixels replaced by ``baseline`` in ``1/steps`` steps."""
    return _curves(model, x, maps, target, ((False, baseline),), steps, blur_sigma, batch_size, seed, output)[0]


def insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 100,
    start: BaselineSpec = "blur",
    blur_sigma: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    output: OutputSelector = None,
) -> PerturbationCurve:
    """Insertion curve: from ``start`` (a blurred input by default), the most salient pixels restored first."""
    return _curves(model, x, maps, target, ((True, start),), steps, blur_sigma, batch_size, seed, output)[0]


def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 100,
    deletion_baseline: BaselineSpec = "zeros",
    insertion_start: BaselineSpec = "blur",
    blur_sigma: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    output: OutputSelector = None,
) -> DeletionInsertion:
    """Both curves with one bound target (same class and M) and the same pixel order."""
    plan = ((False, deletion_baseline), (True, insertion_start))
    removed, inserted = _curves(model, x, maps, target, plan, steps, blur_sigma, batch_size, seed, output)
    return DeletionInsertion(removed, inserted)
