"""Augmentation views: exact inverses, validity masks, mask warping, seeded photometric views."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import ndimage
from torchvision.transforms import InterpolationMode

from medcam.methods.robust import fuse
from medcam.methods.robust.views import (
    Flip,
    Gamma,
    GaussianBlur,
    Greyscale,
    Identity,
    IntensityJitter,
    IntensityScaleShift,
    Rotation,
    View,
    ViewError,
    anatomical_axes,
    default_views,
    parse_view,
)


def blob(shape: tuple[int, ...], centre: tuple[float, ...], sigma: float) -> torch.Tensor:
    """A smooth map ``(1, *shape)``, near zero at the border when ``centre`` is inside."""
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    dist2 = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True))
    return torch.exp(-dist2 / (2 * sigma**2))[None]


def test_rotation_matches_torchvision_rotate():
    # an independent implementation of the same convention: bilinear, zero fill, about the centre,
    # positive = counter-clockwise on screen
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 30)
    for degrees in (15.0, -10.0, 37.0):
        ours = Rotation(degrees).apply(x)
        reference = TF.rotate(x, degrees, interpolation=InterpolationMode.BILINEAR)
        assert torch.allclose(ours, reference, atol=1e-5), degrees


def test_rotation_by_90_degrees_is_a_grid_permutation():
    x = torch.rand(1, 1, 9, 9)
    turned = Rotation(90.0).apply(x)
    # counter-clockwise on screen: the top row becomes the left column, read bottom-up
    assert torch.allclose(turned, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)


@pytest.mark.parametrize(
    ("view", "shape", "tolerance"),
    [
        (Flip(), (40, 56), 0.0),
        (Flip(0), (40, 56), 0.0),
        (Rotation(15.0), (40, 56), 0.03),
        (Rotation(-25.0), (48, 48), 0.03),
        (Flip(), (20, 24, 18), 0.0),
        (Flip(2), (20, 24, 18), 0.0),
        (Rotation(10.0, (0, 1)), (36, 40, 12), 0.03),
        (Rotation(-10.0, (1, 2)), (12, 36, 40), 0.03),
    ],
    ids=str,
)
def test_geometric_inverse_restores_a_known_map(view: View, shape: tuple[int, ...], tolerance: float):
    # off-centre, so a wrong inverse cannot pass; near zero at the in-plane borders, where the
    # view shows zero fill
    centre = tuple(s / 2 + 1.7 for s in shape)
    truth = blob(shape, centre, sigma=5.0)
    seen = view.apply(truth[:, None])[:, 0]  # the map as the view sees it
    assert not torch.allclose(seen, truth, atol=0.05), "the view must move the map"
    back, valid = view.warp_back(seen)
    assert back.shape == truth.shape and valid.shape == truth.shape
    error = (back - truth).abs()[valid]
    # two bilinear resamplings of a smooth blob (sigma ~5 voxels, peak 1): a few per cent at most
    assert float(error.max()) <= tolerance + 1e-6
    assert float(error.mean()) <= tolerance / 10 + 1e-6
    if tolerance == 0.0:
        assert bool(valid.all())


def test_rotation_validity_excludes_pixels_that_left_the_field_of_view():
    h, w = 31, 41
    _, valid = Rotation(15.0).warp_back(torch.zeros(1, h, w))
    # analytic check: p is valid iff R p lies inside the image extent (voxel units about the centre)
    rows, cols = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    angle = math.radians(15.0)
    r2 = math.cos(angle) * rows - math.sin(angle) * cols
    c2 = math.sin(angle) * rows + math.cos(angle) * cols
    expected = (r2.abs() <= h / 2) & (c2.abs() <= w / 2)
    assert torch.equal(valid[0], expected)
    assert not valid[0, 0, 0] and not valid[0, -1, -1] and valid[0, h // 2, w // 2]


@pytest.mark.parametrize("shape", [(32, 48), (16, 20, 12)])
def test_constant_map_fuses_to_the_constant_with_zero_uncertainty(shape: tuple[int, ...]):
    """Corners outside a rotated view are invalid, not zero: they must not pull the mean down."""
    value = 0.7
    views: list[View] = [Identity(), Rotation(20.0), Rotation(-20.0), Flip()]
    constant = torch.full((1, *shape), value)
    backs, valids = zip(*(v.warp_back(constant) for v in views), strict=True)
    stack, valid = torch.stack(backs, dim=1), torch.stack(valids, dim=1)
    for how in ("mean", "median"):
        fused, std, count = fuse(stack, valid, how)  # type: ignore[arg-type]
        assert torch.allclose(fused, torch.full_like(fused, value), atol=1e-6), how
        assert float(std.abs().max()) < 1e-6
    assert count.min() == 2 and count.max() == 4  # the corners lost both rotations
    corner = (0,) * (len(shape) + 1)
    assert count[corner] == 2


def test_rotation_carries_the_pixel_set_with_the_image():
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, 5:15, 22:34] = True
    view = Rotation(15.0)
    warped = view.warp_mask(mask)
    assert warped.dtype == torch.bool
    # the same box rotated as an image, then thresholded
    moved = view.apply(mask.float()[:, None])[:, 0] > 0.5
    iou = (warped & moved).sum() / (warped | moved).sum()
    assert iou > 0.9
    assert abs(int(warped.sum()) - int(mask.sum())) <= 0.1 * int(mask.sum())
    assert torch.equal(Flip().warp_mask(mask), mask.flip(2))


def test_rotation_fill_min_uses_the_sample_minimum():
    x = torch.rand(2, 1, 16, 16) - 1000.0  # e.g. HU: air is the black
    turned = Rotation(30.0, fill="min").apply(x)
    minimum = x.amin(dim=(1, 2, 3))
    assert torch.allclose(turned[:, 0, 0, 0], minimum, atol=1e-3)


def test_3d_default_rotations_fill_with_air_not_water():
    """A CT in HU: 0 is water, so a zero fill would paint soft tissue into the corners; the minimum is air."""
    ct = torch.full((1, 1, 24, 24, 6), 40.0)  # soft tissue filling the field of view
    ct[..., 0] = -1000.0  # some air
    rotation = default_views(3, 1)[2]
    assert rotation == Rotation(10.0, (0, 1), "min")
    turned = rotation.apply(ct)
    assert float(turned[0, 0, 0, 0, 3]) == pytest.approx(-1000.0)  # a corner the rotation uncovered
    assert float(Rotation(10.0).apply(ct)[0, 0, 0, 0, 3]) == pytest.approx(0.0)
    # windowed to [0, 1] with air in the volume (as a KiTS checkpoint sees it): the minimum is 0 anyway
    windowed = ((ct + 200.0) / 500.0).clamp(0, 1)
    torch.testing.assert_close(rotation.apply(windowed), Rotation(10.0).apply(windowed))


def test_warp_field_picks_the_voxels_of_warp_mask():
    values = torch.rand(2, 3, 12, 10, 8, generator=torch.Generator().manual_seed(5))
    values[values < 0.6] = 0.0
    mask = values.sum(dim=1) > 0
    for view in (Rotation(17.0, (0, 2)), Rotation(-8.0, (1, 2)), Flip(1), Identity(), GaussianBlur(1.0)):
        moved = view.warp_field(values)
        assert torch.equal(moved.sum(dim=1) > 0, view.warp_mask(mask)), view
        assert set(moved.unique().tolist()) <= set(values.unique().tolist())  # nearest: no blends


def test_rotation_needs_a_plane():
    with pytest.raises(ViewError, match="at least 2 spatial axes"):
        Rotation(10.0).check(torch.zeros(1, 1, 8))
    with pytest.raises(ViewError, match="does not exist"):
        Rotation(10.0, (0, 3)).check(torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ViewError, match="two different axes"):
        Rotation(10.0, (1, 1)).check(torch.zeros(1, 1, 8, 8, 8))


def test_photometric_views_are_seeded_and_keep_geometry():
    x = torch.rand(2, 3, 12, 12)
    mask = torch.rand(2, 12, 12) > 0.5
    for view in (IntensityJitter(seed=3), GaussianBlur((0.1, 2.0), 5, seed=3), IntensityScaleShift(seed=3), Gamma()):
        first, second = view.apply(x), view.apply(x)
        assert torch.equal(first, second), view.describe()
        assert first.shape == x.shape
        assert torch.equal(view.warp_mask(mask), mask)
        back, valid = view.warp_back(x[:, 0])
        assert torch.equal(back, x[:, 0]) and bool(valid.all())
    assert IntensityJitter(seed=1).factors() != IntensityJitter(seed=2).factors()
    brightness, contrast, saturation = IntensityJitter(0.4, 0.4, 0.4, seed=5).factors()
    assert all(0.6 <= f <= 1.4 for f in (brightness, contrast, saturation))


def test_jitter_matches_hand_computation_on_grey_input():
    x = torch.rand(1, 1, 6, 7)
    view = IntensityJitter(0.4, 0.4, 0.4, seed=2)
    b, c, _ = view.factors()
    y = x * b
    expected = (y - y.mean()) * c + y.mean()  # no saturation for one channel
    assert torch.allclose(view.apply(x), expected, atol=1e-6)


def test_greyscale_is_colour_only():
    x = torch.rand(1, 3, 5, 5)
    grey = Greyscale().apply(x)
    assert torch.allclose(grey[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert torch.equal(grey[:, 0], grey[:, 2])
    with pytest.raises(ViewError, match="3 channels"):
        Greyscale().check(torch.zeros(1, 1, 5, 5))


def test_blur_matches_scipy_gaussian_filter_in_3d():
    x = torch.rand(1, 1, 10, 12, 9, dtype=torch.float64)
    ours = GaussianBlur(1.0).apply(x)[0, 0].numpy()
    # scipy: radius int(truncate * sigma + 0.5) = 3 = ceil(3 sigma); 'nearest' = replicate padding
    reference = ndimage.gaussian_filter(x[0, 0].numpy(), sigma=1.0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(ours, reference, atol=1e-10)


def test_gamma_keeps_the_range_and_intensity_shift_scales_with_std():
    x = torch.randn(1, 2, 8, 8, 8) * 50 + 40
    y = Gamma(seed=4).apply(x)
    dims = (2, 3, 4)
    assert torch.allclose(y.amin(dim=dims), x.amin(dim=dims)) and torch.allclose(y.amax(dim=dims), x.amax(dim=dims))
    scale, shift = IntensityScaleShift(0.1, 0.1, seed=4).factors()
    expected = x * scale + shift * x.std(dim=dims, keepdim=True, unbiased=False)
    assert torch.allclose(IntensityScaleShift(0.1, 0.1, seed=4).apply(x), expected)


def test_default_view_sets():
    two_grey = [v.describe() for v in default_views(2, 1)]
    assert two_grey == ["identity", "flip", "rotate:15", "jitter:0.4,0.4,0:seed=0", "blur:0.1,2:k=5:seed=1"]
    assert [v.describe() for v in default_views(2, 3)][-1] == "greyscale"
    three = [v.describe() for v in default_views(3, 1, seed=7)]
    assert three == [
        "identity",
        "flip",
        "rotate:10:fill=min",  # the volume's minimum (air in CT), not 0 (water in HU)
        "rotate:-10:fill=min",
        "intensity:0.1,0.1:seed=7",
        "blur:1",
        "gamma:0.7,1.5:seed=8",
    ]
    kits = default_views(3, 1, lr_axis=2, axial_plane=(1, 2))
    assert kits[1] == Flip(2) and kits[2] == Rotation(10.0, (1, 2), "min")
    assert default_views(3, 1, fill=0.0)[2] == Rotation(10.0)


def test_view_strings_round_trip():
    extra = [Rotation(-5.5, (1, 2)), Rotation(7.0, fill=-1024.0), Rotation(3.0, (0, 2), "min"), Flip(2)]
    for view in [*default_views(2, 3, seed=4), *default_views(3, 1, seed=9), *extra]:
        assert parse_view(view.describe()) == view, view.describe()
    assert parse_view("rotate:10:1,2:fill=min") == Rotation(10.0, (1, 2), "min")
    assert parse_view("blur:2:k=7") == GaussianBlur(2.0, 7)
    assert parse_view("jitter", seed=3) == IntensityJitter(seed=3)
    assert parse_view("grayscale") == Greyscale()


@pytest.mark.parametrize("spec", ["spin:10", "rotate", "jitter:0.4", "blur:1,2,3", "gamma:-1", "rotate:5:fill=air"])
def test_bad_view_strings_are_named(spec: str):
    with pytest.raises(ViewError, match=r"view|gamma"):
        parse_view(spec)


def test_anatomical_axes():
    assert anatomical_axes(("R", "A", "S")) == (0, (0, 1))
    assert anatomical_axes(("I", "P", "L")) == (2, (1, 2))  # KiTS23 as stored
    assert anatomical_axes(("L", "S", "P")) == (0, (0, 2))
    with pytest.raises(ViewError, match="anatomical axes"):
        anatomical_axes(("R", "L", "S"))
    # 2D: the horizontal axis (left-right, or anterior-posterior in a sagittal slice), plane (0, 1)
    assert anatomical_axes("LP") == (0, (0, 1))  # a PNG in ITK's index order: x = column
    assert anatomical_axes("PL") == (1, (0, 1))  # a PNG as a network sees it: (row, column)
    assert anatomical_axes("AS") == (0, (0, 1))
    assert anatomical_axes("SR") == (1, (0, 1))
    for bad in ("SI", "LR", "XY"):
        with pytest.raises(ViewError, match="anatomical axes"):
            anatomical_axes(bad)
