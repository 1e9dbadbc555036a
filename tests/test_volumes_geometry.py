"""Outputs land on the input's voxels: world coordinates checked with BOTH nibabel and SimpleITK.

Every header variant of tests/volume_phantoms.py is read, a map with a distinct value per voxel
is written with the input's geometry, and both readers must put each output voxel at
the world position where THEY put the same input voxel, with the value written for it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from volume_phantoms import header_variants, ramp

from medcam.review.writers import write_nifti_like, write_nrrd, write_segmentation
from medcam.volumes.geometry import LPS_TO_RAS, ItkGeometry, reorder_axes, voxel_centres
from medcam.volumes.io import load_volume, quiet_itk

VARIANTS = [name for name in header_variants() if name != "nifti2"]


def read_itk(path: Path) -> sitk.Image:
    with quiet_itk():
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)))
            return reader.Execute()
        return sitk.ReadImage(str(path))


def itk_world(image: sitk.Image) -> np.ndarray:
    """LPS world coordinates of every voxel centre, index order C over (i, j[, k])."""
    n = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(n, n) * np.asarray(image.GetSpacing())
    grids = np.meshgrid(*[np.arange(s, dtype=float) for s in image.GetSize()], indexing="ij")
    index = np.stack([g.ravel() for g in grids], axis=1)
    return index @ direction.T + np.asarray(image.GetOrigin())


def itk_values(image: sitk.Image) -> np.ndarray:
    """Voxel values in file index order (i, j[, k]): the transpose of SimpleITK's array."""
    return sitk.GetArrayFromImage(image).transpose()


def raw_header(path: Path) -> nib.Nifti1Header:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return nib.Nifti1Header.from_fileobj(handle)


def test_there_are_at_least_ten_variants() -> None:
    assert len(VARIANTS) >= 10
    assert {"ras", "lps", "kits_ipl_sform_only", "qform_ne_sform", "oblique", "anisotropic", "nifti_2d"} <= set(
        VARIANTS
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_heatmap_voxels_sit_on_input_voxels_for_nibabel_and_itk(variant: str, tmp_path: Path) -> None:
    source = header_variants()[variant](tmp_path)
    volume = load_volume(source)
    data = np.arange(int(np.prod(volume.spatial_shape)), dtype=np.float32).reshape(volume.spatial_shape) / 7.0
    out = write_nifti_like(volume, data, tmp_path / "heatmap.nii.gz")

    # SimpleITK (what 3D Slicer uses): same world position for every voxel, same value per index
    itk_in, itk_out = read_itk(source), read_itk(out)
    tolerance = 0.0 if volume.format == "nifti" else 1e-4  # NIfTI headers store float32
    np.testing.assert_allclose(itk_world(itk_out), itk_world(itk_in), rtol=0, atol=tolerance)
    np.testing.assert_array_equal(itk_values(itk_out).reshape(volume.spatial_shape), data)

    # nibabel: the same, in RAS
    out_img = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(out_img.dataobj).reshape(volume.spatial_shape), data)
    if volume.format == "nifti":
        np.testing.assert_array_equal(out_img.affine, nib.load(str(source)).affine)
    else:
        itk_ras = itk_world(itk_in) * np.diag(LPS_TO_RAS)[: itk_in.GetDimension()]
        nib_ras = voxel_centres(out_img.affine, volume.spatial_shape)[:, : itk_in.GetDimension()]
        np.testing.assert_allclose(nib_ras, itk_ras, atol=1e-4)

    # the header rules of the issue: float32, slope 1, intercept 0, cal range reset, source codes kept
    header = raw_header(out)
    assert header.get_data_dtype() == np.float32
    assert float(header["scl_slope"]) == 1.0 and float(header["scl_inter"]) == 0.0
    assert float(header["cal_min"]) == 0.0 and float(header["cal_max"]) == 0.0
    if volume.format == "nifti":
        source_header = raw_header(source)
        for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_z"):
            np.testing.assert_array_equal(header[key], source_header[key])
        assert header.get_zooms()[:3] == source_header.get_zooms()[:3]


def test_kits_file_keeps_sform_only_ipl_geometry(tmp_path: Path) -> None:
    source = header_variants()["kits_ipl_sform_only"](tmp_path)
    volume = load_volume(source)
    out = write_nifti_like(volume, np.zeros(volume.spatial_shape, np.float32), tmp_path / "h.nii.gz")
    header = nib.load(str(out)).header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (2, 0)
    assert "".join(nib.aff2axcodes(nib.load(str(out)).affine)) == "IPL"


def test_nifti2_round_trip_with_nibabel(tmp_path: Path) -> None:
    source = header_variants()["nifti2"](tmp_path)
    volume = load_volume(source)
    data = ramp(volume.spatial_shape)
    out = write_nifti_like(volume, data, tmp_path / "heatmap.nii.gz")
    image = nib.load(str(out))
    assert isinstance(image, nib.Nifti2Image)
    np.testing.assert_array_equal(image.affine, nib.load(str(source)).affine)
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)


