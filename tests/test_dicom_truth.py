"""A DICOM SEG as the ground truth of ``medcam evaluate``, against the same truth as a label image.

One phantom CT series (pydicom, tests/dicom_phantoms.py) with a kidney and a tumour, its
NIfTI (written by SimpleITK from the series) and its labels as a NIfTI label image: the
reference. Two SEGs of the same labels: one by medcam's writer (segments kidney, tumor,
cyst numbered 1-3) and one built here directly with highdicom (segment 1 "Tumor",
segment 2 "Kidney", empty frames omitted), so a reader that picks segments by number
instead of name fails. Each SEG is the label of a KiTS23, Decathlon or nnU-Net layout;
the prepared samples' truth must equal the label image's voxel for voxel, and the
localisation scores of a whole run must be the same. A SEG that lacks the truth, one on
another grid and a DICOM label that is no SEG stop the run with one line (exit 2).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
import yaml
from dicom_phantoms import SPACING, ct_series, slice_of
from volume_phantoms import KITS_LABELS, kits_checkpoint, kits_phantom

from medcam.cli import main
from medcam.errors import UserError
from medcam.evaluate.config import load_config
from medcam.evaluate.samples import open_samples
from medcam.models.checkpoint import Preprocessing, load_checkpoint
from medcam.review.dicom import write_dicom
from medcam.volumes.io import load_volume

SHAPE = (32, 28, 12)  # (i, j, k) of the series
PREPROCESSING = Preprocessing(orientation="RAS", spacing=(1.6, 1.6, 2.5), a_min=-200.0, a_max=300.0)
DESCRIPTION = {"method": "hirescam", "class": "tumor", "pixel_set": "predicted"}


@dataclass(frozen=True)
class Phantom:
    series: Path
    image: Path  # the series as NIfTI
    label: Path  # the labels as a NIfTI label image on the image's grid
    medcam_seg: Path
    highdicom_seg: Path
    labels: np.ndarray
    model: Path


def _nifti_of(series: Path, labels: np.ndarray, folder: Path) -> tuple[Path, Path]:
    import SimpleITK as sitk  # noqa: N813

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    folder.mkdir()
    sitk.WriteImage(image, str(folder / "imaging.nii.gz"))
    label = sitk.GetImageFromArray(labels.transpose(2, 1, 0))
    label.CopyInformation(image)
    sitk.WriteImage(label, str(folder / "segmentation.nii.gz"))
    return folder / "imaging.nii.gz", folder / "segmentation.nii.gz"


def highdicom_seg(series: Path, labels: np.ndarray, path: Path) -> Path:
    """A SEG of ``labels`` built with highdicom alone: segment 1 is the tumour (2), segment 2 the kidney (1)."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    volume = load_volume(series)
    sources = [pydicom.dcmread(p) for p in sorted(series.iterdir())]
    frames = np.stack([labels[:, :, slice_of(volume, np.asarray(ds.ImagePositionPatient, float))].T for ds in sources])
    numbers = np.zeros(frames.shape, dtype=np.uint8)
    numbers[frames == 2], numbers[frames == 1] = 1, 2
    abnormal, anatomy = (
        Code("49755003", "SCT", "Morphologically Abnormal Structure"),
        Code("91723000", "SCT", "Anatomical Structure"),
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label, category, kind in (
            (1, "Tumor", abnormal, Code("108369006", "SCT", "Neoplasm")),
            (2, "Kidney", anatomy, Code("64033007", "SCT", "Kidney")),
        )
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=numbers,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=77,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(path)
    return path


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Phantom:
    base = tmp_path_factory.mktemp("seg_truth")
    data = np.rint(kits_phantom(SHAPE))  # kidney exactly 30 HU, tumour exactly 120 HU
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[data == 30], labels[data == 120] = 1, 2
    series = ct_series(base / "series", data, np.eye(3), instance_numbers=list(range(SHAPE[2], 0, -1)))
    image, label = _nifti_of(series, labels, base / "nifti")
    np.testing.assert_array_equal(load_volume(image).array[0], data)  # the NIfTI is the series' grid
    segments = {1: "kidney", 2: "tumor", 3: "cyst"}
    ours = write_dicom(base / "dicom", load_volume(series), {}, labels, segments, {}, DESCRIPTION)[0]
    theirs = highdicom_seg(series, labels, base / "highdicom_seg.dcm")
    model = kits_checkpoint(base / "unet.pt", preprocessing=PREPROCESSING, patch_size=None)
    return Phantom(series, image, label, ours, theirs, labels, model)


def kits_root(folder: Path, image: Path, label: Path, name: str = "segmentation.nii.gz") -> Path:
    case = folder / "case_00000"
    case.mkdir(parents=True)
    (case / "imaging.nii.gz").write_bytes(image.read_bytes())
    (case / name).write_bytes(label.read_bytes())
    return folder


def decathlon_root(folder: Path, image: Path, label: Path) -> Path:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "imagesTr" / "ct.nii.gz").write_bytes(image.read_bytes())
    (folder / "labelsTr" / "ct_seg.dcm").write_bytes(label.read_bytes())
    labels = {str(v): k for k, v in KITS_LABELS.items()}
    spec = {"labels": labels, "training": [{"image": "./imagesTr/ct.nii.gz", "label": "./labelsTr/ct_seg.dcm"}]}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder


