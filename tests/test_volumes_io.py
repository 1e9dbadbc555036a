"""Reading images: axis order, channels, and every kind of bad file as a clear VolumeError."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from PIL import Image
from volume_phantoms import SHAPE, header_variants, ramp

from medcam.errors import UserError
from medcam.volumes.io import VolumeError, load_volume, volume_format


def test_nifti_array_is_in_file_index_order(tmp_path: Path) -> None:
    data = ramp(SHAPE)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "a.nii.gz"))
    volume = load_volume(tmp_path / "a.nii.gz")
    assert volume.array.shape == (1, *SHAPE)
    np.testing.assert_array_equal(volume.array[0], data)


def test_itk_formats_are_transposed_to_file_index_order(tmp_path: Path) -> None:
    path = header_variants()["nrrd"](tmp_path)
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array[0], ramp(SHAPE))
    assert volume.itk is not None
    np.testing.assert_allclose(volume.affine, volume.itk.affine)


def test_png_is_width_by_height_like_itk_and_monai(tmp_path: Path) -> None:
    pixels = (ramp((5, 8)) % 200).astype(np.uint8)  # (H, W)
    Image.fromarray(pixels).save(tmp_path / "g.png")
    volume = load_volume(tmp_path / "g.png")
    assert volume.array.shape == (1, 8, 5)
    np.testing.assert_array_equal(volume.array[0], pixels.T)
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "g.png")))
    np.testing.assert_array_equal(volume.array[0], itk.T)
    rgb = np.stack([pixels, pixels // 2, pixels // 3], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    colour = load_volume(tmp_path / "c.png")
    assert colour.array.shape == (3, 8, 5)
    np.testing.assert_array_equal(colour.array[1], (pixels // 2).T)


def test_single_frame_4d_is_read_as_3d(tmp_path: Path) -> None:
    path = header_variants()["one_frame_4d_scaled"](tmp_path)
    volume = load_volume(path)
    assert volume.spatial_shape == SHAPE
    assert volume.file_shape == (*SHAPE, 1)
    np.testing.assert_allclose(volume.array[0], ramp(SHAPE, np.int16) * 2.0 - 1024.0)  # scaling applied


def test_qform_sform_disagreement_is_noted(tmp_path: Path) -> None:
    volume = load_volume(header_variants()["qform_ne_sform"](tmp_path))
    assert any("qform and sform disagree" in note for note in volume.notes)


def _nifti_bytes(tmp_path: Path) -> bytes:
    nib.save(nib.Nifti1Image(ramp((20, 20, 20)), np.eye(4)), str(tmp_path / "ok.nii.gz"))
    return (tmp_path / "ok.nii.gz").read_bytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.nii.gz", "does not exist"),
        (
            lambda d: (d / "x.nii.gz").write_bytes(b"not an image at all" * 20) and d / "x.nii.gz",
            "truncated or corrupt",
        ),
        (lambda d: (d / "t.nii.gz").write_bytes(_nifti_bytes(d)[:300]) and d / "t.nii.gz", "truncated or corrupt"),
        (lambda d: (d / "x.nrrd").write_bytes(b"NRRD0004\nnonsense\n") and d / "x.nrrd", "truncated or corrupt"),
        (lambda d: (d / "x.png").write_bytes(b"\x89PNG broken") and d / "x.png", "truncated or corrupt"),
        (lambda d: (d / "x.txt").write_text("hello") and d / "x.txt", "unknown image type"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(VolumeError, match=message) as info:
        load_volume(path)
    assert "\n" not in str(info.value)


def test_time_series_is_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(ramp((4, 5, 6, 3)), np.eye(4)), str(tmp_path / "t.nii.gz"))
    with pytest.raises(VolumeError, match="4D image of shape"):
        load_volume(tmp_path / "t.nii.gz")


def test_nan_voxels_are_refused(tmp_path: Path) -> None:
    data = ramp((4, 5, 6))
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "n.nii.gz"))
    with pytest.raises(VolumeError, match="2 NaN or infinite"):
        load_volume(tmp_path / "n.nii.gz")


def test_folder_without_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert volume_format(tmp_path / "empty") == "dicom"
    with pytest.raises(VolumeError, match="without a DICOM series"):
        load_volume(tmp_path / "empty")


def test_dicom_series_reads_like_its_itk_volume(tmp_path: Path) -> None:
    folder = header_variants()["dicom_series"](tmp_path)
    volume = load_volume(folder)
    assert volume.format == "dicom"
    assert volume.spatial_shape == SHAPE
    np.testing.assert_array_equal(volume.array[0], ramp(SHAPE))


def test_volume_error_is_a_user_error() -> None:
    assert issubclass(VolumeError, UserError)
