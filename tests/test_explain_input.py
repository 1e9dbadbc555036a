"""Explain feeds a network exactly what training fed it, and puts the maps back on the file's pixels.

A picture is indexed (x, y) = (column, row) by ITK and 3D Slicer, but the training
readers give networks (C, rows, columns). The 2D model here is NOT transpose-symmetric:
it segments bright runs at least 7 pixels long along a row, so a rectangle wider than
tall fires and its transpose does not. Feeding it (columns, rows) would mark the tall
rectangle instead; returning the map with swapped axes would put it on the wrong pixels.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from monai.transforms import Compose
from PIL import Image
from torch import nn

from medcam.data.kits import KiTS23
from medcam.data.opg import OPG
from medcam.data.synthetic import write_kits_case
from medcam.data.transforms import LoadRecordd, preprocessing_transforms
from medcam.errors import UserError
from medcam.models.checkpoint import CheckpointMeta, ModelBundle, Preprocessing
from medcam.pipeline import explain_case
from medcam.volumes.io import load_volume
from medcam.volumes.preprocessing import prepare

HEIGHT, WIDTH = 40, 56  # the PNG: 56 pixels wide, 40 tall (non-square)
WIDE = (slice(4, 10), slice(30, 50))  # rows, columns: 6 tall x 20 wide, top right
TALL = (slice(15, 35), slice(5, 11))  # 20 tall x 6 wide, bottom left


class RowRuns(nn.Module):
    """Class 1 where the mean of 7 neighbours along a row is bright (> 0.91 after mean/std)."""

    def __init__(self, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        kernel = (1, 7) if dims == 2 else (1, 1, 7)
        self.features = nn.Sequential(conv(1, 1, kernel, padding=tuple(k // 2 for k in kernel)), nn.ReLU())
        self.head = conv(1, 2, 1)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 7)
            self.features[0].bias.fill_(-0.9)
            self.head.weight.copy_(torch.tensor([0.0, 100.0]).reshape(2, 1, *([1] * dims)))
            self.head.bias.copy_(torch.tensor([0.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _bundle(model: nn.Module, pre: Preprocessing, dims: int) -> ModelBundle:
    meta = CheckpointMeta(
        architecture="test.RowRuns",
        arguments={},
        task="segmentation",
        spatial_dims=dims,
        in_channels=1,
        labels={"background": 0, "wide": 1},
        preprocessing=pre,
    )
    return ModelBundle(model.eval(), meta)


def _record_inputs(model: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OPG-style dataset with one 56 x 40 PNG (and its mask), as the training reader expects it."""
    root = tmp_path_factory.mktemp("opg")
    pixels = np.full((HEIGHT, WIDTH), 10, dtype=np.uint8)
    pixels[WIDE] = 250
    pixels[TALL] = 250
    mask = np.zeros_like(pixels)
    mask[WIDE] = 1
    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True)
    Image.fromarray(pixels).save(root / "train" / "images" / "bars.png")
    Image.fromarray(mask).save(root / "train" / "masks" / "bars.png")
    return root


PICTURE_PRE = Preprocessing(size=(32, 48), a_min=0.0, a_max=255.0, mean=(0.5,), std=(0.5,))


