"""The frames of the written Parametric Map and SEG follow the source series' stored order.

Stored order, read here with pydicom alone: single-frame instances by Instance Number,
the frames of an enhanced multi-frame image by frame number. For every written frame
(of each segment) the referenced source instance / frame and the image position must
be those of the source frame at the same place in that order, and its pixels those of
the volume slice at that position (found from ITK's geometry). Series stored head
first (Instance Number 1 at the top, descending z), feet first (ascending z), in a
shuffled order, and enhanced multi-frame images stored forwards and in reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_phantoms import SHAPE, ct_series, dciodvfy_errors, enhanced_ct, slice_of
from volume_phantoms import ramp, rotation, write_kits_like

import medcam.review.dicom
from medcam.review.dicom import write_dicom
from medcam.volumes.io import Volume, load_volume

SEGMENTS = {1: "kidney", 2: "tumor"}
COLOURS = {1: (0.73, 0.40, 0.33), 2: (0.89, 0.85, 0.17)}
DESCRIPTION = {"method": "hirescam", "class": "tumor", "pixel_set": "predicted"}
DEPTH = SHAPE[2]
OBLIQUE = rotation(20, -10, 30)
SHUFFLED = [3, 7, 1, 8, 2, 6, 4, 5]  # instance number of slice k (files IM0000.. in slice order)

SERIES: dict[str, Callable[[Path, np.ndarray], Path]] = {
    "head_first": lambda d, data: ct_series(d, data, np.eye(3), instance_numbers=list(range(DEPTH, 0, -1))),
    "feet_first": lambda d, data: ct_series(d, data, np.eye(3)),
    "shuffled_oblique": lambda d, data: ct_series(d, data, OBLIQUE, instance_numbers=SHUFFLED),
    "multiframe_forward": lambda d, data: enhanced_ct(d, data, OBLIQUE, order=list(range(DEPTH))),
    "multiframe_reverse": lambda d, data: enhanced_ct(d, data, np.eye(3), order=list(range(DEPTH))[::-1]),
}

Frame = tuple[str, int | None, np.ndarray]  # referenced SOP instance UID, frame number, image position


def stored_frames(folder: Path) -> list[Frame]:
    """The source frames in stored order, from the files (pydicom only)."""
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    if len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0]:
        ds = datasets[0]
        return [
            (ds.SOPInstanceUID, n, np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float))
            for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1)
        ]
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    return [(ds.SOPInstanceUID, None, np.asarray(ds.ImagePositionPatient, float)) for ds in datasets]


def written_frames(path: Path) -> list[tuple[int, Frame]]:
    """(segment number or 0, referenced frame) of every frame of a written object, in file order."""
    out = []
    for item in pydicom.dcmread(path, stop_before_pixels=True).PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        number = source.get("ReferencedFrameNumber")
        segment = (
            item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            if "SegmentIdentificationSequence" in item
            else 0
        )
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        out.append((int(segment), (source.ReferencedSOPInstanceUID, int(number) if number else None, position)))
    return out


def maps(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    heat = np.random.default_rng(4).random(volume.spatial_shape).astype(np.float32)
    labels = np.zeros(volume.spatial_shape, dtype=np.uint8)
    labels[2:12, 3:11, 1:7] = 1
    labels[5:8, 5:9, 3:5] = 2
    return heat, labels


def check_order(path: Path, expected: list[Frame], volume: Volume, heat: np.ndarray, labels: np.ndarray) -> None:
    frames = written_frames(path)
    decoded = pydicom.dcmread(path).pixel_array.reshape(len(frames), SHAPE[1], SHAPE[0])
    segments = sorted({segment for segment, _ in frames})
    assert [s for s, _ in frames] == [s for s in segments for _ in expected]  # segment by segment
    for index, (segment, (uid, number, position)) in enumerate(frames):
        want_uid, want_number, want_position = expected[index % len(expected)]
        assert (uid, number) == (want_uid, want_number), (path.name, index)
        np.testing.assert_allclose(position, want_position, atol=1e-4)
        k = slice_of(volume, position)
        want = heat[:, :, k].T if segment == 0 else segment == labels[:, :, k].T
        np.testing.assert_array_equal(decoded[index], want)


@pytest.mark.parametrize("kind", sorted(SERIES))
def test_frames_follow_the_stored_order_of_the_source(tmp_path: Path, kind: str) -> None:
    source = SERIES[kind](tmp_path / "series", ramp(SHAPE).astype(np.int16))
    volume = load_volume(source)
    heat, labels = maps(volume)
    expected = stored_frames(source)
    paths = write_dicom(tmp_path / "out", volume, {"heatmap": heat}, labels, SEGMENTS, COLOURS, DESCRIPTION)
    for path in paths:
        check_order(path, expected, volume, heat, labels)
        assert dciodvfy_errors(path) == [], path.name
    # 3D: the set of frames is one stack of equally spaced parallel planes, in any order
    assert pydicom.dcmread(paths[-1], stop_before_pixels=True).DimensionOrganizationType == "3D"


def test_highdicom_reads_the_reordered_seg_back(tmp_path: Path) -> None:
    import highdicom as hd

    source = SERIES["feet_first"](tmp_path / "series", ramp(SHAPE).astype(np.int16))
    volume = load_volume(source)
    _, labels = maps(volume)
    seg = write_dicom(tmp_path / "out", volume, {}, labels, SEGMENTS, COLOURS, DESCRIPTION)[0]
    expected = stored_frames(source)
    pixels = hd.seg.segread(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[uid for uid, _, _ in expected], combine_segments=True
    )
    for index, (_, _, position) in enumerate(expected):
        np.testing.assert_array_equal(pixels[index], labels[:, :, slice_of(volume, position)].T)


def test_highdicom_alone_orders_a_feet_first_series_head_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why medcam reorders: without it the frames run against the stored order (the check above fails)."""
    source = SERIES["feet_first"](tmp_path / "series", ramp(SHAPE).astype(np.int16))
    volume = load_volume(source)
    heat, labels = maps(volume)
    monkeypatch.setattr(medcam.review.dicom, "follow_source_order", lambda obj, references: None)
    pm = write_dicom(tmp_path / "out", volume, {"heatmap": heat}, None, SEGMENTS, COLOURS, DESCRIPTION)[0]
    expected = stored_frames(source)
    assert [f[1][0] for f in written_frames(pm)] == [uid for uid, _, _ in expected][::-1]
    with pytest.raises(AssertionError):
        check_order(pm, expected, volume, heat, labels)


def test_a_non_dicom_input_keeps_the_order_of_its_derived_series(tmp_path: Path) -> None:
    volume = load_volume(write_kits_like(tmp_path / "case.nii.gz", ramp((8, 12, 10)) * 3.0))
    heat = np.random.default_rng(5).random(volume.spatial_shape).astype(np.float32)
    out = tmp_path / "dicom"
    pm = write_dicom(out, volume, {"heatmap": heat}, None, SEGMENTS, COLOURS, DESCRIPTION)[-1]
    expected = stored_frames(out / "image")
    assert [f[1][0] for f in written_frames(pm)] == [uid for uid, _, _ in expected]
    assert [slice_of(volume, position) for _, _, position in expected] == list(range(volume.spatial_shape[2]))
