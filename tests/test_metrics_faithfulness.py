"""Faithfulness metrics on models whose right answer is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import medcam
from medcam.errors import UserError
from medcam.metrics import (
    average_drop_increase,
    deletion,
    deletion_insertion,
    gaussian_blur,
    insertion,
    resolve_baseline,
    trapezoid_auc,
)
from medcam.metrics.ordering import saliency_rank
from medcam.metrics.scoring import scoring


class ObjectEvidence(nn.Module):
    """Two classes; logit_1 = gain * (mean of x over a fixed object region), logit_0 = 0.

    So p_1 = sigmoid(gain * share of the object's intensity that is left): every
    perturbation score has a closed form. ``segmentation=True`` broadcasts the two
    logits over the spatial grid (N, 2, *spatial), so the mean class-1 probability
    over any M equals the classifier's p_1.
    """

    def __init__(self, region: Tensor, gain: float = 4.0, segmentation: bool = False) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.gain = nn.Parameter(torch.tensor(gain))
        self.segmentation = segmentation

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.ndim))
        evidence = (x * self.region).sum(dim=dims) / self.region.sum()
        logits = torch.stack([torch.zeros_like(evidence), self.gain * evidence], dim=1)
        if self.segmentation:
            logits = logits.view(*logits.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
        return logits


class Blind(nn.Module):
    """A model that ignores its input: constant logits."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.3, 1.1, -0.4]))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def object_case(shape: tuple[int, ...] = (10, 10)) -> tuple[Tensor, Tensor]:
    """Input (1, 1, *shape): ones on an object of 10 pixels in raster order, zeros elsewhere."""
    region = torch.zeros(shape)
    region.view(-1)[20:30] = 1
    return region[None, None].clone(), region


def test_trapezoid_auc_matches_hand_computation() -> None:
    fractions = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    scores = torch.tensor([[1.0, 0.5, 0.5, 0.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    # (1 + .5)/2 * .25 + (.5 + .5)/2 * .25 + (.5 + 0)/2 * .5 = .1875 + .125 + .125
    expected = torch.tensor([0.4375, 0.0 + 0.125 + 0.5], dtype=torch.float64)
    assert torch.allclose(trapezoid_auc(scores, fractions), expected)


def test_blind_model_has_zero_average_drop_and_flat_curves() -> None:
    model = Blind()
    x = torch.randn(3, 1, 8, 8)
    maps = torch.rand(3, 8, 8)
    result = average_drop_increase(model, x, maps)
    assert result.average_drop == 0.0
    assert result.average_increase == 0.0
    curves = deletion_insertion(model, x, maps, steps=10)
    p = torch.softmax(model.logits.detach().double(), 0)[1].item()  # predicted class is 1
    assert torch.allclose(curves.deletion.scores, torch.full((3, 11), p, dtype=torch.float64))
    assert torch.allclose(curves.overall, torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_average_drop_and_increase_closed_form() -> None:
    x, region = object_case()
    model = ObjectEvidence(region)
    y = sigmoid(4.0)
    exact = average_drop_increase(model, x, region[None], target=1)
    assert exact.average_drop == pytest.approx(0.0, abs=1e-9)
    assert exact.average_increase == 0.0
    half = average_drop_increase(model, x, torch.full((1, 10, 10), 0.5), target=1)
    assert half.original.item() == pytest.approx(y)
    assert half.masked.item() == pytest.approx(sigmoid(2.0))
    assert half.average_drop == pytest.approx((y - sigmoid(2.0)) / y * 100)
    # a map that points away from the object drops everything down to p(0) = 0.5
    away = average_drop_increase(model, x, 1 - region[None], target=1)
    assert away.average_drop == pytest.approx((y - 0.5) / y * 100)


def test_average_increase_counts_samples_whose_confidence_rises() -> None:
    x, region = object_case()
    model = ObjectEvidence(region, gain=-4.0)  # class 1 grows as the object fades
    x2 = x.repeat(2, 1, 1, 1)
    maps = torch.stack([1 - region, torch.ones(10, 10)])  # hide the object / keep everything
    result = average_drop_increase(model, x2, maps, target=1)
    assert result.increase.tolist() == [True, False]
    assert result.average_increase == 50.0


def test_deletion_and_insertion_curves_match_closed_form() -> None:
    x, region = object_case()
    model = ObjectEvidence(region)
    saliency = torch.linspace(1, 0, 100).view(1, 10, 10)  # raster order: object pixels 20..29 at ranks 20..29
    curves = deletion_insertion(model, x, saliency, target=1, steps=100, deletion_baseline="zeros", insertion_start=0.0)
    # step i changes the i most salient pixels; object pixel j has rank 20 + j
    left = [10 - min(max(i - 20, 0), 10) for i in range(101)]
    expected_del = torch.tensor([sigmoid(4.0 * k / 10) for k in left], dtype=torch.float64)
    expected_ins = torch.tensor([sigmoid(4.0 * (10 - k) / 10) for k in left], dtype=torch.float64)
    assert torch.allclose(curves.deletion.scores[0], expected_del)
    assert torch.allclose(curves.insertion.scores[0], expected_ins)
    hand_del = sum((expected_del[i] + expected_del[i + 1]).item() / 2 * 0.01 for i in range(100))
    assert curves.deletion.auc.item() == pytest.approx(hand_del)
    assert curves.overall.item() == pytest.approx(curves.insertion.auc.item() - hand_del)


def test_map_on_the_object_beats_a_random_map_which_gives_deletion_close_to_insertion() -> None:
    torch.manual_seed(0)
    shape = (24, 24)
    region = torch.zeros(shape)
    region[5:15, 8:20] = 1
    x = (region + 0.1 * torch.rand(shape))[None, None].repeat(4, 1, 1, 1)
    model = ObjectEvidence(region, gain=6.0)
    exact = deletion_insertion(model, x, region.expand(4, *shape), target=1, insertion_start="zeros")
    assert (exact.overall > 0.3).all()
    random_maps = torch.rand(4, *shape)
    # with one substitute for both curves, deletion(t) and insertion(1 - t) see the same
    # random share of the object, so their areas agree up to sampling noise
    rand = deletion_insertion(model, x, random_maps, target=1, insertion_start="zeros")
    assert rand.overall.abs().max() < 0.03
    assert rand.deletion.auc.mean() > exact.deletion.auc.mean() + 0.2


def test_segmentation_target_scores_the_mean_probability_over_m_in_3d() -> None:
    x, region = object_case((4, 5, 5))
    model = ObjectEvidence(region, segmentation=True)
    box = medcam.SegmentationTarget(1, pixels="box:0,0,0:2,2,2")
    saliency = torch.linspace(1, 0, 100).view(1, 4, 5, 5)
    curve = deletion(model, x, saliency, target=box, steps=100)
    left = [10 - min(max(i - 20, 0), 10) for i in range(101)]
    expected = torch.tensor([sigmoid(4.0 * k / 10) for k in left], dtype=torch.float64)
    assert torch.allclose(curve.scores[0], expected)


def test_scorer_uses_the_bound_pixel_set() -> None:
    class Ramp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.0))

        def forward(self, x: Tensor) -> Tensor:
            ramp = torch.linspace(-2, 2, x.shape[-1]).expand_as(x[:, 0])
            return torch.stack([torch.zeros_like(ramp), self.scale * ramp + x[:, 0]], dim=1)

    x = torch.zeros(2, 1, 3, 6)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[:, 4:] = True
    target = medcam.SegmentationTarget(1, pixels=mask)
    with scoring(Ramp(), x, target, batch_size=1) as scorer:
        got = scorer(x)
    ramp = torch.linspace(-2, 2, 6)
    expected = torch.sigmoid(ramp[4:]).mean().double()
    assert torch.allclose(got, expected.expand(2))


def test_explanation_target_is_reused_and_model_is_left_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    net.train()
    x = torch.randn(2, 1, 12, 12)
    exp = medcam.explain(net, x, "gradcam", layers="0")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    curves = deletion_insertion(net, x, exp.map, exp.target, steps=20, batch_size=7)
    drop = average_drop_increase(net, x, exp.map, exp.target)
    assert curves.deletion.scores.shape == (2, 21)
    assert torch.isfinite(curves.overall).all() and drop.original.shape == (2,)
    assert all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_batch_size_does_not_change_the_curve() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)
    )
    x, maps = torch.randn(2, 1, 9, 9), torch.rand(2, 9, 9)
    a = insertion(net, x, maps, 0, steps=25, batch_size=1)
    b = insertion(net, x, maps, 0, steps=25, batch_size=64)
    assert torch.allclose(a.scores, b.scores, atol=1e-6)
    assert a.scores[:, -1].allclose(b.scores[:, -1])
    # the last insertion step is the full input
    with torch.no_grad():
        full = torch.softmax(net(x), 1)[:, 0].double()
    assert torch.allclose(a.scores[:, -1], full, atol=1e-6)


def test_gaussian_blur_keeps_constants_and_smooths_in_3d() -> None:
    flat = torch.full((1, 2, 6, 7, 8), 3.0)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)
    spike = torch.zeros(1, 1, 9, 9, 9)
    spike[0, 0, 4, 4, 4] = 1
    out = gaussian_blur(spike, 1.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0, 4, 4, 4] < 0.1 and out[0, 0, 4, 4, 5] > 0
    assert torch.allclose(out, out.flip(-1))


