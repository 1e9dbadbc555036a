"""DICOM out (Parametric Maps, SEG) and DICOM SEG in: geometry, references, round trips, validation.

Source series are built with pydicom (tests/dicom_phantoms.py, 8 slices of 16 x 14):
axial, oblique, and an enhanced multi-frame CT stored in reverse slice order. The order
of the written frames is tested in tests/test_dicom_frame_order.py, a DICOM SEG as the
ground truth of ``medcam evaluate`` in tests/test_dicom_truth.py. highdicom's own SEG reader and
pydicom's frame decoding serve as independent readers of what medcam writes; dciodvfy
(dicom3tools) checks each object against its IOD when the binary is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_phantoms import SHAPE, ct_series, dciodvfy_errors, enhanced_ct, slice_of
from pydicom.dataset import Dataset, FileMetaDataset
from volume_phantoms import kits_phantom, ramp, rotation, write_kits_like

from medcam.review.dicom import write_dicom
from medcam.volumes.dicom_seg import read_dicom_seg
from medcam.volumes.dicom_series import read_source_series
from medcam.volumes.io import Volume, VolumeError, load_volume

SEGMENTS = {0: "background", 1: "kidney", 2: "tumor"}
COLOURS = {1: (0.73, 0.40, 0.33), 2: (0.89, 0.85, 0.17)}
DESCRIPTION = {"method": "hirescam", "class": "tumor", "pixel_set": "box:2,3,1:12,11,7"}
OBLIQUE = rotation(20, -10, 30)
SOURCES = {
    "axial": lambda d, data: ct_series(d / "axial", data, np.eye(3)),
    "oblique": lambda d, data: ct_series(d / "oblique", data, OBLIQUE),
    "multiframe": lambda d, data: enhanced_ct(d / "enhanced", data, OBLIQUE, order=list(range(SHAPE[2]))[::-1]),
}


def _maps(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    heat = rng.random(volume.spatial_shape).astype(np.float32)
    labels = np.zeros(volume.spatial_shape, dtype=np.uint8)
    labels[2:12, 3:11, 1:7] = 1
    labels[5:8, 5:9, 3:5] = 2
    return heat, labels


def _source_frames(folder: Path) -> dict[tuple[str, int | None], Dataset]:
    """(SOP instance UID, frame number or None) -> the source frame's geometry, from the files."""
    frames: dict[tuple[str, int | None], Dataset] = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = ds.SharedFunctionalGroupsSequence[0]
            for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
                frame = Dataset()
                frame.ImagePositionPatient = item.PlanePositionSequence[0].ImagePositionPatient
                frame.ImageOrientationPatient = shared.PlaneOrientationSequence[0].ImageOrientationPatient
                frame.PixelSpacing = shared.PixelMeasuresSequence[0].PixelSpacing
                frames[(ds.SOPInstanceUID, number)] = frame
        else:
            frames[(ds.SOPInstanceUID, None)] = ds
    return frames


def _frame_geometry(obj: Dataset, item: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shared = obj.SharedFunctionalGroupsSequence[0]
    return (
        np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float),
        np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float),
        np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float),
    )


