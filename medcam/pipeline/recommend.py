"""``medcam levels``: explain every level of a checkpoint on an image file, score and rank them once.

The scoring is pure (:mod:`medcam.metrics.levels`); this module reads the files, runs
the explanation and writes the review folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcam.metrics.levels import DEFAULT_THRESHOLD, LevelRanking, RankBy, check_rule
from medcam.models.loading import ModelSource
from medcam.pipeline.options import ExplainOptions
from medcam.pipeline.volume import explain_and_rank
from medcam.review.bundle import VolumeExplanation
from medcam.review.folders import check_output


@dataclass(frozen=True)
class CaseRecommendation:
    """The ranking for one image file, the explanation it came from and the folder written (if any)."""

    ranking: LevelRanking
    explanation: VolumeExplanation
    out: Path | None


def recommend_case(
    volume: str | Path | Any,
    reference: str | Path,
    *,
    class_name: str,
    out: str | Path | None = None,
    overwrite: bool = False,
    layer: str = "levels",
    method: str = "hirescam",
    by: RankBy = "dice",
    threshold: float = DEFAULT_THRESHOLD,
    model: ModelSource = None,
    **settings: Any,
) -> CaseRecommendation:
    """Explain the levels of a checkpoint on an image file and rank them against ``reference``.

    ``reference`` is a mask file ``FILE[:LABEL]`` on the image's voxel grid (checked).
    With ``out`` the review folder is written (level NIfTIs, montage, ``summary.json``
    with the scores and the ranking). ``settings`` are further
    :class:`~medcam.pipeline.options.ExplainOptions` (``pixels``, ``device``, ...).
    """
    check_rule(by, threshold)  # before the model runs
    if out is not None:
        check_output(out, overwrite=overwrite)
    options = ExplainOptions.from_keywords(
        layer=layer, method=method, reference=reference, level_threshold=threshold, rank_by=by, **settings
    )
    explanation, ranking = explain_and_rank(volume, class_name=class_name, model=model, options=options)
    assert ranking is not None  # a reference was given
    written = explanation.save(out, overwrite=overwrite) if out is not None else None
    return CaseRecommendation(ranking, explanation, written)
