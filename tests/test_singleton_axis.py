"""A 3D file with one singleton axis, given to a 2D model, is explained as the 2D image it holds."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from volume_phantoms import sphere, tiny_unet_checkpoint

from medcam.pipeline import explain_case


@pytest.mark.parametrize("shape", [(24, 20, 1), (24, 1, 20), (1, 24, 20)])
def test_singleton_axis_volume_with_a_2d_model(shape: tuple[int, int, int], tmp_path: Path) -> None:
    model = tiny_unet_checkpoint(tmp_path / "unet2d.pt", spatial_dims=2, patch_size=None)
    plane = np.where(sphere((24, 20), (12, 9), 5), 200.0, 0.0).astype(np.float32)
    data = plane.reshape(shape)
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "slice.nii.gz")
    out = explain_case(tmp_path / "slice.nii.gz", tmp_path / "out", class_name="kidney", model=model, pixels="image")
    heatmap = nib.load(out / "heatmap.nii.gz")
    assert heatmap.shape == shape  # the map lands on the file's own grid, singleton axis kept
    np.testing.assert_allclose(heatmap.affine, affine, atol=1e-5)
    values = np.asarray(heatmap.dataobj)
    assert np.isfinite(values).all() and values.max() == pytest.approx(1.0, abs=1e-6)
    assert (out / "preview.png").is_file() and (out / "review.mrb").is_file()
