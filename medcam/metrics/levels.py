"""Which level (layer) to explain: per-level localisation and a recommendation (pure scoring).

Files and folders (``medcam levels``) are the pipeline's: :mod:`medcam.pipeline.recommend`.

Ban (2025) finds that an intermediate layer localises best and leaves automated layer
selection as future work; Rheude et al. (2024, Appendix Fig. 8) show that what a
U-Net "looks at" changes level by level. Given the maps of several levels (from one
pass, ``layers="levels"``) and a reference mask, each level is scored with the
localisation metrics of :mod:`medcam.metrics.localisation`:

* ``energy_in_region``: share of the map's mass inside the explained pixel set M
  (needs no reference: how much of the explanation stays on what was explained);
* ``pointing_game``: 1 when the map's maximum lies inside the reference;
* ``dice``: Dice of ``map > threshold * max`` (default 0.1, docs/metrics.md) with the reference;
* ``energy_in_reference``: share of the map's mass inside the reference;
* ``box_iou``: IoU of the box of the largest region above the threshold with the
  reference's box (Ban's metric).

Ranking rule (default ``by="dice"``): highest Dice of the thresholded map first; ties
(values equal to 3 decimals) broken by the pointing game, then energy inside the
reference, then box IoU, then data-flow order (the earlier level). ``by`` puts
another metric first and keeps the rest of that order. The recommended level is the
first of the ranking. Scores of several samples are averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from medcam.errors import UserError
from medcam.metrics.localisation import box_localisation, dice, energy_inside, pointing_game
from medcam.models.levels import level_order

if TYPE_CHECKING:
    from medcam.api import LayerSpec
    from medcam.core.targets import BoundTarget, Target

RankBy = Literal["dice", "pointing_game", "energy_in_reference", "box_iou"]
RANK_ORDER: tuple[str, ...] = ("dice", "pointing_game", "energy_in_reference", "box_iou")
DEFAULT_THRESHOLD = 0.1
TIE_DECIMALS = 3

MapLike = Tensor | np.ndarray


@dataclass(frozen=True)
class LevelScore:
    """Localisation numbers of one level's map; ``None`` where the mask they need was not given."""

    name: str
    path: str
    energy_in_region: float | None = None
    pointing_game: float | None = None
    dice: float | None = None
    energy_in_reference: float | None = None
    box_iou: float | None = None

    def as_dict(self, decimals: int = 4) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        for item in fields(self):
            if item.name in ("name", "path"):
                continue
            value = getattr(self, item.name)
            out[item.name] = None if value is None else round(float(value), decimals)
        return out


@dataclass(frozen=True)
class LevelRanking:
    """Levels ordered best first by ``rule``; ``best`` is the recommendation."""

    scores: tuple[LevelScore, ...]
    by: str
    threshold: float

    @property
    def best(self) -> LevelScore:
        return self.scores[0]

    @property
    def rule(self) -> str:
        rest = [m for m in RANK_ORDER if m != self.by]
        return (
            f"highest {_LABELS[self.by]} first (map thresholded at {self.threshold:g} x its maximum); ties "
            f"(equal to {TIE_DECIMALS} decimals) by {', then '.join(_LABELS[m] for m in rest)}, then data-flow order"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "by": self.by,
            "order": [s.name for s in self.scores],
            "recommended": self.best.name,
            "recommended_path": self.best.path,
        }


_LABELS = {
    "dice": "Dice of the thresholded map",
    "pointing_game": "pointing game",
    "energy_in_reference": "energy inside the reference",
    "box_iou": "box IoU",
}


def _batch(value: MapLike, what: str) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return tensor.detach().cpu()


def score_levels(
    maps: Mapping[str, MapLike],
    *,
    region: MapLike | None = None,
    reference: MapLike | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    paths: Mapping[str, str] | None = None,
    batched: bool = True,
) -> list[LevelScore]:
    """Localisation of each map against the pixel set M (``region``) and a ``reference`` mask.

    ``maps`` are ``(N, *spatial)`` (``batched=True``, what :func:`medcam.explain`
    returns) or one ``(*spatial)`` array each (``batched=False``, e.g. the maps of a
    :class:`~medcam.review.bundle.VolumeExplanation`); masks have the spatial shape
    (shared by all samples) or the maps' full shape. Per-sample values are averaged.
    """
    if not maps:
        raise UserError("no maps to score; explain at least one layer")
    paths = dict(paths or {})
    region_t = None if region is None else _batch(region, "region").bool()
    reference_t = None if reference is None else _batch(reference, "reference").bool()
    scores = []
    for name, value in maps.items():
        m = _batch(value, f"map {name!r}").float()
        if not batched:
            m = m.unsqueeze(0)
        if not m.isfinite().all():
            raise UserError(f"the map of {name!r} has NaN or Inf values; it cannot be scored")
        values: dict[str, float | None] = {}
        if region_t is not None:
            values["energy_in_region"] = float(energy_inside(m, region_t).mean())
        if reference_t is not None:
            values["pointing_game"] = float(pointing_game(m, reference_t).mean())
            values["dice"] = float(dice(m, reference_t, threshold).mean())
            values["energy_in_reference"] = float(energy_inside(m, reference_t).mean())
            values["box_iou"] = float(box_localisation(m, reference_t, threshold).mean())
        scores.append(LevelScore(name, paths.get(name, name), **values))
    return scores