def test_picture_input_equals_training_and_maps_land_on_the_file_pixels(picture: Path, tmp_path: Path) -> None:
    png = picture / "train" / "images" / "bars.png"
    model = RowRuns()
    seen = _record_inputs(model)
    out = explain_case(png, tmp_path / "out", class_name="wide", model=_bundle(model, PICTURE_PRE, 2), layer="features")

    # (a) every forward of the explanation saw exactly the training validation input
    data = OPG(picture, mode="binary")
    training = Compose([LoadRecordd(data), *preprocessing_transforms(PICTURE_PRE, 2)])(data.entries("train")[0])
    expected = training["image"].as_tensor()
    assert expected.shape == (1, 32, 48)  # (C, rows, columns), resized as configured
    assert seen and all(torch.equal(x[0], expected) for x in seen)

    # (b) the written files index the PNG as (x, y) = (column, row), on ITK's (Slicer's) geometry
    wide_xy = np.zeros((WIDTH, HEIGHT), dtype=bool)
    wide_xy[WIDE[1], WIDE[0]] = True
    tall_xy = np.zeros((WIDTH, HEIGHT), dtype=bool)
    tall_xy[TALL[1], TALL[0]] = True
    heat_img = nib.load(str(out / "heatmap.nii.gz"))
    heat = np.asarray(heat_img.dataobj, dtype=np.float32)
    labels = np.asarray(nib.load(str(out / "prediction.nii.gz")).dataobj).astype(int)
    assert heat.shape == labels.shape == (WIDTH, HEIGHT)
    assert wide_xy[np.unravel_index(int(np.argmax(heat)), heat.shape)]
    assert heat[wide_xy].mean() > 0.3 and heat[tall_xy].max() == 0.0 and heat[~wide_xy].max() < 0.2
    predicted = labels == 1
    assert predicted[40, 7] and not predicted[tall_xy].any()  # the wide bar's centre, nothing on the tall one
    near_wide = np.zeros_like(wide_xy)
    near_wide[29:51, 3:11] = True
    assert not predicted[~near_wide].any()
    # what Slicer shows: ITK reads both files on the same grid, rows and columns as in the PNG
    png_itk, heat_itk = sitk.ReadImage(str(png)), sitk.ReadImage(str(out / "heatmap.nii.gz"))
    assert heat_itk.GetSize() == png_itk.GetSize() == (WIDTH, HEIGHT)
    np.testing.assert_allclose(heat_itk.GetOrigin(), png_itk.GetOrigin()[:2], atol=1e-6)
    np.testing.assert_allclose(heat_itk.GetSpacing(), png_itk.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(heat_itk.GetDirection(), png_itk.GetDirection(), atol=1e-6)
    on_screen = sitk.GetArrayFromImage(heat_itk)  # (rows, columns), as the PNG's own array
    row, col = np.unravel_index(int(np.argmax(on_screen)), on_screen.shape)
    assert WIDE[0].start <= row < WIDE[0].stop and WIDE[1].start <= col < WIDE[1].stop


def test_picture_without_resize_keeps_its_pixels(picture: Path) -> None:
    """Without a resize the network grid is the PNG's (rows, columns), pixel for pixel."""
    png = picture / "train" / "images" / "bars.png"
    pre = Preprocessing(a_min=0.0, a_max=255.0)
    grid = prepare(load_volume(png), pre, spatial_dims=2, in_channels=1)
    expected = np.asarray(Image.open(png), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(grid.image[0, 0].numpy(), expected)
    # and back: a map on the network grid returns transposed onto the file's (x, y) index
    back = grid.to_source(grid.image[0])
    np.testing.assert_array_equal(back[0], expected.T)
    # coordinates given in the file's (x, y) index (--pixels voxel:/box:) land on (row, column)
    assert grid.voxel_to_model((40, 7)) == (7, 40)
    assert grid.box_to_model((30, 4), (50, 10)) == ((4, 30), (10, 50))


def test_2d_orientation_or_spacing_is_refused(picture: Path) -> None:
    png = picture / "train" / "images" / "bars.png"
    with pytest.raises(UserError, match="3D data only"):
        prepare(load_volume(png), Preprocessing(orientation="RA"), spatial_dims=2, in_channels=1)


def test_volume_input_equals_training_validation_input(tmp_path: Path) -> None:
    """3D NIfTI: orientation, spacing, window and mean/std, exactly as training validates (1e-5)."""
    case = write_kits_case(tmp_path / "kits", 0, seed=5, shape=(20, 40, 36))
    pre = Preprocessing(orientation="RAS", spacing=(2.0, 1.8, 3.5), a_min=-150.0, a_max=250.0, mean=(0.3,), std=(0.2,))
    model = RowRuns(dims=3)
    seen = _record_inputs(model)
    explain_case(
        case / "imaging.nii.gz",
        tmp_path / "out",
        class_name="wide",
        model=_bundle(model, pre, 3),
        layer="features",
        pixels="image",
    )
    data = KiTS23(tmp_path / "kits")
    training = Compose([LoadRecordd(data), *preprocessing_transforms(pre, 3)])(data.entries()[0])
    expected = training["image"]
    grid = prepare(load_volume(case / "imaging.nii.gz"), pre, spatial_dims=3, in_channels=1)
    assert seen
    for x in [*seen, grid.image]:
        assert x.shape[1:] == expected.shape
        torch.testing.assert_close(x[0], expected.as_tensor(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(grid.affine, expected.affine.numpy(), atol=1e-5)
