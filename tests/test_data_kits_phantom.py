"""The KiTS-like phantom is written in KiTS23's exact on-disk layout, with plausible CT content."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medcam.data.synthetic import KITS_TRAINING_CASES, kits_phantom, write_kits_case, write_kits_dataset
from medcam.errors import UserError


def test_case_files_have_kits23_header_and_dtypes(tmp_path):
    folder = write_kits_case(tmp_path, 7, seed=3)
    assert folder.name == "case_00007"
    image = nib.load(folder / "imaging.nii.gz")
    seg = nib.load(folder / "segmentation.nii.gz")
    assert image.get_data_dtype() == np.float32
    assert seg.get_data_dtype() == np.uint8
    for img in (image, seg):
        assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
        assert int(img.header["sform_code"]) == 2
        assert int(img.header["qform_code"]) == 0
    assert image.shape == seg.shape == (64, 128, 128)
    np.testing.assert_allclose(image.affine, seg.affine)
    zooms = image.header.get_zooms()
    assert zooms[0] == pytest.approx(5.0)  # slice thickness on axis 0
    assert zooms[1] == pytest.approx(zooms[2]) and 2.5 < zooms[1] < 3.6  # square in-plane pixels
    assert set(np.unique(np.asanyarray(seg.dataobj))) <= {0, 1, 2, 3}


def test_simpleitk_sees_the_transposed_array_and_reversed_spacing(tmp_path):
    """The classic KiTS pitfall: SimpleITK's numpy array is nibabel's transposed, while
    GetSpacing() stays in ITK index order, i.e. reversed relative to that numpy array."""
    import SimpleITK as sitk  # noqa: N813

    folder = write_kits_case(tmp_path, 0, seed=1)
    nib_img = nib.load(folder / "imaging.nii.gz")
    itk_img = sitk.ReadImage(str(folder / "imaging.nii.gz"))
    itk_array = sitk.GetArrayFromImage(itk_img)
    np.testing.assert_array_equal(itk_array, np.asarray(nib_img.dataobj).transpose(2, 1, 0))
    assert itk_img.GetSpacing() == pytest.approx(nib_img.header.get_zooms())
    assert itk_array.shape == nib_img.shape[::-1]


def test_anatomy_hounsfield_units_and_label_placement():
    phantom = kits_phantom(seed=11)
    image, label = phantom.image, phantom.label
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image[0, 0, 0] < -900  # air outside the body
    mean = {k: float(image[label == k].mean()) for k in (1, 2, 3) if (label == k).any()}
    assert 140 < mean[1] < 210  # contrast-enhanced kidney
    assert 40 < mean[2] < 130  # enhancing tumour, darker than kidney
    if 3 in mean:
        assert mean[3] < 30  # cyst, near water
    # two kidneys, one on each side of the spine (axis 2 points to the patient's left)
    regions, n = ndimage.label(label > 0)
    sizes = ndimage.sum(np.ones_like(label), regions, range(1, n + 1))
    big = [i + 1 for i in np.argsort(sizes)[::-1][:2]]
    centres = [ndimage.center_of_mass(regions == i)[2] for i in big]
    assert min(centres) < 64 < max(centres)
    # every tumour voxel touches the kidney_and_masses region of one kidney (no floating tumours)
    tumour = label == 2
    assert tumour.any()
    assert (ndimage.binary_dilation(tumour) & (label == 1)).any()
    # bone is bright and posterior (the spine): rows increase towards posterior
    bone_rows = np.nonzero(image > 400)[1]
    assert bone_rows.mean() > 64


def test_same_seed_same_case_other_seed_other_case():
    a, b, c = kits_phantom(5), kits_phantom(5), kits_phantom(6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)


def test_dataset_uses_kits_case_numbers_and_writes_clinical_json(tmp_path):
    folders = write_kits_dataset(tmp_path, 2, seed=0, shape=(16, 32, 32), first_case=299)
    assert [f.name for f in folders] == ["case_00299", "case_00400"]  # 300..399 do not exist in KiTS23
    records = json.loads((tmp_path / "kits23.json").read_text())
    assert [r["case_id"] for r in records] == ["case_00299", "case_00400"]
    assert {"gender", "age_at_nephrectomy", "radiographic_size", "malignant"} <= set(records[0])
    assert len(KITS_TRAINING_CASES) == 489


def test_instances_folder_uses_kits_names(tmp_path):
    folder = write_kits_case(tmp_path, 0, seed=2, shape=(24, 48, 48), instances=True)
    names = sorted(p.name for p in (folder / "instances").iterdir())
    assert "kidney_instance-1_annotation-1.nii.gz" in names
    assert "kidney_instance-2_annotation-1.nii.gz" in names
    assert any(n.startswith("tumor_instance-1_") for n in names)


def test_bad_arguments_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="shape"):
        kits_phantom(0, shape=(4, 4))
    with pytest.raises(UserError, match="case_"):
        write_kits_case(tmp_path, "case12", seed=0)
    with pytest.raises(UserError, match="489"):
        write_kits_dataset(tmp_path, 500, seed=0)