def _referenced(item: Dataset) -> tuple[str, int | None]:
    ref = item.DerivationImageSequence[0].SourceImageSequence[0]
    frame = ref.get("ReferencedFrameNumber")
    return str(ref.ReferencedSOPInstanceUID), int(frame) if frame is not None else None


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_dicom_objects_lie_on_the_source_frames_and_read_back_exactly(tmp_path: Path, kind: str) -> None:
    source = SOURCES[kind](tmp_path, ramp(SHAPE).astype(np.int16))
    volume = load_volume(source)
    heat, labels = _maps(volume)
    paths = write_dicom(tmp_path / "out", volume, {"heatmap": heat}, labels, SEGMENTS, COLOURS, DESCRIPTION)
    assert [p.name for p in paths] == ["prediction_seg.dcm", "heatmap_pm.dcm"]
    frames = _source_frames(source)
    first = next(iter(frames.values()))
    source_ds = pydicom.dcmread(next(iter(sorted(source.iterdir()))), stop_before_pixels=True)
    for path in paths:
        obj = pydicom.dcmread(path)
        # in the source study and frame of reference, a new series referencing the source series
        assert obj.StudyInstanceUID == source_ds.StudyInstanceUID
        assert obj.PatientID == source_ds.PatientID
        assert obj.FrameOfReferenceUID == source_ds.FrameOfReferenceUID
        assert obj.SeriesInstanceUID != source_ds.SeriesInstanceUID
        assert obj.ReferencedSeriesSequence[0].SeriesInstanceUID == source_ds.SeriesInstanceUID
        assert obj.NumberOfFrames >= len(frames)
        decoded = obj.pixel_array.reshape(int(obj.NumberOfFrames), obj.Rows, obj.Columns)
        seen = set()
        for index, item in enumerate(obj.PerFrameFunctionalGroupsSequence):
            key = _referenced(item)
            position, cosines, spacing = _frame_geometry(obj, item)
            reference = frames[key]
            np.testing.assert_allclose(position, np.asarray(reference.ImagePositionPatient, float), atol=1e-4)
            np.testing.assert_allclose(cosines, np.asarray(reference.ImageOrientationPatient, float), atol=1e-6)
            np.testing.assert_allclose(spacing, np.asarray(first.PixelSpacing, float), atol=1e-6)
            k = slice_of(volume, position)
            if path.name == "heatmap_pm.dcm":
                np.testing.assert_array_equal(decoded[index], heat[:, :, k].T)  # float32 stored exactly
                seen.add(k)
            else:
                number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                np.testing.assert_array_equal(decoded[index].astype(bool), number == labels[:, :, k].T)
        if path.name == "heatmap_pm.dcm":
            assert seen == set(range(SHAPE[2]))
    # medcam's reader and highdicom's reader give the labels back voxel for voxel
    for value in (1, 2):
        np.testing.assert_array_equal(read_dicom_seg(paths[0], volume, value), labels == value)
    np.testing.assert_array_equal(read_dicom_seg(paths[0], volume, "Tumor"), labels == 2)
    np.testing.assert_array_equal(read_dicom_seg(paths[0], volume, None), labels > 0)


def test_seg_read_by_highdicom_matches_labels(tmp_path: Path) -> None:
    import highdicom as hd

    source = SOURCES["oblique"](tmp_path, ramp(SHAPE).astype(np.int16))
    volume = load_volume(source)
    _, labels = _maps(volume)
    seg_path = write_dicom(tmp_path / "out", volume, {}, labels, SEGMENTS, COLOURS, DESCRIPTION)[0]
    seg = hd.seg.segread(seg_path)
    uids, order = [], []
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids.append(ds.SOPInstanceUID)
        order.append(slice_of(volume, np.asarray(ds.ImagePositionPatient, float)))
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    for index, k in enumerate(order):
        np.testing.assert_array_equal(pixels[index], labels[:, :, k].T)
    description = seg.get_segment_description(2)
    assert description.segment_label == "tumor"
    algorithm = seg.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medcam"
    assert {p.split("=")[0] for p in algorithm.AlgorithmParameters.split(",")} >= {"method", "class"}
    assert "tumor" in algorithm.AlgorithmParameters and "box:2" in algorithm.AlgorithmParameters


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_dciodvfy_finds_no_errors(tmp_path: Path, kind: str) -> None:
    volume = load_volume(SOURCES[kind](tmp_path, ramp(SHAPE).astype(np.int16)))
    heat, labels = _maps(volume)
    maps = {"heatmap": heat, "uncertainty": heat / 4}
    for path in write_dicom(tmp_path / "out", volume, maps, labels, SEGMENTS, COLOURS, DESCRIPTION):
        assert dciodvfy_errors(path) == [], path.name


