"""Scoring and ranking levels by localisation, and the recommendation on a model whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import medcam
from medcam.errors import UserError
from medcam.metrics.levels import LevelScore, rank_levels, recommend_level, score_levels


def test_scores_by_hand_on_a_small_map() -> None:
    reference = torch.zeros(4, 4, dtype=torch.bool)
    reference[1:3, 1:3] = True  # 4 voxels
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[0, :] = True
    cam = torch.zeros(4, 4)
    cam[1, 1], cam[1, 2], cam[0, 0], cam[3, 3] = 1.0, 0.5, 0.25, 0.05  # 0.05 is below 0.1 x max
    (score,) = score_levels({"enc0": cam[None]}, region=region, reference=reference, paths={"enc0": "model.0"})
    total = 1.8
    assert score.path == "model.0"
    assert score.energy_in_region == pytest.approx(0.25 / total)
    assert score.energy_in_reference == pytest.approx(1.5 / total)
    assert score.pointing_game == 1.0
    # thresholded: (1,1), (1,2), (0,0) -> 2 of them inside the 4-voxel reference
    assert score.dice == pytest.approx(2 * 2 / (3 + 4))
    # largest region above threshold (full connectivity): (0,0), (1,1), (1,2) -> box rows 0-1, cols 0-2
    # (6 voxels) against the reference box (4 voxels): intersection 2
    assert score.box_iou == pytest.approx(2 / (6 + 4 - 2))


def test_scores_without_masks_are_none_and_batches_are_averaged() -> None:
    reference = np.zeros((2, 3), bool)
    reference[0, 0] = True
    hit = np.array([[1.0, 0, 0], [0, 0, 0]])
    miss = np.array([[0, 0, 0], [0, 0, 1.0]])
    (score,) = score_levels({"a": torch.tensor(np.stack([hit, miss]))}, reference=reference)
    assert score.pointing_game == 0.5 and score.dice == pytest.approx(0.5)
    (plain,) = score_levels({"a": hit}, batched=False)
    assert (plain.energy_in_region, plain.dice, plain.pointing_game) == (None, None, None)
    with pytest.raises(UserError, match="NaN or Inf"):
        score_levels({"a": np.full((2, 3), np.nan)}, reference=reference, batched=False)


def _score(name: str, dice: float, pointing: float = 0.0, energy: float = 0.0, box: float = 0.0) -> LevelScore:
    return LevelScore(name, name, None, pointing, dice, energy, box)


def test_ranking_rule_and_ties() -> None:
    scores = [
        _score("enc0", 0.30, 0.0, 0.9),
        _score("enc1", 0.5004, 0.0, 0.1),  # equal to dec0 to 3 decimals: the pointing game decides
        _score("bottleneck", 0.10, 1.0, 0.9),
        _score("dec0", 0.5001, 1.0, 0.1),
        _score("final", 0.30, 0.0, 0.9),  # full tie with enc0: data-flow order keeps enc0 first
    ]
    ranking = rank_levels(scores)
    assert [s.name for s in ranking.scores] == ["dec0", "enc1", "enc0", "final", "bottleneck"]
    assert ranking.best.name == "dec0"
    assert ranking.rule.startswith("highest Dice of the thresholded map first")
    assert "then data-flow order" in ranking.rule
    by_pointing = rank_levels(scores, by="pointing_game")
    assert [s.name for s in by_pointing.scores] == ["dec0", "bottleneck", "enc1", "enc0", "final"]
    assert by_pointing.as_dict()["recommended"] == "dec0"


def test_ranking_needs_a_reference_and_a_known_rule() -> None:
    with pytest.raises(UserError, match="ranking needs a reference mask"):
        rank_levels([LevelScore("enc0", "p", energy_in_region=0.5)])
    with pytest.raises(UserError, match="cannot rank by 'iou'"):
        rank_levels([_score("enc0", 0.1)], by="iou")  # type: ignore[arg-type]


class _Shifted(nn.Module):
    """Moves the evidence: ``roll`` the feature map, so its activation sits in the wrong place."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        return torch.roll(x, shifts=(self.shift, self.shift), dims=(2, 3))


class _KnownAnswer(nn.Module):
    """Class 1's logit at p is the input at p, routed through a level that holds it shifted.

    ``good`` = ReLU(x): the evidence where the object is. ``bad`` = ``good`` rolled by 8
    pixels; ``out`` rolls it back. With S = sum over the image of the class-1 logit,
    dS/d(good) = dS/d(bad) = 1, so HiResCAM at ``good`` is the object and at ``bad``
    the object moved by 8 pixels: ``good`` must be recommended, ``bad`` must come last.
    """

    def __init__(self) -> None:
        super().__init__()
        self.good = nn.ReLU()
        self.bad = _Shifted(8)
        self.back = _Shifted(-8)

    def forward(self, x: Tensor) -> Tensor:
        evidence = self.back(self.bad(self.good(x)))
        return torch.cat([torch.zeros_like(evidence), evidence], dim=1)


def test_the_level_that_holds_the_evidence_in_place_is_recommended() -> None:
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 4:12, 6:14] = 1.0
    reference = x[0, 0] > 0
    ranking = recommend_level(
        _KnownAnswer(),
        x,
        medcam.SegmentationTarget(1, pixels="image"),
        reference,
        layers={"bad": "bad", "good": "good"},
    )
    assert [s.name for s in ranking.scores] == ["good", "bad"]
    good, bad = ranking.scores
    assert good.dice == pytest.approx(1.0) and good.pointing_game == 1.0 and good.energy_in_reference == 1.0
    assert bad.dice == 0.0 and bad.pointing_game == 0.0 and bad.energy_in_reference == 0.0
    assert good.energy_in_region == pytest.approx(1.0)  # M is the whole image


def test_recommend_level_on_a_unet_ranks_every_level() -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = torch.zeros(32, 32, dtype=torch.bool)
    reference[8:20, 10:24] = True
    target = medcam.SegmentationTarget(1, pixels="box:8,10:20,24")
    ranking = recommend_level(model, x, target, reference, method="gradcam")
    assert sorted(s.name for s in ranking.scores) == sorted(["enc0", "enc1", "bottleneck", "dec0", "final"])
    # M is the box, which here is also the reference: both energies agree
    for score in ranking.scores:
        assert score.energy_in_region == pytest.approx(score.energy_in_reference)