def test_ties_are_removed_in_seeded_random_order() -> None:
    flat = torch.zeros(6, 6)
    a = saliency_rank(flat, torch.Generator().manual_seed(0))
    b = saliency_rank(flat, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(36))
    assert not torch.equal(a, torch.arange(36))  # not raster order
    ramp = torch.arange(36.0).view(6, 6)
    assert torch.equal(saliency_rank(ramp, torch.Generator()), torch.arange(35, -1, -1))


def test_baselines() -> None:
    x = torch.arange(8.0).view(1, 2, 2, 2)
    assert torch.equal(resolve_baseline(x, "min")[0, 1], torch.full((2, 2), 4.0))
    assert torch.equal(resolve_baseline(x, "mean")[0, 0], torch.full((2, 2), 1.5))
    assert torch.equal(resolve_baseline(x, -1000.0), torch.full_like(x, -1000.0))
    with pytest.raises(UserError, match="not known"):
        resolve_baseline(x, "black")


def test_bad_maps_are_refused_with_the_expected_shape() -> None:
    model = Blind()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(UserError, match=r"needs \(2, 8, 8\)"):
        deletion(model, x, torch.rand(2, 4, 4))
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        average_drop_increase(model, x, torch.rand(2, 8, 8) * 3)
    with pytest.raises(UserError, match="NaN"):
        insertion(model, x, torch.full((2, 8, 8), float("nan")))