def test_non_dicom_input_gets_a_derived_image_series_in_a_new_study(tmp_path: Path) -> None:
    data = ramp((8, 12, 10)) * 3.5 - 100.0  # KiTS-like IPL NIfTI, non-integer intensities
    volume = load_volume(write_kits_like(tmp_path / "case.nii.gz", data))
    heat = np.random.default_rng(2).random(volume.spatial_shape).astype(np.float32)
    labels = np.zeros(volume.spatial_shape, dtype=np.uint8)
    labels[2:6, 3:9, 2:8] = 1
    labels[3:5, 4:6, 4:6] = 2
    out = tmp_path / "dicom"
    paths = write_dicom(out, volume, {"heatmap": heat}, labels, SEGMENTS, COLOURS, DESCRIPTION)
    images = sorted((out / "image").iterdir())
    assert len(images) == volume.spatial_shape[2] and set(images) <= set(paths)
    image = load_volume(out / "image")  # the derived series reads back on the input's grid
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-4)
    np.testing.assert_allclose(image.array, volume.array, atol=1e-3)
    first = pydicom.dcmread(images[0])
    assert "DERIVED" in first.ImageType and "research" in first.StudyDescription
    seg = pydicom.dcmread(out / "prediction_seg.dcm")
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    np.testing.assert_array_equal(read_dicom_seg(out / "prediction_seg.dcm", volume, 2), labels == 2)
    pm = pydicom.dcmread(out / "heatmap_pm.dcm")
    decoded = pm.pixel_array
    for index, item in enumerate(pm.PerFrameFunctionalGroupsSequence):
        k = slice_of(volume, np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float))
        np.testing.assert_array_equal(decoded[index], heat[:, :, k].T)
    for path in (images[0], out / "prediction_seg.dcm", out / "heatmap_pm.dcm"):
        assert dciodvfy_errors(path) == [], path.name


def test_segments_are_numbered_in_label_order_and_unnamed_labels_kept(tmp_path: Path) -> None:
    volume = load_volume(SOURCES["axial"](tmp_path, ramp(SHAPE).astype(np.int16)))
    labels = np.zeros(volume.spatial_shape, dtype=np.uint8)
    labels[1:5, 2:6, 1:3] = 2
    labels[8:12, 7:10, 4:7] = 7  # a value the checkpoint does not name
    seg = write_dicom(tmp_path / "out", volume, {}, labels, {2: "tumor", 3: "cyst"}, COLOURS, DESCRIPTION)[0]
    items = pydicom.dcmread(seg).SegmentSequence
    assert [(s.SegmentNumber, s.SegmentLabel, s.TrackingID) for s in items] == [
        (1, "tumor", "label 2"),
        (2, "cyst", "label 3"),
        (3, "label 7", "label 7"),
    ]
    np.testing.assert_array_equal(read_dicom_seg(seg, volume, "label 7"), labels == 7)
    np.testing.assert_array_equal(read_dicom_seg(seg, volume, 1), labels == 2)
    with pytest.raises(VolumeError, match="no voxels in segment"):
        read_dicom_seg(seg, volume, "cyst")


def _content(path: Path) -> Dataset:
    """The object without what changes on every run (UIDs, creation dates and times)."""
    ds = pydicom.dcmread(path)
    variable = {"UI", "DA", "TM", "DT"}

    def strip(dataset: Dataset) -> None:
        for element in list(dataset):
            if element.VR in variable and element.keyword not in ("SOPClassUID", "TransferSyntaxUID"):
                del dataset[element.tag]
            elif element.VR == "SQ":
                for item in element.value:
                    strip(item)

    strip(ds)
    ds.file_meta = FileMetaDataset()
    return ds


def test_new_uids_per_run_same_content_otherwise(tmp_path: Path) -> None:
    volume = load_volume(SOURCES["axial"](tmp_path, ramp(SHAPE).astype(np.int16)))
    heat, labels = _maps(volume)
    first = write_dicom(tmp_path / "a", volume, {"heatmap": heat}, labels, SEGMENTS, COLOURS, DESCRIPTION)
    second = write_dicom(tmp_path / "b", volume, {"heatmap": heat}, labels, SEGMENTS, COLOURS, DESCRIPTION)
    for a, b in zip(first, second, strict=True):
        one, two = pydicom.dcmread(a), pydicom.dcmread(b)
        assert one.SOPInstanceUID != two.SOPInstanceUID and one.SeriesInstanceUID != two.SeriesInstanceUID
        assert _content(a) == _content(b), a.name


