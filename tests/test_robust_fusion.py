"""RobustCAM's pure numerics: fusion over valid views and the stability metrics.

References are numpy's nan-aware reductions and scipy's Spearman correlation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcam.errors import UserError
from medcam.methods.robust import fuse


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
