"""The DICOM series behind a volume read from a folder: its instances, frame by frame, on the volume's grid.

SimpleITK (GDCM) reads a series folder into a :class:`~medcam.volumes.io.Volume` whose
slice axis ``k`` follows the instances sorted along the slice normal; within a slice,
index ``i`` is the DICOM column and ``j`` the row, so frame ``k`` is ``array[:, :, k].T``.
The DICOM objects medcam writes for PACS (:mod:`medcam.review.dicom`) copy the patient
and study of these instances and reference them frame by frame, so this module reads the
same files again with pydicom (headers only) and checks that every frame lands on the
volume's grid: same orientation and pixel spacing, positions on integer slices, no
missing or unequally spaced slices (GDCM reads such a series with one spacing, so its
geometry would be wrong). Enhanced (multi-frame) images are read frame by frame from
their functional groups.

The frames are kept in the order the source stores them (its *stored order*): the frames
of a multi-frame image by frame number, single-frame instances by Instance Number (the
order a PACS lists them), or in GDCM's order (along the slice normal) when an instance
has no Instance Number or two share one. The written objects follow this order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcam.volumes.geometry import ItkGeometry
from medcam.volumes.io import Volume, VolumeError, quiet_itk

logger = logging.getLogger(__name__)

# tolerance of positions and cosines, as a fraction of the slice spacing (DICOM stores
# decimal strings of 16 characters, and scanners jitter by a few micrometres)
_POSITION_TOLERANCE = 0.01
_COSINE_TOLERANCE = 1e-3


class SeriesReferenceError(VolumeError):
    """A series that reads fine as a volume but that DICOM objects cannot reference (e.g. no frame of reference)."""


@dataclass(frozen=True)
class SourceFrame:
    """One image frame of the source series and the volume slice it is.

    ``number``: 1-based frame number in a multi-frame instance, ``None`` for a single-frame one.
    """

    dataset: Any
    number: int | None
    slice_index: int
    position: tuple[float, float, float]


@dataclass(frozen=True)
class SourceSeries:
    """The instances of a series (metadata only), their frames in stored order, and their geometry."""

    datasets: list[Any]
    frames: list[SourceFrame]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    frame_of_reference_uid: str

    @property
    def slice_order(self) -> list[int]:
        """Volume slice index of every source frame, in stored order."""
        return [f.slice_index for f in self.frames]

    @property
    def references(self) -> list[tuple[str, int | None]]:
        """(SOP Instance UID, frame number or ``None``) of every source frame, in stored order."""
        return [(str(f.dataset.SOPInstanceUID), f.number) for f in self.frames]


def series_files(folder: Path) -> list[Path]:
    """The files of the one series in ``folder``, in the order SimpleITK stacks them."""
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    with quiet_itk():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if len(series) != 1:
            raise VolumeError(f"{folder} holds {len(series)} DICOM series; point --volume at a folder with one series")
        return [Path(p) for p in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])]


def stored_order(datasets: list[Any]) -> list[Any]:
    """Single-frame instances by Instance Number when each has its own; otherwise as given (GDCM's order)."""
    numbers = [str(ds.get("InstanceNumber", "")).strip() for ds in datasets]
    if not all(re.fullmatch(r"[+-]?\d+", n) for n in numbers) or len({int(n) for n in numbers}) < len(numbers):
        return list(datasets)
    return [ds for _, ds in sorted(zip((int(n) for n in numbers), datasets, strict=True), key=lambda p: p[0])]


def volume_geometry(volume: Volume) -> ItkGeometry:
    """The LPS geometry DICOM objects of ``volume`` are written in (ITK's reading, as for Slicer)."""
    return volume.itk or ItkGeometry.from_affine(volume.affine, volume.spatial_dims)


def read_source_series(volume: Volume) -> SourceSeries:
    """The instances behind a DICOM ``volume``, checked frame by frame against its grid.

    Raises :class:`~medcam.volumes.io.VolumeError` for a series whose frames do not lie on
    the volume's grid (missing or unequally spaced slices, mixed orientations): its
    geometry as read is wrong; :class:`SeriesReferenceError` for one that is a good volume
    but cannot be referenced (no or several frames of reference, several multi-frame instances).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if volume.format != "dicom":
        raise VolumeError(f"{volume.path} is not a DICOM series; DICOM objects of it need a new study")
    datasets = []
    for path in series_files(volume.path):
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError) as err:
            raise VolumeError(f"cannot read {path} as DICOM ({err}); is the file truncated?") from err
    datasets = stored_order(datasets)
    frames = [frame for ds in datasets for frame in _frames(ds)]
    name = volume.path.name
    if len(datasets) > 1 and any(number is not None for *_, number in frames):
        raise SeriesReferenceError(
            f"the DICOM series {name} splits its frames over {len(datasets)} multi-frame instances; DICOM objects "
            "can derive from single-frame slices or one multi-frame image"
        )
    uids = {str(getattr(ds, "FrameOfReferenceUID", "")) for ds in datasets}
    if len(uids) != 1 or "" in uids:
        raise SeriesReferenceError(
            f"the DICOM series {name} has {'no' if '' in uids else 'several'} frame(s) of reference; "
            "medcam needs one series in one frame of reference"
        )
    orientations = np.array([f[1] for f in frames], dtype=float)
    spacings = np.array([f[2] for f in frames], dtype=float)
    if np.ptp(orientations, axis=0).max() > _COSINE_TOLERANCE or np.ptp(spacings, axis=0).max() > 1e-4:
        raise VolumeError(
            f"the slices of the DICOM series {name} differ in orientation or pixel spacing; "
            "medcam needs one stack of parallel slices (export the series again or resample it)"
        )
    geometry = volume_geometry(volume)
    if geometry.ndim != 3:
        raise VolumeError(f"{volume.path} is not a 3D image; DICOM objects need a 3D series")
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    orientation = tuple(float(v) for v in orientations[0])
    if not np.allclose(orientation, (*direction[:, 0], *direction[:, 1]), atol=_COSINE_TOLERANCE):
        raise VolumeError(
            f"the DICOM series {name} has orientation {orientation} but was read as {direction[:, :2].T.ravel()}; "
            "resample the series and give it as NIfTI"
        )
    positions = np.array([f[0] for f in frames], dtype=float)
    _check_spacing(positions, direction[:, 2], geometry.spacing[2], name)
    slices = _slice_indices(positions, geometry, volume.spatial_shape[2], name)
    return SourceSeries(
        datasets=datasets,
        frames=[
            SourceFrame(ds, number, k, tuple(float(v) for v in pos))  # type: ignore[arg-type]
            for (pos, _, _, ds, number), k in zip(frames, slices, strict=True)
        ],
        orientation=orientation,
        pixel_spacing=(float(spacings[0][0]), float(spacings[0][1])),
        frame_of_reference_uid=uids.pop(),
    )


# (image position, image orientation, pixel spacing, dataset, frame number or None) of one frame
_Frame = tuple[Sequence[float], Sequence[float], Sequence[float], Any, int | None]


def check_dicom_source(volume: Volume, dicom_out: bool | None) -> bool | None:
    """Check a DICOM series before any work, as DICOM out needs it; return the ``dicom_out`` to use.

    A series with missing or unequally spaced slices is refused (its geometry as read is
    wrong); one that DICOM objects cannot reference (e.g. no frame of reference) is refused
    when ``dicom_out`` is ``True`` and gets no DICOM objects (``False``, with a warning)
    when it is ``None`` (automatic). Other inputs and ``dicom_out=False``: unchanged.
    """
    if volume.format != "dicom" or dicom_out is False:
        return dicom_out
    try:
        read_source_series(volume)
    except SeriesReferenceError as err:
        if dicom_out:
            raise
        logger.warning("%s; writing no dicom/ folder", err)
        return False
    return dicom_out


def _frames(ds: Any) -> list[_Frame]:
    """(position, orientation, pixel spacing, dataset, frame number) of every frame of an instance."""
    count = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if count > 1:
            raise VolumeError(
                f"{ds.filename} is a multi-frame image without per-frame geometry; "
                "medcam reads single-frame series and enhanced multi-frame images"
            )
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in ds:
                raise VolumeError(f"{ds.filename} has no {keyword}; medcam needs cross-sectional images with geometry")
        return [(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing, ds, None)]
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    frames: list[_Frame] = []
    for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        values = []
        for group, keyword in (
            ("PlanePositionSequence", "ImagePositionPatient"),
            ("PlaneOrientationSequence", "ImageOrientationPatient"),
            ("PixelMeasuresSequence", "PixelSpacing"),
        ):
            source = item if group in item else shared
            if source is None or group not in source or keyword not in source[group][0]:
                raise VolumeError(f"frame {number} of {ds.filename} has no {keyword}; medcam needs its geometry")
            values.append(source[group][0][keyword].value)
        frames.append((values[0], values[1], values[2], ds, number))
    return frames


def _check_spacing(positions: np.ndarray, normal: np.ndarray, spacing: float, name: str) -> None:
    """Refuse missing, doubled or unequally spaced slices (one line naming the gaps)."""
    if len(positions) < 2:
        return
    steps = np.diff(np.sort(positions @ normal))
    tolerance = _POSITION_TOLERANCE * max(spacing, 1e-6)
    if np.ptp(steps) > tolerance or steps.min() <= tolerance:
        gaps = sorted({round(float(s), 3) for s in steps})
        raise VolumeError(
            f"the DICOM series {name} has missing, doubled or unequally spaced slices (gaps of {gaps[:6]} mm); "
            "medcam needs a complete series with equal spacing: export all slices, or resample the series to NIfTI"
        )


def _slice_indices(positions: np.ndarray, geometry: ItkGeometry, depth: int, name: str) -> list[int]:
    """The volume slice of every frame position; refuse positions off the volume's grid."""
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    scaled = direction * np.asarray(geometry.spacing, dtype=float)
    index = np.linalg.solve(scaled, (positions - np.asarray(geometry.origin, dtype=float)).T).T
    slices = np.rint(index[:, 2]).astype(int)
    off = np.abs(index - np.stack([np.zeros_like(slices), np.zeros_like(slices), slices], axis=1)).max()
    if off > _POSITION_TOLERANCE or sorted(slices.tolist()) != list(range(depth)):
        raise VolumeError(
            f"the frames of the DICOM series {name} do not match the {depth} slices read from it "
            f"(index offset {off:.3g}); export the series again or resample it to NIfTI"
        )
    return [int(k) for k in slices]