def check_rule(by: str, threshold: float) -> None:
    if by not in RANK_ORDER:
        raise UserError(f"cannot rank by {by!r}; use one of {', '.join(RANK_ORDER)}")
    if not 0.0 <= threshold < 1.0:
        raise UserError(f"threshold is a fraction of the map's maximum in [0, 1), got {threshold}")


def rank_levels(
    scores: Sequence[LevelScore], *, by: RankBy = "dice", threshold: float = DEFAULT_THRESHOLD
) -> LevelRanking:
    """Order scored levels best first (see the module docstring for the rule)."""
    check_rule(by, threshold)
    if not scores:
        raise UserError("no levels to rank")
    missing = [s.name for s in scores if s.dice is None]
    if missing:
        raise UserError(
            f"levels {missing} have no reference scores; ranking needs a reference mask "
            "(reference=... in the API, --reference mask.nii.gz on the command line)"
        )
    keys = [by, *(m for m in RANK_ORDER if m != by)]
    flow = {name: i for i, name in enumerate(level_order([s.name for s in scores]))}

    def key(score: LevelScore) -> tuple[float, ...]:
        return (*(-round(float(getattr(score, k)), TIE_DECIMALS) for k in keys), float(flow[score.name]))

    return LevelRanking(tuple(sorted(scores, key=key)), by, threshold)


def level_summary(
    maps: Mapping[str, MapLike],
    *,
    paths: Mapping[str, str],
    region: MapLike | None,
    reference: MapLike | None,
    reference_definition: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    by: RankBy = "dice",
) -> dict[str, Any]:
    """The ``levels`` section of ``summary.json`` for maps on one grid (``(*spatial)`` arrays)."""
    return summarise_levels(maps, paths, region, reference, reference_definition, threshold, by)[0]


def summarise_levels(
    maps: Mapping[str, MapLike],
    paths: Mapping[str, str],
    region: MapLike | None,
    reference: MapLike | None,
    reference_definition: str | None,
    threshold: float,
    by: RankBy,
) -> tuple[dict[str, Any], LevelRanking | None]:
    scores = score_levels(maps, region=region, reference=reference, threshold=threshold, paths=paths, batched=False)
    ranking = rank_levels(scores, by=by, threshold=threshold) if reference is not None else None
    section: dict[str, Any] = {
        "order": level_order(list(maps)),
        "threshold": threshold,
        "region": "the explained pixel set M" if region is not None else None,
        "reference": None
        if reference is None
        else {"definition": reference_definition, "voxels": int(np.count_nonzero(np.asarray(reference)))},
        "scores": {s.name: s.as_dict() for s in scores},
        "ranking": ranking.as_dict() if ranking is not None else None,
    }
    return section, ranking


def recommend_level(
    model: torch.nn.Module,
    x: Tensor,
    target: Target | BoundTarget | int | None,
    reference: MapLike,
    *,
    method: str = "hirescam",
    layers: LayerSpec = "levels",
    by: RankBy = "dice",
    threshold: float = DEFAULT_THRESHOLD,
    **explain_options: Any,
) -> LevelRanking:
    """Explain every level in one pass and rank the levels by localisation against ``reference``.

    ``reference`` is a boolean mask on the input grid (``(*spatial)`` or ``(N, *spatial)``).
    ``layers`` defaults to every discovered U-Net level; any layer spec of
    :func:`medcam.explain` works (module paths for other networks).
    """
    from medcam.api import explain

    check_rule(by, threshold)
    exp = explain(model, x, method, target, layers, **explain_options)
    region = exp.target.mask
    if region is not None and tuple(region.shape[1:]) != tuple(x.shape[2:]):
        region = None  # M lives on the output grid; only comparable when it matches the input grid
    scores = score_levels(exp.maps, region=region, reference=reference, threshold=threshold, paths=exp.layers)
    return rank_levels(scores, by=by, threshold=threshold)
