"""Reading a DICOM Segmentation (SEG) as a mask on a volume's voxel grid.

Every frame of the SEG is placed by its own geometry (image position, orientation and
pixel spacing from the functional groups): its pixels must land on voxel centres of the
volume (any in-plane flip or transpose of the volume's axes is fine), so a SEG made on
the source series of a DICOM volume, or by ``medcam explain --dicom-out``, reads back
voxel for voxel. For a DICOM volume the SEG must also share the series' frame of
reference. Binary, fractional (> half of the maximum) and label-map SEGs are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcam.volumes.dicom_series import read_source_series, volume_geometry
from medcam.volumes.io import Volume, VolumeError

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
_SEG_CLASSES = (SEG_STORAGE, LABEL_MAP_SEG_STORAGE)
_TOLERANCE = 0.01  # of a voxel: how far a frame's pixel centre may be from a voxel centre


def is_dicom_seg(path: str | Path) -> bool:
    """True for a DICOM SEG file, or a folder holding exactly one (and nothing else DICOM)."""
    return find_dicom_seg(Path(path)) is not None


def find_dicom_seg(path: Path) -> Path | None:
    """The SEG file at ``path`` (a file, or the only SEG file in a folder), else ``None``."""
    if path.is_file():
        return path if _sop_class(path) in _SEG_CLASSES else None
    if not path.is_dir():
        return None
    files = [p for p in sorted(path.iterdir()) if p.is_file()]
    segs = [p for p in files if _sop_class(p) in _SEG_CLASSES]
    if len(segs) > 1:
        raise VolumeError(f"{path} holds {len(segs)} DICOM SEG files; point at one of them")
    return segs[0] if segs else None


def _sop_class(path: Path) -> str | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    return str(ds.get("SOPClassUID", "")) or None


def segment_labels(path: str | Path) -> dict[int, str]:
    """Segment number -> segment label of the SEG at ``path`` (a file or a folder holding one; headers only)."""
    import pydicom

    found = find_dicom_seg(Path(path))
    if found is None:
        raise VolumeError(f"{path} is not a DICOM SEG file; give a SEG (.dcm) or a mask image on the input's grid")
    return _segments(pydicom.dcmread(found, stop_before_pixels=True))


def _segments(ds: Any) -> dict[int, str]:
    return {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])}


def read_dicom_seg(
    path: str | Path, volume: Volume, label: int | str | None = None, *, allow_empty: bool = False
) -> np.ndarray:
    """The segment ``label`` of the SEG at ``path`` as a boolean mask on ``volume``'s grid.

    ``label``: a segment number (medcam's own SEGs number segments 1.. in label order, so
    for labels 1..N the number is the label value), a segment label (case-insensitive),
    or ``None`` for the union of all segments. Raises :class:`VolumeError` for a SEG on
    another grid or frame of reference, or a missing segment, naming what is present;
    also for an empty segment unless ``allow_empty`` (a ground truth may be empty).
    """
    import pydicom

    path = Path(path)
    found = find_dicom_seg(path)
    if found is None:
        raise VolumeError(f"{path} is not a DICOM SEG file; give a SEG (.dcm) or a mask image on the input's grid")
    ds = pydicom.dcmread(found)
    if volume.spatial_dims != 3:
        raise VolumeError(f"{found} is a DICOM SEG, which medcam reads onto 3D volumes; {volume.path} is 2D")
    _check_frame_of_reference(ds, volume, found)
    numbers = _segment_numbers(ds, label, found)
    pixels = np.asarray(ds.pixel_array)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns))
    segmentation_type = str(getattr(ds, "SegmentationType", "BINARY"))
    if segmentation_type == "FRACTIONAL":
        pixels = pixels > float(getattr(ds, "MaximumFractionalValue", 255)) / 2.0
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    mask = np.zeros(volume.spatial_shape, dtype=bool)
    geometry = volume_geometry(volume)
    scaled = np.asarray(geometry.direction, dtype=float).reshape(3, 3) * np.asarray(geometry.spacing, dtype=float)
    origin = np.asarray(geometry.origin, dtype=float)
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        frame = pixels[index]
        if segmentation_type == "LABELMAP":
            selected = np.isin(frame, numbers)
        else:
            number = int(_group(item, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber", found))
            if number not in numbers:
                continue
            selected = frame.astype(bool)
        position = np.asarray(_group(item, shared, "PlanePositionSequence", "ImagePositionPatient", found), float)
        cosines = np.asarray(_group(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient", found), float)
        spacing = np.asarray(_group(item, shared, "PixelMeasuresSequence", "PixelSpacing", found), float)
        # voxel index of pixel (row 0, column 0), and the index steps of one column and one row
        start = np.linalg.solve(scaled, position - origin)
        column_step = np.linalg.solve(scaled, cosines[:3] * spacing[1])
        row_step = np.linalg.solve(scaled, cosines[3:] * spacing[0])
        # every frame read, empty or not, must lie on the grid: an empty truth from another series is an error
        _check_on_grid(start, column_step, row_step, frame.shape, found, volume, index + 1)
        rows, columns = np.nonzero(selected)
        voxels = np.rint(start + np.outer(rows, row_step) + np.outer(columns, column_step)).astype(int)
        mask[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = True
    if not mask.any() and not allow_empty:
        raise VolumeError(f"the DICOM SEG {found} has no voxels in segment(s) {numbers}; pick another label")
    return mask


def _check_on_grid(
    start: np.ndarray,
    column_step: np.ndarray,
    row_step: np.ndarray,
    shape: tuple[int, ...],
    path: Path,
    volume: Volume,
    frame: int,
) -> None:
    """Refuse a frame whose pixels are not voxel centres of the volume (checked at its four corners)."""
    steps_ok = all(
        np.allclose(np.abs(s), np.round(np.abs(s)), atol=_TOLERANCE) and round(float(np.abs(s).sum())) == 1
        for s in (column_step, row_step)
    )
    on_grid = steps_ok and np.allclose(start, np.rint(start), atol=_TOLERANCE)
    corners = np.rint([start + r * row_step + c * column_step for r in (0, shape[0] - 1) for c in (0, shape[1] - 1)])
    inside = bool(np.all((corners >= 0) & (corners < np.asarray(volume.spatial_shape))))
    if not (on_grid and inside):
        raise VolumeError(
            f"frame {frame} of the DICOM SEG {path} does not lie on the voxel grid of {volume.path.name} "
            "(another series, spacing or field of view); give a SEG made on the input series"
        )


def _group(item: Any, shared: Any, sequence: str, keyword: str, path: Path) -> Any:
    for source in (item, shared):
        if source is not None and sequence in source and keyword in source[sequence][0]:
            return source[sequence][0][keyword].value
    raise VolumeError(f"the DICOM SEG {path} has no {keyword}; medcam needs the geometry of every frame")


def _segment_numbers(ds: Any, label: int | str | None, path: Path) -> list[int]:
    segments = _segments(ds)
    if label is None:
        return sorted(segments)
    if isinstance(label, int) and label in segments:
        return [label]
    if isinstance(label, str):
        matches = [n for n, name in segments.items() if name.lower() == label.lower()]
        if matches:
            return matches
    present = ", ".join(f"{n}={name}" for n, name in sorted(segments.items()))
    raise VolumeError(f"the DICOM SEG {path} has no segment {label!r} (segments: {present}); pick one of them")


def _check_frame_of_reference(ds: Any, volume: Volume, path: Path) -> None:
    """A SEG on a DICOM volume must share the series' frame of reference (other volumes: geometry only)."""
    if volume.format != "dicom":
        return
    source = read_source_series(volume).frame_of_reference_uid
    seg = str(getattr(ds, "FrameOfReferenceUID", ""))
    if seg != source:
        raise VolumeError(
            f"the DICOM SEG {path} is in frame of reference {seg or '(none)'}, but the series {volume.path.name} "
            f"is in {source}; give a SEG made on this series"
        )