@pytest.mark.parametrize("variant", ["kits_ipl_sform_only", "qform_ne_sform", "oblique", "dicom_series", "png"])
def test_labelmaps_and_slicer_segmentations_share_the_geometry(variant: str, tmp_path: Path) -> None:
    source = header_variants()[variant](tmp_path)
    volume = load_volume(source)
    labels = (ramp(volume.spatial_shape) % 4).astype(np.int64)
    labels[(0,) * volume.spatial_dims] = 0
    nifti = write_nifti_like(volume, labels, tmp_path / "prediction.nii.gz", kind="labels")
    assert nib.load(str(nifti)).get_data_dtype() == np.uint8
    assert int(nib.load(str(nifti)).header["intent_code"]) == 1002
    assert volume.itk is not None
    seg = write_segmentation(
        tmp_path / "prediction.seg.nrrd", labels, volume.itk, {1: ("kidney", (1, 0, 0)), 2: ("tumor", (0, 1, 0))}
    )
    image = read_itk(seg)
    itk_in = read_itk(source)
    world_in = itk_world(itk_in)
    world_seg = itk_world(image)
    if itk_in.GetDimension() == 2:  # Slicer loads a 2D image as one slice at z = 0
        world_in = np.concatenate([world_in, np.zeros((len(world_in), 1))], axis=1)
    np.testing.assert_allclose(world_seg, world_in, atol=1e-9)
    np.testing.assert_array_equal(itk_values(image).reshape(volume.spatial_shape), labels)
    assert image.GetMetaData("Segment0_Name") == "kidney"
    assert image.GetMetaData("Segment1_LabelValue") == "2"
    assert image.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"
    where = np.nonzero((labels if labels.ndim == 3 else labels[..., None]) == 1)
    expected = " ".join(f"{int(a.min())} {int(a.max())}" for a in where)
    assert image.GetMetaData("Segment0_Extent") == expected


def test_nrrd_writer_matches_itk_geometry(tmp_path: Path) -> None:
    geometry = ItkGeometry(origin=(1.5, -2.0, 30.0), spacing=(0.7, 0.9, 3.0), direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    data = ramp((5, 6, 4)).astype(np.int16)
    path = write_nrrd(tmp_path / "x.nrrd", data, geometry)
    image = read_itk(path)
    assert image.GetOrigin() == pytest.approx(geometry.origin)
    assert image.GetSpacing() == pytest.approx(geometry.spacing)
    assert image.GetDirection() == pytest.approx(geometry.direction)
    np.testing.assert_array_equal(itk_values(image), data)


def test_geometry_conversions_are_inverse() -> None:
    affine = np.array([[0.0, 0.0, -0.8, 10.0], [0.0, -0.9, 0.0, 20.0], [-2.5, 0.0, 0.0, 30.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(ItkGeometry.from_affine(affine).affine, affine)


def test_writers_are_byte_deterministic(tmp_path: Path) -> None:
    source = header_variants()["oblique"](tmp_path)
    volume = load_volume(source)
    data = ramp(volume.spatial_shape) / 3.0
    first = write_nifti_like(volume, data, tmp_path / "a.nii.gz").read_bytes()
    second = write_nifti_like(volume, data, tmp_path / "b.nii.gz").read_bytes()
    assert first == second
    assert volume.itk is not None
    seg_a = write_segmentation(tmp_path / "a.seg.nrrd", data.astype(np.int64) % 3, volume.itk, {1: ("a", (1, 0, 0))})
    seg_b = write_segmentation(tmp_path / "b.seg.nrrd", data.astype(np.int64) % 3, volume.itk, {1: ("a", (1, 0, 0))})
    assert seg_a.read_bytes() == seg_b.read_bytes()


def test_reorder_axes_keeps_every_voxel_in_place() -> None:
    rng = np.random.default_rng(3)
    affine = np.eye(4)
    affine[:3] = rng.normal(size=(3, 4))
    shape = (4, 5, 6)
    for order in ((1, 0, 2), (2, 0, 1), (0, 1, 2)):
        moved = reorder_axes(affine, order)
        index = np.array([1, 3, 5])
        # new index axis a is old axis order[a]: the same voxel has the permuted index
        new_index = index[list(order)]
        np.testing.assert_allclose(moved @ [*new_index, 1], affine @ [*index, 1], atol=1e-12)
        new_shape = [shape[a] for a in order]
        centres = voxel_centres(moved, new_shape).reshape(*new_shape, 3)
        back = np.transpose(centres, (*np.argsort(order), 3))
        np.testing.assert_allclose(back, voxel_centres(affine, shape).reshape(*shape, 3), atol=1e-12)
    with pytest.raises(ValueError, match="permutation"):
        reorder_axes(affine, (0, 0, 1))