@pytest.mark.parametrize(
    ("offsets", "problem"),
    [
        ([0.0, 2.5, 5.0, 10.0, 12.5, 15.0, 17.5, 20.0], "missing slice"),
        ([0.0, 2.5, 5.0, 7.5, 10.5, 13.5, 16.5, 19.5], "unequal spacing"),
    ],
)
def test_incomplete_or_unequally_spaced_series_is_refused(
    tmp_path: Path, offsets: list[float], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = ct_series(tmp_path / "series", ramp(SHAPE).astype(np.int16), np.eye(3), offsets=offsets)
    with pytest.raises(VolumeError, match="missing, doubled or unequally spaced slices") as err:
        load_volume(series)  # the reader refuses it (medcam.volumes.guards)
    assert "\n" not in str(err.value), problem
    import medcam.volumes.io as io

    monkeypatch.setattr(io, "_check_series", lambda *args: None)  # DICOM out checks again, from pydicom
    volume = load_volume(series)
    with pytest.raises(VolumeError, match="missing, doubled or unequally spaced slices") as err:
        read_source_series(volume)
    assert "\n" not in str(err.value), problem
    heat, labels = _maps(volume)
    with pytest.raises(VolumeError, match="unequally spaced"):
        write_dicom(tmp_path / "out", volume, {"heatmap": heat}, labels, SEGMENTS, COLOURS, DESCRIPTION)
    assert not (tmp_path / "out" / "heatmap_pm.dcm").exists()


def test_seg_of_another_series_or_grid_is_refused(tmp_path: Path) -> None:
    data = ramp(SHAPE).astype(np.int16)
    volume = load_volume(ct_series(tmp_path / "a", data, np.eye(3)))
    twin = load_volume(ct_series(tmp_path / "b", data, np.eye(3)))  # same grid, another frame of reference
    _, labels = _maps(volume)
    seg = write_dicom(tmp_path / "out", volume, {}, labels, SEGMENTS, COLOURS, DESCRIPTION)[0]
    with pytest.raises(VolumeError, match="frame of reference"):
        read_dicom_seg(seg, twin, 1)
    shifted = load_volume(write_kits_like(tmp_path / "other.nii.gz", ramp((8, 12, 10))))
    with pytest.raises(VolumeError, match="does not lie on the voxel grid"):
        read_dicom_seg(seg, shifted, 1)
    with pytest.raises(VolumeError, match=r"no segment 'liver' \(segments: 1=kidney, 2=tumor\)"):
        read_dicom_seg(seg, volume, "liver")
    with pytest.raises(VolumeError, match="not a DICOM SEG"):
        read_dicom_seg(next(iter(sorted((tmp_path / "a").iterdir()))), volume, 1)


# ------------------------------------------------------------------------------------
# medcam explain: dicom/ in the review folder, SEG back as --pixels mask:


@pytest.fixture(scope="module")
def kits_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The KiTS-like phantom as an axial CT series of 12 slices of 28 x 32 (HU)."""
    data = np.rint(kits_phantom((32, 28, 12)))
    return ct_series(tmp_path_factory.mktemp("kits_dicom") / "series", data, np.eye(3))


def _explain(*args: str) -> int:
    from medcam.cli import main

    return main(["explain", *args, "--class", "tumor", "--no-progress"])


def test_explain_writes_dicom_for_a_series_that_reads_back_as_the_nifti_outputs(
    tmp_path: Path, kits_series: Path, kits_model: Path
) -> None:
    out = tmp_path / "review"
    box = ("--pixels", "box:8,8,3:24,22,9")
    assert _explain("--volume", str(kits_series), "--model", str(kits_model), *box, "--out", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["dicom"] == ["dicom/prediction_seg.dcm", "dicom/heatmap_pm.dcm"]
    volume = load_volume(kits_series)
    heat = load_volume(out / "heatmap.nii.gz").array[0]
    prediction = np.rint(load_volume(out / "prediction.nii.gz").array[0]).astype(int)
    pm = pydicom.dcmread(out / "dicom" / "heatmap_pm.dcm")
    decoded = pm.pixel_array
    for index, item in enumerate(pm.PerFrameFunctionalGroupsSequence):
        k = slice_of(volume, np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float))
        np.testing.assert_array_equal(decoded[index], heat[:, :, k].T)
    seg = out / "dicom" / "prediction_seg.dcm"
    labels = {1: "kidney", 2: "tumor", 3: "cyst"}
    for value, name in labels.items():
        if (prediction == value).any():
            np.testing.assert_array_equal(read_dicom_seg(seg, volume, name), prediction == value)
    assert pydicom.dcmread(seg).SeriesDescription.startswith("medcam prediction | hirescam | class tumor")
    # the SEG is a mask for --pixels (and --reference): the same voxels as the prediction
    from medcam.volumes.pixels import load_reference

    value = int(np.bincount(prediction[prediction > 0]).argmax())
    mask, definition = load_reference(f"{seg}:{labels[value]}", volume)
    np.testing.assert_array_equal(mask, prediction == value)
    assert definition == f"{seg}:{labels[value]}"
    again = tmp_path / "again"
    pixels = f"mask:{seg}:{value}"
    assert (
        _explain("--volume", str(kits_series), "--model", str(kits_model), "--pixels", pixels, "--out", str(again)) == 0
    )
    assert json.loads((again / "summary.json").read_text())["pixel_set"]["definition"] == pixels


def test_dicom_out_is_automatic_for_series_and_forced_or_suppressed_by_flags(
    tmp_path: Path, kits_series: Path, kits_case: Path, kits_model: Path
) -> None:
    model = ("--model", str(kits_model), "--pixels", "box:2,6,4:10,26,24")
    assert _explain("--volume", str(kits_case), *model, "--out", str(tmp_path / "nifti")) == 0
    assert not (tmp_path / "nifti" / "dicom").exists()
    assert _explain("--volume", str(kits_case), *model, "--dicom-out", "--out", str(tmp_path / "forced")) == 0
    images = sorted((tmp_path / "forced" / "dicom" / "image").iterdir())
    assert len(images) == load_volume(kits_case).spatial_shape[2]
    assert (tmp_path / "forced" / "dicom" / "heatmap_pm.dcm").is_file()
    box = ("--pixels", "box:8,8,3:24,22,9")
    off = tmp_path / "off"
    assert (
        _explain("--volume", str(kits_series), "--model", str(kits_model), *box, "--no-dicom-out", "--out", str(off))
        == 0
    )
    assert (off / "heatmap.nii.gz").is_file() and not (off / "dicom").exists()


def test_unequally_spaced_series_is_exit_2_before_any_work(
    tmp_path: Path, kits_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offsets = [0.0, 2.5, 5.0, 7.5, 12.5, 15.0, 17.5, 20.0]
    series = ct_series(tmp_path / "gap", ramp(SHAPE).astype(np.int16), np.eye(3), offsets=offsets)
    out = tmp_path / "out"
    assert _explain("--volume", str(series), "--model", str(kits_model), "--pixels", "image", "--out", str(out)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "missing, doubled or unequally spaced slices" in lines[0], lines
    assert not out.exists()


def test_series_without_frame_of_reference_skips_dicom_unless_forced(
    tmp_path: Path, kits_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from volume_phantoms import header_variants

    series = header_variants()["dicom_series"](tmp_path)  # written by SimpleITK: no FrameOfReferenceUID
    args = ("--volume", str(series), "--model", str(kits_model), "--pixels", "image")
    assert _explain(*args, "--out", str(tmp_path / "auto")) == 0
    assert (tmp_path / "auto" / "heatmap.nii.gz").is_file() and not (tmp_path / "auto" / "dicom").exists()
    capsys.readouterr()
    assert _explain(*args, "--dicom-out", "--out", str(tmp_path / "forced")) == 2
    assert "no frame(s) of reference" in capsys.readouterr().err
    assert not (tmp_path / "forced").exists()