def nnunet_root(folder: Path, image: Path, label: Path) -> Path:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "imagesTr" / "ct_0000.nii.gz").write_bytes(image.read_bytes())
    (folder / "labelsTr" / "ct.dcm").write_bytes(label.read_bytes())
    spec = {"channel_names": {"0": "CT"}, "labels": KITS_LABELS, "file_ending": ".nii.gz", "numTraining": 1}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder


def config(root: Path, kind: str, model: Path, out: Path, truth: str = "tumor", **evaluation: Any) -> dict[str, Any]:
    return {
        "model": {"checkpoint": str(model), "threads": 1},
        "data": {"kind": kind, "root": str(root), "split": None, "pad_to_multiple": 2},
        "target": {"class": "tumor", "pixels": "image", "truth": truth},
        "evaluation": {"methods": ["gradcam"], "metrics": ["localisation"], **evaluation},
        "output": str(out),
    }


def truth_of(cfg: dict[str, Any], path: Path) -> torch.Tensor:
    path.write_text(yaml.safe_dump(cfg))
    parsed = load_config(path)
    sample = open_samples(parsed, load_checkpoint(Path(cfg["model"]["checkpoint"])).meta)[0]
    assert sample.truth is not None
    return sample.truth


LAYOUTS = {
    "kits23 + medcam SEG": ("kits23", lambda d, p: kits_root(d, p.image, p.medcam_seg, "segmentation.dcm")),
    "decathlon + highdicom SEG": ("decathlon", lambda d, p: decathlon_root(d, p.image, p.highdicom_seg)),
    "nnunet + medcam SEG": ("nnunet", lambda d, p: nnunet_root(d, p.image, p.medcam_seg)),
    "kits23 + highdicom SEG": ("kits23", lambda d, p: kits_root(d, p.image, p.highdicom_seg, "segmentation.dcm")),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_seg_truth_equals_the_label_image_truth_on_the_model_grid(
    phantom: Phantom, tmp_path: Path, layout: str
) -> None:
    kind, make = LAYOUTS[layout]
    seg_root = make(tmp_path / "seg", phantom)
    nifti_root = kits_root(tmp_path / "nifti", phantom.image, phantom.label)
    regions = ["masses", "kidney_and_masses"] if layout == "kits23 + medcam SEG" else []  # KiTS23 regions
    names = ["tumor", "kidney", *regions]
    for name in names:
        want = truth_of(config(nifti_root, "kits23", phantom.model, tmp_path / "o", name), tmp_path / "n.yaml")
        got = truth_of(config(seg_root, kind, phantom.model, tmp_path / "o", name), tmp_path / "s.yaml")
        assert want.any() and torch.equal(got, want), (layout, name)


def test_the_raw_truth_is_the_labels_on_the_image_grid(phantom: Phantom) -> None:
    from medcam.evaluate.truth import SegTruth

    # (SEG, segment numbers, the label values they hold)
    cases = [(phantom.medcam_seg, [2], [2]), (phantom.highdicom_seg, [1], [2]), (phantom.highdicom_seg, [1, 2], [1, 2])]
    for seg, numbers, values in cases:
        truth = SegTruth.read(seg, phantom.image, numbers, SHAPE)
        np.testing.assert_array_equal(truth, np.isin(phantom.labels, values))
    assert not SegTruth.read(phantom.medcam_seg, phantom.image, [3], SHAPE).any()  # cyst: an empty truth is allowed


def _results(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_evaluate_scores_a_seg_truth_as_the_label_image(phantom: Phantom, tmp_path: Path) -> None:
    seg_root = decathlon_root(tmp_path / "seg", phantom.image, phantom.highdicom_seg)
    nifti_root = kits_root(tmp_path / "nifti", phantom.image, phantom.label)
    rows = {}
    for name, root, kind in (("seg", seg_root, "decathlon"), ("nifti", nifti_root, "kits23")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config(root, kind, phantom.model, tmp_path / f"out_{name}")))
        assert main(["evaluate", "--config", str(path), "--no-progress"]) == 0
        rows[name] = _results(tmp_path / f"out_{name}")
    scores = ("box_iou", "pointing_game", "energy_inside", "dice")
    assert [r["status"] for r in rows["seg"]] == ["ok"]
    assert [{k: r[k] for k in scores} for r in rows["seg"]] == [{k: r[k] for k in scores} for r in rows["nifti"]]
    assert all(rows["seg"][0][k] != "" for k in scores)


def _exit_2(cfg: dict[str, Any], path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["evaluate", "--config", str(path), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_seg_without_the_truth_is_exit_2_before_any_folder(
    phantom: Phantom, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seg = phantom.highdicom_seg  # segments 1=Tumor, 2=Kidney: no cyst, so no KiTS 'masses' (tumor + cyst)
    root = kits_root(tmp_path / "seg", phantom.image, seg, "segmentation.dcm")
    out = tmp_path / "out"
    line = _exit_2(config(root, "kits23", phantom.model, out, "masses"), tmp_path / "c.yaml", capsys)
    assert "has no segment for the ground truth 'masses' (segments: 1=Tumor, 2=Kidney)" in line
    assert not out.exists()
    with pytest.raises(UserError, match="no segment for the ground truth 'cyst'"):
        truth_of(config(root, "kits23", phantom.model, out, "cyst"), tmp_path / "d.yaml")


def test_a_seg_of_another_grid_is_exit_2(phantom: Phantom, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = np.rint(kits_phantom(SHAPE))
    shifted = ct_series(tmp_path / "other", data, np.eye(3), offsets=[SPACING[2] * (k + 0.5) for k in range(SHAPE[2])])
    seg = write_dicom(tmp_path / "dicom", load_volume(shifted), {}, phantom.labels, {2: "tumor"}, {}, DESCRIPTION)[0]
    root = kits_root(tmp_path / "seg", phantom.image, seg, "segmentation.dcm")
    line = _exit_2(config(root, "kits23", phantom.model, tmp_path / "out"), tmp_path / "c.yaml", capsys)
    assert "does not lie on the voxel grid of imaging.nii.gz" in line


def test_a_dicom_label_that_is_no_seg_is_exit_2(
    phantom: Phantom, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slice_file = sorted(phantom.series.iterdir())[0]
    root = decathlon_root(tmp_path / "seg", phantom.image, slice_file)
    line = _exit_2(config(root, "decathlon", phantom.model, tmp_path / "out"), tmp_path / "c.yaml", capsys)
    assert "is DICOM but not a DICOM SEG" in line


def test_training_readers_refuse_a_seg_label_with_one_line(phantom: Phantom, tmp_path: Path) -> None:
    from medcam.data.kits import KiTS23

    dataset = KiTS23(kits_root(tmp_path / "seg", phantom.image, phantom.medcam_seg, "segmentation.dcm"))
    with pytest.raises(UserError, match="reads a DICOM SEG label only as the ground truth of `medcam evaluate`") as err:
        dataset.load(dataset.entries()[0])
    assert "\n" not in str(err.value)


def test_unnamed_segments_are_taken_by_number_with_a_warning(
    phantom: Phantom, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = load_volume(phantom.series)
    seg = write_dicom(tmp_path / "d", volume, {}, phantom.labels, {1: "organ A", 2: "lesion B"}, {}, DESCRIPTION)[0]
    root = kits_root(tmp_path / "seg", phantom.image, seg, "segmentation.dcm")
    nifti_root = kits_root(tmp_path / "nifti", phantom.image, phantom.label)
    with caplog.at_level("WARNING", logger="medcam.evaluate.truth"):
        got = truth_of(config(root, "kits23", phantom.model, tmp_path / "o"), tmp_path / "s.yaml")
    assert "no segment labelled 'tumor'; their ground truth is segment(s) 2='lesion B', by number" in caplog.text
    assert torch.equal(got, truth_of(config(nifti_root, "kits23", phantom.model, tmp_path / "o"), tmp_path / "n.yaml"))
