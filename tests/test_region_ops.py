"""Perturbation helpers of the region methods: blur, baselines, masked inputs, batching."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from medcam.core.perturbation import (
    baseline_image,
    batch_count,
    batch_ranges,
    blend,
    blur_baseline,
    gaussian_blur,
    gaussian_kernel,
    mask_to_input,
    resize,
    scaled_blur_parameters,
)
from medcam.errors import UserError


def test_gaussian_kernel_hand_computed() -> None:
    kernel = gaussian_kernel(3, 1.0, dtype=torch.float64, device=torch.device("cpu"))
    raw = np.exp(-0.5 * np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(kernel.numpy(), raw / raw.sum(), rtol=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gaussian_blur_matches_scipy_with_reflected_borders(dims: int) -> None:
    rng = np.random.default_rng(dims)
    shape = (2, 3, *([9] * dims))
    x = rng.standard_normal(shape)
    sizes, sigmas = (5, 3, 7)[:dims], (1.5, 0.8, 2.5)[:dims]
    ours = gaussian_blur(torch.from_numpy(x), sizes, sigmas).numpy()
    expected = x
    for axis, (size, sigma) in enumerate(zip(sizes, sigmas, strict=True), start=2):
        kernel = gaussian_kernel(size, sigma, dtype=torch.float64, device=torch.device("cpu")).numpy()
        # torch's "reflect" (d c b | a b c d) is scipy's "mirror"
        expected = ndimage.correlate1d(expected, kernel, axis=axis, mode="mirror")
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_blur_keeps_a_constant_image_and_short_axes_work() -> None:
    x = torch.full((1, 1, 2, 40), 3.0)
    out = gaussian_blur(x, (5, 9), (2.0, 4.0))  # the 2 px axis is padded by replication
    assert torch.allclose(out, x)


def test_blur_parameters_scale_with_image_size() -> None:
    assert scaled_blur_parameters((224, 224)) == ((51, 51), (50.0, 50.0))
    sizes, sigmas = scaled_blur_parameters((112, 448, 16))
    assert sizes == (25, 103, 3)
    assert sigmas == pytest.approx((25.0, 100.0, 50.0 * 16 / 224))
    assert scaled_blur_parameters((2,))[0] == (1,)


def test_blur_baseline_uses_scaled_parameters() -> None:
    x = torch.randn(1, 2, 28, 14, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sizes, sigmas = scaled_blur_parameters((28, 14))
    assert torch.allclose(blur_baseline(x), gaussian_blur(x, sizes, sigmas))


def test_gaussian_blur_rejects_wrong_parameters() -> None:
    with pytest.raises(UserError, match="per spatial axis"):
        gaussian_blur(torch.zeros(1, 1, 4, 4), (3,), (1.0,))
    with pytest.raises(UserError, match="odd"):
        gaussian_blur(torch.zeros(1, 1, 8), (4,), (1.0,))


def test_baseline_images() -> None:
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]], [[4.0, 5.0], [6.0, 7.0]]]])
    assert torch.equal(baseline_image(x, "zeros"), torch.zeros_like(x))
    low = baseline_image(x, "min")
    assert torch.equal(low[0, 0], torch.full((2, 2), -2.0))
    assert torch.equal(low[0, 1], torch.full((2, 2), 4.0))
    assert baseline_image(x, "blur").shape == x.shape
    with pytest.raises(UserError, match="baseline='black' is not known"):
        baseline_image(x, "black")


def test_blend_hand_computed() -> None:
    x = torch.tensor([[[2.0, 4.0]]])
    base = torch.tensor([[[1.0, 1.0]]])
    masks = torch.tensor([[0.25, 1.0]])
    assert blend(x, masks, None).tolist() == [[[0.5, 4.0]]]
    # base + m (x - base): 1 + 0.25 * 1 = 1.25 ; 1 + 1 * 3 = 4
    assert blend(x, masks, base).tolist() == [[[1.25, 4.0]]]


def test_masks_are_upsampled_and_normalised() -> None:
    masks = torch.tensor([[[0.0, 2.0], [2.0, 4.0]]])
    out = mask_to_input(masks, (4, 4), normalize=True)
    assert out.shape == (1, 4, 4)
    assert out.min().item() == 0.0 and out.max().item() == 1.0
    corners = mask_to_input(masks, (3, 3), normalize=False, align_corners=True)
    assert corners[0, 1, 1].item() == pytest.approx(2.0)  # the centre of a 2x2 map under align_corners


def test_batch_ranges_cover_everything_once() -> None:
    ranges = list(batch_ranges(10, 4))
    assert [(r.start, r.stop) for r in ranges] == [(0, 4), (4, 8), (8, 10)]
    assert batch_count(10, 4) == 3 and batch_count(0, 4) == 0
    with pytest.raises(UserError, match="batch_size"):
        list(batch_ranges(3, 0))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    ("shape", "size"), [((3, 7, 7), (224, 224)), ((2, 4, 3, 5), (16, 9, 21)), ((2, 6), (13,)), ((1, 9, 9), (4, 5))]
)
def test_separable_resize_matches_f_interpolate(shape, size, align_corners: bool) -> None:
    import torch.nn.functional as F

    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    expected = F.interpolate(maps[:, None], size=size, mode=mode, align_corners=align_corners)[:, 0]
    torch.testing.assert_close(resize(maps, size, align_corners=align_corners), expected, atol=1e-6, rtol=0)


def test_binarise_top_finds_a_long_rows_threshold_without_sorting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CT-sized map's threshold comes from a histogram and the few values above it: the same value, ties kept."""
    import medcam.core.perturbation as perturbation

    torch.manual_seed(0)
    maps = torch.randn(2, 30, 20, 10).round(decimals=1)  # many ties at the threshold
    whole = perturbation.binarise_top(maps, 0.05)
    monkeypatch.setattr(perturbation, "TOPK_PART", 37)  # every row of 6000 values counts as long
    parted = perturbation.binarise_top(maps, 0.05)
    assert torch.equal(parted, whole)
    rows = maps.flatten(1)
    expected = rows.sort(dim=1, descending=True).values[:, 299:300]
    assert torch.equal(perturbation._kth_largest(rows, 300), expected)


def test_release_free_memory_is_safe_to_call() -> None:
    from medcam.core.memory import release_free_memory

    released = release_free_memory()
    assert isinstance(released, bool) and (not released or sys.platform.startswith("linux"))
