"""DICOM objects for a PACS: each map as a Parametric Map, the prediction as a DICOM SEG.

For a DICOM series input the objects join the source study: patient and study are
copied from the source instances (by highdicom), each object is a new series that
references the source series and shares its frame of reference, and frame ``f`` of
every object (of each segment, for the SEG) lies exactly on source frame ``f`` in the
series' stored order (same position, orientation and pixel spacing; see
:mod:`medcam.volumes.dicom_series` for the order and :mod:`medcam.review.dicom_order`
for why the frames are reordered after highdicom). For any other input (NIfTI, NRRD, ...) there is no study to join:
the objects get a new study whose image series is written next to them
(``image/``, a CT series derived from the input, marked as derived and for research
use), so a viewer has the image the objects overlay. UIDs are new on every run;
everything else in the objects follows from the inputs (only the creation date and time
change with the run).

Volume axes (file index order) map to frames as SimpleITK reads a series: frame ``k``
is ``array[:, :, k].T`` (rows = index ``j``, columns = index ``i``); see
:mod:`medcam.volumes.dicom_series`.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcam.review.dicom_order import follow_source_order
from medcam.volumes.dicom_series import read_source_series, volume_geometry
from medcam.volumes.geometry import ItkGeometry
from medcam.volumes.io import Volume

logger = logging.getLogger(__name__)

MANUFACTURER = "medcam"
# series numbers of the written objects: SEG first, then one Parametric Map per map
SEG_SERIES_NUMBER = 900
MAP_SERIES_NUMBER = 901
IMAGE_SERIES_NUMBER = 899
RESEARCH_NOTE = "medcam research use, not for a patient record"

# coded segment properties for labels medcam's checkpoints commonly name (SNOMED CT, DICOM CID 7150/7151)
_ANATOMY = ("91723000", "SCT", "Anatomical Structure")
_ABNORMAL = ("49755003", "SCT", "Morphologically Abnormal Structure")
_PROPERTIES: dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]] = {
    "kidney": (_ANATOMY, ("64033007", "SCT", "Kidney")),
    "tumor": (_ABNORMAL, ("108369006", "SCT", "Neoplasm")),
    "tumour": (_ABNORMAL, ("108369006", "SCT", "Neoplasm")),
    "cyst": (_ABNORMAL, ("367643001", "SCT", "Cyst")),
    "masses": (_ABNORMAL, ("4147007", "SCT", "Mass")),
}
_TISSUE = (("85756007", "SCT", "Tissue"), ("85756007", "SCT", "Tissue"))


@dataclass(frozen=True)
class DicomFrames:
    """Where the frames of the written objects come from: the source instances, in stored order.

    ``slice_order``: the volume slice of each source frame; ``references``: its (SOP
    Instance UID, frame number or ``None``), the order the written frames follow.
    """

    source_images: list[Any]
    slice_order: list[int]
    references: list[tuple[str, int | None]]
    synthetic: bool


def write_dicom(
    folder: str | Path,
    volume: Volume,
    maps: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    segments: Mapping[int, str],
    colours: Mapping[int, tuple[float, float, float]],
    description: Mapping[str, str],
) -> list[Path]:
    """Write ``<name>_pm.dcm`` per map and ``prediction_seg.dcm`` into ``folder``; return the paths.

    ``maps``: file stem -> float map on ``volume``'s grid (``"heatmap"``, ``"uncertainty"``, ...);
    ``labels``: label values on the grid or ``None``; ``segments``: label value -> name;
    ``colours``: label value -> RGB in 0..1; ``description``: ``method``, ``class``,
    ``pixel_set`` and optionally ``layer`` (recorded in the algorithm identification and the
    series descriptions). A non-DICOM input also gets ``image/`` (see the module docstring).
    """
    import highdicom as hd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = dicom_frames(volume)
    written: list[Path] = []
    if frames.synthetic:
        (folder / "image").mkdir()
        for number, ds in enumerate(frames.source_images, start=1):
            path = folder / "image" / f"IM{number:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
            del ds.PixelData  # highdicom takes the metadata; the pixels are on disk now
    now = datetime.datetime.now().replace(microsecond=0)
    common: dict[str, Any] = {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": "medcam",
        "software_versions": _version(),
        "device_serial_number": "0",
        "content_date": now.date(),
        "content_time": now.time(),
        "series_date": now.date(),
        "series_time": now.time(),
    }
    what = _what(description)
    seg = _segmentation(hd, frames, labels, segments, colours, description, common) if labels is not None else None
    if seg is not None:
        follow_source_order(seg, frames.references)
        seg.SeriesDescription = _lo(f"medcam prediction | {what}")
        path = folder / "prediction_seg.dcm"
        seg.save_as(path, enforce_file_format=True)
        written.append(path)
    for offset, (name, data) in enumerate(maps.items()):
        pm = _parametric_map(hd, frames, name, data, what, MAP_SERIES_NUMBER + offset, common)
        follow_source_order(pm, frames.references)
        path = folder / f"{_file_stem(name)}_pm.dcm"
        pm.save_as(path, enforce_file_format=True)
        written.append(path)
    logger.info("wrote %d DICOM object(s) to %s", len(written), folder)
    return written


def dicom_frames(volume: Volume) -> DicomFrames:
    """The source instances the objects derive from: the input series, or a derived series of a non-DICOM input."""
    if volume.format == "dicom":
        source = read_source_series(volume)
        return DicomFrames(source.datasets, source.slice_order, source.references, synthetic=False)
    images = derived_series(volume)
    references: list[tuple[str, int | None]] = [(str(ds.SOPInstanceUID), None) for ds in images]
    return DicomFrames(images, list(range(len(images))), references, synthetic=True)


def frame_stack(data: np.ndarray, slice_order: Sequence[int]) -> np.ndarray:
    """``(frames, rows, columns)`` of a map on the volume grid, frames in source order (2D maps: one frame)."""
    array = np.asarray(data)
    if array.ndim == 2:
        array = array[..., None]
    return np.stack([array[:, :, k].T for k in slice_order])


def _what(description: Mapping[str, str]) -> str:
    layer = f" | layer {description['layer']}" if description.get("layer") else ""
    return f"{description['method']} | class {description['class']} | M = {description['pixel_set']}{layer}"


def _lo(text: str) -> str:
    """A Long String value (at most 64 characters, no backslash)."""
    return text.replace("\\", "/")[:64]


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "map"


def _content_label(name: str) -> str:
    """A Code String label: upper case, digits, underscore and space, 16 characters."""
    return (re.sub(r"[^A-Z0-9_ ]+", "_", name.upper()).strip("_ ") or "MAP")[:16]


def _version() -> str:
    from medcam.version import __version__

    return str(__version__)


def _algorithm(hd: Any, description: Mapping[str, str]) -> Any:
    from pydicom.sr.codedict import codes

    parameters = {"method": description["method"], "class": description["class"]}
    parameters["pixel_set_M"] = description["pixel_set"]
    if description.get("layer"):
        parameters["layer"] = description["layer"]
    return hd.AlgorithmIdentificationSequence(
        name="medcam",
        family=codes.cid7162.ArtificialIntelligence,
        version=_version(),
        source="medcam",
        parameters={k: _lo(str(v)) for k, v in parameters.items()},
    )


def _segmentation(
    hd: Any,
    frames: DicomFrames,
    labels: np.ndarray,
    segments: Mapping[int, str],
    colours: Mapping[int, tuple[float, float, float]],
    description: Mapping[str, str],
    common: Mapping[str, Any],
) -> Any:
    """A binary SEG, one segment per foreground label (named or present), numbered 1.. in label order."""
    from pydicom.sr.coding import Code

    present = {int(v) for v in np.unique(labels)}
    values = sorted((set(segments) | present) - {0})
    if not values:
        logger.warning("no foreground label is named or predicted, so no DICOM SEG is written")
        return None
    numbers = np.zeros(int(max(int(np.max(labels, initial=0)), max(values))) + 1, dtype=np.uint16)
    descriptions = []
    algorithm = _algorithm(hd, description)
    for number, value in enumerate(values, start=1):
        numbers[value] = number
        name = segments.get(value, f"label {value}")
        category, kind = _PROPERTIES.get(name.lower(), _TISSUE)
        red, green, blue = (float(np.clip(c, 0.0, 1.0)) * 255.0 for c in colours.get(value, (1.0, 1.0, 0.0)))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=_lo(name),
                segmented_property_category=Code(*category),
                segmented_property_type=Code(*kind),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"label {value}",
                tracking_uid=hd.UID(),
                display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
            )
        )
    stack = numbers[frame_stack(np.asarray(labels).astype(np.int64), frames.slice_order)]
    return hd.seg.Segmentation(
        source_images=frames.source_images,
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        content_label="PREDICTION",
        content_description=_lo(f"medcam prediction ({RESEARCH_NOTE})"),
        omit_empty_frames=False,
        **common,
    )


def _parametric_map(
    hd: Any,
    frames: DicomFrames,
    name: str,
    data: np.ndarray,
    what: str,
    series_number: int,
    common: Mapping[str, Any],
) -> Any:
    """A float32 Parametric Map; real-world values equal stored values (no unit), windowed to the map's range."""
    from pydicom.sr.codedict import codes

    stack = frame_stack(np.asarray(data, dtype=np.float32), frames.slice_order)
    lo, hi = float(np.min(stack)), float(np.max(stack))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=_content_label(name),
        lut_explanation=_lo(f"medcam {name} (unitless)"),
        unit=codes.UCUM.NoUnits,
        value_range=(lo, hi),
        slope=1.0,
        intercept=0.0,
    )
    width = hi - lo if hi > lo else 1.0
    pm = hd.pm.ParametricMap(
        source_images=frames.source_images,
        pixel_array=stack,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=lo + width / 2, window_width=width, voi_lut_function="LINEAR_EXACT")
        ],
        content_label=_content_label(name),
        content_description=_lo(f"medcam {name} ({RESEARCH_NOTE})"),
        **common,
    )
    pm.SeriesDescription = _lo(f"medcam {name} | {what}")
    if "Laterality" not in pm:  # General Series, type 2C: dciodvfy asks for it on Parametric Maps
        pm.Laterality = frames.source_images[0].get("Laterality", "")
    return pm


