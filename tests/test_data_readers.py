"""Every reader on a synthetic copy written in the real on-disk layout, and its error messages."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from medcam.data.base import Dataset
from medcam.data.cityscapes import CITYSCAPES_LABELS, Cityscapes, to_train_ids
from medcam.data.decathlon import DecathlonJSON
from medcam.data.iqothnccd import IQOTHNCCD
from medcam.data.kits import KITS_REGIONS, KiTS23, KiTS23Slices, region_masks
from medcam.data.nifti import DatasetError
from medcam.data.nnunet import NnUNetRaw
from medcam.data.opg import OPG
from medcam.data.splits import stratified_split
from medcam.data.synthetic import (
    write_cityscapes_dataset,
    write_decathlon_dataset,
    write_iqothnccd_dataset,
    write_kits_dataset,
    write_nnunet_dataset,
    write_opg_dataset,
)

SMALL = (16, 32, 32)


@pytest.fixture(scope="module")
def kits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kits23") / "dataset"
    write_kits_dataset(root, 5, seed=0, shape=SMALL)
    return root


# -- KiTS23 -------------------------------------------------------------------------------------


def test_kits_reader_returns_ipl_volumes_with_labels_and_geometry(kits_root):
    data = KiTS23(kits_root)
    assert data.case_ids == [f"case_{i:05d}" for i in range(5)]
    record = data.load(data.entries()[0])
    assert record["image"].shape == (1, *SMALL) and record["image"].dtype == np.float32
    assert record["label"].shape == (1, *SMALL) and record["label"].dtype == np.uint8
    assert record["orientation"] == "IPL"
    assert record["spacing"][0] == pytest.approx(20.0)  # 320 mm / 16 slices on axis 0
    assert set(np.unique(record["label"])) <= {0, 1, 2, 3}
    assert data.labels == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    assert data.regions == KITS_REGIONS
    assert data.regions_class_order == (1, 3, 2)  # nnU-Net's order for KiTS23's HECs
    assert len(data.clinical()) == 5


def test_kits_region_masks_are_the_hec_unions():
    label = np.array([0, 1, 2, 3])
    masks = region_masks(label)
    np.testing.assert_array_equal(masks[0], [False, True, True, True])  # kidney_and_masses
    np.testing.assert_array_equal(masks[1], [False, False, True, True])  # masses
    np.testing.assert_array_equal(masks[2], [False, False, True, False])  # tumor


def test_kits_split_is_seeded_disjoint_and_complete(kits_root):
    data = KiTS23(kits_root, fractions=(0.6, 0.2, 0.2), split_seed=3)
    splits = {s: [e["case_id"] for e in data.entries(s)] for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [3, 1, 1]
    assert sorted(c for ids in splits.values() for c in ids) == data.case_ids
    again = KiTS23(kits_root, fractions=(0.6, 0.2, 0.2), split_seed=3)
    assert [e["case_id"] for e in again.entries("train")] == splits["train"]


def test_kits_repository_root_is_accepted(kits_root):
    assert KiTS23(kits_root.parent).root == kits_root


def test_kits_slices_are_axis0_slices_with_foreground(kits_root):
    volumes = KiTS23(kits_root)
    slices = KiTS23Slices(kits_root)
    entries = slices.entries()
    first = entries[0]
    record = slices.load(first)
    volume = volumes.load(volumes.entries()[0])
    np.testing.assert_array_equal(record["image"], volume["image"][:, first["slice"]])
    assert record["image"].shape == (1, 32, 32)
    assert all(slices.load(e)["label"].any() for e in entries[:5])
    assert record["spacing"] == pytest.approx(volume["spacing"][1:])


def test_kits_wrong_root_missing_label_bad_geometry_and_bad_values(kits_root, tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        KiTS23(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="case_XXXXX"):
        KiTS23(tmp_path / "empty")
    root = tmp_path / "broken"
    shutil.copytree(kits_root, root)
    (root / "case_00000" / "segmentation.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"segmentation\.nii\.gz is missing"):
        KiTS23(root).entries()
    shutil.rmtree(root / "case_00000")
    # a label on another grid (shifted origin) and one with an unknown value
    seg_path = root / "case_00001" / "segmentation.nii.gz"
    seg = nib.load(seg_path)
    shifted = seg.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), shifted), seg_path)
    data = KiTS23(root)
    with pytest.raises(DatasetError, match="different affines"):
        data.load(data._entry("case_00001"))
    seg_path = root / "case_00002" / "segmentation.nii.gz"
    seg = nib.load(seg_path)
    values = np.asarray(seg.dataobj).copy()
    values[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(values, seg.affine), seg_path)
    with pytest.raises(DatasetError, match=r"label values \[7\]"):
        data.load(data._entry("case_00002"))
    seg_path = root / "case_00003" / "segmentation.nii.gz"
    seg = nib.load(seg_path)
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj)[:, :, :-1], seg.affine), seg_path)
    with pytest.raises(DatasetError, match="shape"):
        data.load(data._entry("case_00003"))


def test_orientation_transform_restores_ipl_from_a_ras_copy(kits_root, tmp_path):
    """A RAS-stored copy of a KiTS case, reoriented to IPL by our preprocessing, equals the original."""
    from monai.transforms import Compose

    from medcam.data.transforms import LoadRecordd, preprocessing_transforms
    from medcam.models.checkpoint import Preprocessing

    src = nib.load(kits_root / "case_00000" / "imaging.nii.gz")
    ras = nib.as_closest_canonical(src)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    folder = tmp_path / "ras" / "case_00000"
    folder.mkdir(parents=True)
    nib.save(ras, folder / "imaging.nii.gz")
    seg = nib.as_closest_canonical(nib.load(kits_root / "case_00000" / "segmentation.nii.gz"))
    nib.save(seg, folder / "segmentation.nii.gz")
    data = KiTS23(tmp_path / "ras")
    pipeline = Compose([LoadRecordd(data), *preprocessing_transforms(Preprocessing(orientation="IPL"), 3)])
    out = pipeline(data.entries()[0])
    np.testing.assert_array_equal(out["image"].numpy()[0], np.asarray(src.dataobj))
    np.testing.assert_allclose(out["image"].affine.numpy(), src.affine, atol=1e-4)


def test_kits_slices_are_axial_also_from_a_ras_copy(kits_root, tmp_path):
    folder = tmp_path / "ras" / "case_00000"
    folder.mkdir(parents=True)
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):
        nib.save(nib.as_closest_canonical(nib.load(kits_root / "case_00000" / name)), folder / name)
    original = KiTS23Slices(kits_root).load({"case_id": "case_00000", "slice": 7})
    ras = KiTS23Slices(tmp_path / "ras").load({"case_id": "case_00000", "slice": 7})
    np.testing.assert_array_equal(ras["image"], original["image"])
    np.testing.assert_array_equal(ras["label"], original["label"])
    assert ras["orientation"] == "IPL"


# -- OPG ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def opg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("opg")
    write_opg_dataset(root, (3, 1, 1), seed=0, size=(48, 96))
    return root


def test_opg_teeth_and_binary_modes(opg_root):
    teeth = OPG(opg_root)
    assert len(teeth.labels) == 33 and teeth.labels["tooth_11"] == 1 and teeth.labels["tooth_48"] == 32
    assert [len(teeth.entries(s)) for s in ("train", "val", "test")] == [3, 1, 1]
    record = teeth.load(teeth.entries("train")[0])
    assert record["image"].shape == (1, 48, 96) and record["label"].shape == (1, 48, 96)
    assert record["label"].max() > 16  # a full dentition uses the lower quadrants' values
    binary = OPG(opg_root, mode="binary")
    mask = binary.load(binary.entries("train")[0])["label"]
    np.testing.assert_array_equal(mask, (record["label"] > 0).astype(np.uint8))


def test_opg_binary_0_255_masks_and_their_errors(tmp_path):
    write_opg_dataset(tmp_path, (2, 0, 0), seed=1, size=(48, 96), binary=True)
    binary = OPG(tmp_path, mode="binary")
    assert set(np.unique(binary.load(binary.entries()[0])["label"])) == {0, 1}
    teeth = OPG(tmp_path, mode="teeth")
    with pytest.raises(DatasetError, match="mode: binary"):
        teeth.load(teeth.entries()[0])
    (tmp_path / "train" / "masks" / "opg_0001.png").unlink()
    with pytest.raises(DatasetError, match="has no mask"):
        teeth.entries()
    with pytest.raises(DatasetError, match="train/images"):
        OPG(tmp_path / "train")


# -- Cityscapes -----------------------------------------------------------------------------------


def test_cityscapes_label_ids_map_to_train_ids():
    ids = np.array([0, 1, 4, 6, 7, 8, 11, 17, 23, 24, 26, 31, 33])
    expected = [255, 255, 255, 255, 0, 1, 2, 5, 10, 11, 13, 16, 18]
    np.testing.assert_array_equal(to_train_ids(ids), expected)
    assert len(CITYSCAPES_LABELS) == 19 and CITYSCAPES_LABELS["bicycle"] == 18


def test_cityscapes_reader_on_the_real_folder_layout(tmp_path):
    write_cityscapes_dataset(tmp_path, (2, 1, 1), seed=0, size=(32, 64))
    data = Cityscapes(tmp_path)
    train = data.entries("train")
    assert [e["case_id"] for e in train] == ["aachen_000000_000019", "bochum_000001_000019"]
    record = data.load(train[0])
    assert record["image"].shape == (3, 32, 64)
    label_ids = np.asarray(__import__("PIL.Image").Image.open(train[0]["label"]))
    np.testing.assert_array_equal(record["label"][0], to_train_ids(label_ids))
    assert 255 in record["label"]  # the ego vehicle is ignored
    (tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="no label file"):
        data.entries("val")
    with pytest.raises(DatasetError, match="leftImg8bit"):
        Cityscapes(tmp_path / "gtFine")


# -- IQ-OTH/NCCD ----------------------------------------------------------------------------------


def test_iqothnccd_reads_the_misspelled_folder_and_splits_60_20_20(tmp_path):
    write_iqothnccd_dataset(tmp_path, (10, 5, 10), seed=0, size=(64, 64))
    assert (tmp_path / "Bengin cases" / "Bengin case (1).jpg").is_file()
    data = IQOTHNCCD(tmp_path)
    assert data.split_seed == 42
    assert data.class_counts("train") == [6, 3, 6]
    assert data.class_counts("val") == [2, 1, 2] and data.class_counts("test") == [2, 1, 2]
    ids = [e["image"] for s in ("train", "val", "test") for e in data.entries(s)]
    assert len(ids) == len(set(ids)) == 25
    assert data.class_weights() == [1.0, 2.0, 1.0]
    shapes = {data.load(e)["image"].shape for e in data.entries()}
    assert (3, 64, 64) in shapes and (3, 48, 64) in shapes  # not all the same size: resize before batching
    again = IQOTHNCCD(tmp_path)
    assert [e["image"] for e in again.entries("test")] == [e["image"] for e in data.entries("test")]


def test_stratified_split_on_the_real_class_counts():
    classes = [0] * 416 + [1] * 120 + [2] * 561
    splits = stratified_split(list(range(1097)), classes, (0.6, 0.2, 0.2), seed=42)
    count = {s: [sum(1 for i in v if classes[i] == c) for c in range(3)] for s, v in splits.items()}
    assert count["train"] == [250, 72, 337]
    assert count["val"] == [83, 24, 112] and count["test"] == [83, 24, 112]
    weights = [max(count["train"]) / n for n in count["train"]]
    assert weights[1] == pytest.approx(4.68, abs=0.01)  # "benign weight about 4.6"


def test_iqothnccd_missing_folder_is_named(tmp_path):
    write_iqothnccd_dataset(tmp_path, (2, 2, 2), seed=0, size=(32, 32))
    shutil.rmtree(tmp_path / "Bengin cases")
    with pytest.raises(DatasetError, match="Bengin cases"):
        IQOTHNCCD(tmp_path)


# -- nnU-Net raw and Decathlon JSON --------------------------------------------------------------


def test_nnunet_region_labels_and_cases(tmp_path):
    folder = write_nnunet_dataset(tmp_path, 3, seed=0, shape=SMALL)
    data = NnUNetRaw(folder)
    assert data.region_based
    assert data.regions == {"kidney": (1, 2, 3), "masses": (2, 3), "tumor": (2,)}
    assert data.regions_class_order == (1, 3, 2)
    assert data.labels == {"background": 0, "kidney": 1, "masses": 3, "tumor": 2}
    entry = data.entries()[0]
    assert entry["image"][0].endswith("imagesTr/case_00000_0000.nii.gz")
    record = data.load(entry)
    assert record["image"].shape == (1, *SMALL) and record["orientation"] == "IPL"
    (folder / "imagesTr" / "case_00001_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match="one file per channel"):
        data.entries()


def test_nnunet_plain_labels(tmp_path):
    data = NnUNetRaw(write_nnunet_dataset(tmp_path, 2, seed=0, shape=SMALL, regions=False))
    assert not data.region_based and data.regions == {}
    assert data.labels == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}


def test_decathlon_json_matches_monai_datalist(tmp_path):
    from monai.data import load_decathlon_datalist

    path = write_decathlon_dataset(tmp_path / "Task99", 3, seed=0, shape=SMALL)
    data = DecathlonJSON(path)
    assert data.labels == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    ours = sorted((e["image"], e["label"]) for e in data.entries())
    theirs = sorted((d["image"], d["label"]) for d in load_decathlon_datalist(str(path), True, "training"))
    assert ours == theirs
    assert DecathlonJSON(path.parent).json_path == path
    record = data.load(data.entries()[0])
    assert record["label"].shape == record["image"].shape


def test_decathlon_rejects_nnunet_style_labels(tmp_path):
    path = write_decathlon_dataset(tmp_path, 1, seed=0, shape=SMALL)
    spec = json.loads(path.read_text())
    spec["labels"] = {"background": 0, "kidney": 1}
    path.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match="nnU-Net"):
        DecathlonJSON(path)


@pytest.mark.parametrize("reader", [KiTS23, OPG, Cityscapes, IQOTHNCCD, NnUNetRaw])
def test_a_wrong_root_says_what_layout_is_expected(reader: type[Dataset], tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(DatasetError) as err:
        reader(tmp_path)
    assert "point root at" in str(err.value)


def test_read_image_keeps_16_bit_grey_values(tmp_path) -> None:
    from PIL import Image

    from medcam.data.images import read_image

    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    grey = read_image(tmp_path / "deep.png", "L")
    np.testing.assert_array_equal(grey, values[None].astype(np.float32))  # not clipped at 255
    rgb = read_image(tmp_path / "deep.png", "RGB")
    np.testing.assert_array_equal(rgb, np.repeat(values[None], 3, axis=0).astype(np.float32))
    Image.fromarray(values.astype(np.uint8)).save(tmp_path / "flat.png")
    assert read_image(tmp_path / "flat.png", "RGB").shape == (3, 2, 2)
