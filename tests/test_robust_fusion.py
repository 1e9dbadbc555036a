"""RobustCAM's pure numerics: fusion over valid views and the stability metrics.

References are numpy's nan-aware reductions and scipy's Spearman correlation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from medcam.errors import UserError
from medcam.methods.robust import fuse
from medcam.methods.stability import mean_variance, spearman, top_fraction_iou, view_agreement


def _views(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(2, 5, 6, 7, generator=generator)
    valid = torch.rand(2, 5, 6, 7, generator=generator) > 0.35
    valid[0, :, 0, 0] = False  # a voxel no view saw
    return maps, valid


def test_fuse_matches_numpy_over_valid_views():
    maps, valid = _views()
    masked = np.where(valid.numpy(), maps.numpy().astype(np.float64), np.nan)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        mean = np.nan_to_num(np.nanmean(masked, axis=1))
        median = np.nan_to_num(np.nanmedian(masked, axis=1))  # averages the two middle values
        std = np.nan_to_num(np.nanstd(masked, axis=1))  # ddof 0
    fused, spread, count = fuse(maps, valid, "mean")
    np.testing.assert_allclose(fused.numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(spread.numpy(), std, atol=1e-6)
    np.testing.assert_array_equal(count.numpy(), valid.sum(dim=1).numpy())
    fused_median, spread_median, _ = fuse(maps, valid, "median")
    np.testing.assert_allclose(fused_median.numpy(), median, atol=1e-6)
    assert torch.equal(spread_median, spread)  # uncertainty is the std about the mean either way
    assert fused[0, 0, 0] == 0 and spread[0, 0, 0] == 0 and count[0, 0, 0] == 0
    assert fused.dtype == maps.dtype and torch.isfinite(fused_median).all()


def test_fuse_with_one_view_is_exactly_that_view():
    maps = torch.rand(3, 1, 4, 5, 6)
    valid = torch.ones_like(maps, dtype=torch.bool)
    for how in ("mean", "median"):
        fused, std, count = fuse(maps, valid, how)  # type: ignore[arg-type]
        assert torch.equal(fused, maps[:, 0]) and torch.equal(std, torch.zeros_like(std))
        assert torch.equal(count, torch.ones_like(count))


def test_fuse_rejects_unknown_fusion():
    maps, valid = _views()
    with pytest.raises(UserError, match="fusion"):
        fuse(maps, valid, "max")  # type: ignore[arg-type]


def test_spearman_matches_scipy_with_ties_and_validity():
    generator = torch.Generator().manual_seed(1)
    a = torch.randint(0, 6, (3, 9, 8), generator=generator).float()  # many ties
    b = a + torch.randn(3, 9, 8, generator=generator) * 2
    valid = torch.rand(3, 9, 8, generator=generator) > 0.2
    ours = spearman(a, b, valid)
    for n in range(3):
        keep = valid[n].numpy()
        reference = stats.spearmanr(a[n].numpy()[keep], b[n].numpy()[keep]).statistic
        assert math.isclose(float(ours[n]), float(reference), abs_tol=1e-10)


def test_spearman_counts_undefined_correlation_as_zero():
    a = torch.ones(1, 5, 5)
    b = torch.rand(1, 5, 5)
    assert float(spearman(a, b)[0]) == 0.0
    assert float(spearman(b, b)[0]) == pytest.approx(1.0)
    assert float(spearman(b, -b)[0]) == pytest.approx(-1.0)


def test_top_fraction_iou_hand_computed():
    # 10 voxels, top 20 % = 2 voxels each
    a = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    b = torch.tensor([[8.0, 9, 0, 1, 2, 3, 4, 5, 6, 7]])
    assert float(top_fraction_iou(a, b, fraction=0.2)[0]) == 1.0  # {0, 1} both
    assert float(top_fraction_iou(a, b, fraction=0.5)[0]) == pytest.approx(2 / 8)  # {0..4} vs {0,1,7,8,9}
    # without voxel 0: top 2 of 9 (round(1.8) = 2) are a {1, 2}, b {1, 9}
    valid = torch.ones_like(a, dtype=torch.bool)
    valid[0, 0] = False
    assert float(top_fraction_iou(a, b, valid, fraction=0.2)[0]) == pytest.approx(1 / 3)
    assert math.isnan(float(top_fraction_iou(a, b, torch.zeros_like(valid), fraction=0.2)[0]))


def test_view_agreement_equals_the_per_view_metrics():
    generator = torch.Generator().manual_seed(2)
    views = torch.rand(4, 12, 10, generator=generator).round(decimals=1)  # ties included
    reference = torch.rand(12, 10, generator=generator)
    valid = torch.ones_like(views, dtype=torch.bool)
    valid[1, :3] = False  # a view that lost some voxels
    valid[3] = False  # and one that lost all
    ious, rhos = view_agreement(views, reference, valid, fraction=0.1)
    for v in range(3):
        ref = reference[None]
        assert float(ious[v]) == float(top_fraction_iou(views[v : v + 1], ref, valid[v : v + 1], 0.1)[0])
        assert float(rhos[v]) == pytest.approx(float(spearman(views[v : v + 1], ref, valid[v : v + 1])[0]))
    assert math.isnan(float(ious[3])) and float(rhos[3]) == 0.0


def test_mean_variance_ignores_unseen_voxels():
    std = torch.tensor([[[0.0, 0.5], [0.1, 0.3]]])
    count = torch.tensor([[[0.0, 2.0], [3.0, 1.0]]])
    assert float(mean_variance(std, count)[0]) == pytest.approx((0.25 + 0.01 + 0.09) / 3)
