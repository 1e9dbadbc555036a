"""Map similarity (Spearman, SSIM, top-k IoU) and the RobustCAM stability scores."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from medcam.errors import UserError
from medcam.metrics import fuse_mean, pearson, per_pixel_variance, spearman, ssim, stability, top_k_iou, top_k_mask


def test_spearman_matches_scipy_with_ties() -> None:
    torch.manual_seed(0)
    a = torch.randint(0, 5, (3, 7, 9)).float()  # many ties
    b = a + torch.randn(3, 7, 9)
    ours = spearman(a, b)
    for n in range(3):
        ref = stats.spearmanr(a[n].flatten().numpy(), b[n].flatten().numpy()).statistic
        assert ours[n].item() == pytest.approx(ref, abs=1e-12)
    assert pearson(a, 2 * a + 1).allclose(torch.ones(3, dtype=torch.float64))


def test_ranks_and_top_k_of_signed_maps_with_signed_zeros() -> None:
    # maps without ReLU: negative values, -0.0 and +0.0 (equal, so tied), float32 and float64
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        a = torch.randint(-3, 4, (2, 40)).to(dtype) * torch.rand(2, 40).round(decimals=1).to(dtype)
        a[:, ::9] = -0.0
        b = a + torch.randn(2, 40, dtype=dtype)
        for n in range(2):
            ref = stats.spearmanr(a[n].numpy(), b[n].numpy()).statistic
            assert spearman(a, b)[n].item() == pytest.approx(ref, abs=1e-12)
        # highest first, ties by position: a stable descending sort
        order = torch.argsort(a, dim=1, descending=True, stable=True)[:, :4]
        expected = torch.zeros_like(a, dtype=torch.bool).scatter_(1, order, True)
        assert torch.equal(top_k_mask(a, 0.1), expected)


def test_constant_maps_count_as_zero_correlation() -> None:
    a = torch.zeros(2, 5, 5)
    b = torch.rand(2, 5, 5)
    assert spearman(a, b).tolist() == [0.0, 0.0]
    assert pearson(b, a).tolist() == [0.0, 0.0]


def test_ssim_known_values() -> None:
    torch.manual_seed(0)
    a = torch.rand(2, 16, 16)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    # two constant maps: variances and covariance vanish, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = 0.01**2
    got = ssim(torch.full((1, 12, 12, 12), 0.2), torch.full((1, 12, 12, 12), 0.6))
    assert got.item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1))
    assert ssim(a, 1 - a).max() < 0.0
    # maps smaller than the window still work (window shrinks to an odd size that fits)
    assert ssim(torch.rand(1, 4, 6), torch.rand(1, 4, 6)).isfinite().all()


def test_top_k_iou_by_hand() -> None:
    a = torch.arange(10.0).view(1, 10)
    b = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    assert top_k_mask(a, 0.2).nonzero()[:, 1].tolist() == [8, 9]
    assert top_k_iou(a, a, 0.2).item() == 1.0
    assert top_k_iou(a, b, 0.2).item() == 0.0
    c = torch.tensor([[0.0, 0, 0, 0, 0, 0, 0, 0, 9, 0.5]])  # top 3: {8, 9} and the first tied zero, 0
    assert top_k_iou(a, c, 0.3).item() == pytest.approx(2 / 4)  # {7, 8, 9} vs {8, 9, 0}


def test_identical_views_are_perfectly_stable() -> None:
    base = torch.rand(3, 6, 7, 8)
    views = base.expand(4, -1, -1, -1, -1)
    result = stability(views)
    assert torch.allclose(result.variance, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(result.top_k_iou, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(result.spearman, torch.ones(3, dtype=torch.float64))


def test_variance_ignores_invalid_pixels() -> None:
    views = torch.tensor([[[0.0, 1.0]], [[2.0, 1.0]], [[9.0, 5.0]]])  # (V=3, N=1, 2 pixels)
    valid = torch.tensor([[[True, True]], [[True, True]], [[False, True]]])
    # pixel 0: views 0 and 1 valid -> values 0, 2 -> variance 1
    # pixel 1: values 1, 1, 5 -> mean 7/3, variance ((4/3)^2 * 2 + (8/3)^2) / 3 = 32/9
    assert per_pixel_variance(views, valid).item() == pytest.approx((1 + 32 / 9) / 2)
    assert fuse_mean(views, valid)[0].tolist() == pytest.approx([1.0, 7 / 3])
    with pytest.raises(UserError, match="at least 2 views"):
        stability(views[:1])


def test_a_scrambled_view_lowers_every_score() -> None:
    torch.manual_seed(0)
    grid = torch.linspace(-1, 1, 20)
    smooth = torch.exp(-(grid[:, None] ** 2 + grid[None] ** 2) * 3).unsqueeze(0)
    steady = torch.stack([smooth, smooth * 0.9, smooth])
    shaky = torch.stack([smooth, torch.rand(1, 20, 20), smooth])
    good, bad = stability(steady), stability(shaky)
    assert good.spearman.item() > 0.99 and bad.spearman.item() < good.spearman.item() - 0.1
    assert bad.top_k_iou.item() < good.top_k_iou.item()
    assert bad.variance.item() > good.variance.item()


def test_view_agreement_equals_the_per_view_metrics() -> None:
    from medcam.metrics.similarity import spearman, top_k_iou
    from medcam.metrics.stability import view_agreement

    generator = torch.Generator().manual_seed(2)
    views = torch.rand(4, 12, 10, generator=generator).round(decimals=1)  # ties included
    reference = torch.rand(12, 10, generator=generator)
    valid = torch.ones_like(views, dtype=torch.bool)
    valid[1, :3] = False  # a view that lost some pixels
    valid[3] = False  # and one that lost all
    ious, rhos = view_agreement(views, reference, valid, fraction=0.1)
    for v in range(3):
        seen = valid[v]
        a, b = views[v][seen][None], reference[seen][None]
        assert float(ious[v]) == float(top_k_iou(a, b, 0.1)[0])
        assert float(rhos[v]) == pytest.approx(float(spearman(a, b)[0]))
    assert math.isnan(float(ious[3])) and float(rhos[3]) == 0.0
    # hand-computed: 10 pixels, top 20 % = 2 each; a {0, 1}, b {1, 0} -> IoU 1; top 50 %: {0..4} vs {0,1,7,8,9}
    a = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    b = torch.tensor([8.0, 9, 0, 1, 2, 3, 4, 5, 6, 7])
    assert float(view_agreement(a, b, fraction=0.2)[0][0]) == 1.0
    assert float(view_agreement(a, b, fraction=0.5)[0][0]) == pytest.approx(2 / 8)


def test_mean_variance_ignores_unseen_pixels() -> None:
    from medcam.metrics.stability import mean_variance

    std = torch.tensor([[[0.0, 0.5], [0.1, 0.3]]])
    count = torch.tensor([[[0.0, 2.0], [3.0, 1.0]]])
    assert float(mean_variance(std, count)[0]) == pytest.approx((0.25 + 0.01 + 0.09) / 3)