def derived_series(volume: Volume) -> list[Any]:
    """A CT series derived from a non-DICOM input, one instance per slice, in a new study (research use).

    Geometry is ITK's reading of the input (as the Slicer files use): frame ``k`` at
    ``origin + k * spacing_k * direction_k``, rows along index ``j``, columns along ``i``.
    Intensities are stored as 16-bit integers with a rescale that keeps integer HU exact.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    geometry = _geometry_3d(volume_geometry(volume))
    grey = volume.array[0] if volume.channels == 1 else volume.array.mean(axis=0)
    if grey.ndim == 2:
        grey = grey[..., None]
    stored, slope, intercept = _int16(grey)
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(geometry.origin, dtype=float)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime.now()
    images = []
    for k in range(grey.shape[2]):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.Modality = "CT"
        ds.PatientName = "RESEARCH^MEDCAM"
        ds.PatientID = "MEDCAM-RESEARCH"
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = study
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.StudyID = "MEDCAM"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = _lo(f"{RESEARCH_NOTE}: {volume.path.name}")
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = IMAGE_SERIES_NUMBER
        ds.SeriesDescription = _lo(f"image derived from {volume.path.name}")
        ds.DerivationDescription = _lo(f"{RESEARCH_NOTE}; converted by medcam from {volume.format}")
        ds.Manufacturer = MANUFACTURER
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.Laterality = ""  # type 2: unknown for a converted file
        ds.PatientPosition = ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds_values(origin + k * geometry.spacing[2] * direction[:, 2])
        ds.ImageOrientationPatient = _ds_values((*direction[:, 0], *direction[:, 1]))
        ds.PixelSpacing = _ds_values((geometry.spacing[1], geometry.spacing[0]))
        ds.SliceThickness = _ds_values((geometry.spacing[2],))[0]
        ds.KVP = ""
        ds.AcquisitionNumber = ""
        ds.Rows, ds.Columns = int(grey.shape[1]), int(grey.shape[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds_values((intercept,))[0]
        ds.RescaleSlope = _ds_values((slope,))[0]
        ds.RescaleType = "US"
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        images.append(ds)
    return images


def _geometry_3d(geometry: ItkGeometry) -> ItkGeometry:
    """A 2D grid as one slice in the z = 0 plane (spacing 1 mm across it)."""
    if geometry.ndim == 3:
        return geometry
    d = np.asarray(geometry.direction, dtype=float).reshape(2, 2)
    direction = np.eye(3)
    direction[:2, :2] = d
    return ItkGeometry(
        origin=(*geometry.origin, 0.0),
        spacing=(*geometry.spacing, 1.0),
        direction=tuple(float(v) for v in direction.ravel()),
    )


def _ds_values(values: Iterable[float]) -> list[str]:
    """Decimal String values that round-trip to within 1e-6 mm (at most 16 characters each)."""
    from pydicom.valuerep import format_number_as_ds

    return [format_number_as_ds(float(v)) for v in values]


def _int16(grey: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored 16-bit values and the rescale slope/intercept that give the intensities back."""
    lo, hi = float(np.min(grey)), float(np.max(grey))
    if np.array_equal(grey, np.rint(grey)) and lo >= -32768 and hi <= 32767:
        return grey.astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / 65000.0 if hi > lo else 1.0
    intercept = (hi + lo) / 2.0
    return np.rint((grey - intercept) / slope).astype(np.int16), slope, intercept
