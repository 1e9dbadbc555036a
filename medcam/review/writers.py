"""Writing maps and labelmaps on the input's own voxel grid, deterministically.

* :func:`write_nifti_like` reuses a copy of the SOURCE header for NIfTI inputs (qform,
  sform, their codes, pixdim, units and dim order are kept; data type float32 or an
  integer label type; scale slope 1, intercept 0; cal_min/cal_max reset), so nibabel
  and ITK/Slicer place every output voxel where they place the input's voxel. Other
  inputs get a NIfTI header built from ITK's reading of the input geometry.
* :func:`write_nrrd` writes NRRD (gzip, fixed header order, mtime 0), used for
  Slicer's ``.seg.nrrd`` segmentation files and for DICOM inputs inside the package.

Files written twice from the same arrays are byte-identical.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from medcam.volumes.geometry import ItkGeometry
from medcam.volumes.io import Volume

Kind = Literal["map", "labels"]

_NRRD_TYPES = {
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int16): "short",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int32): "int",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}


def label_dtype(max_label: int) -> np.dtype:
    """The smallest unsigned type for labels up to ``max_label``."""
    return np.dtype(np.uint8) if max_label < 256 else np.dtype(np.uint16)


def _to_file_shape(volume: Volume, data: np.ndarray) -> np.ndarray:
    if tuple(data.shape) != volume.spatial_shape:
        raise ValueError(f"data of shape {data.shape} does not match the input grid {volume.spatial_shape}")
    if volume.format == "nifti":
        return data.reshape(volume.file_shape)
    return data


def write_nifti_like(volume: Volume, data: np.ndarray, path: str | Path, *, kind: Kind = "map") -> Path:
    """Write ``data`` (on ``volume``'s grid, file index order) as NIfTI with the input's geometry."""
    import nibabel as nib

    path = Path(path)
    if kind == "map":
        out = np.asarray(data, dtype=np.float32)
    else:
        out = np.asarray(data).astype(label_dtype(int(np.max(data, initial=0))), copy=False)
    out = _to_file_shape(volume, out)
    if volume.header is not None:
        header = volume.header.copy()
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        affine = volume.affine
    else:
        # ITK-read input (NRRD, MetaImage, DICOM, PNG): the header states ITK's geometry
        header = nib.Nifti1Header()
        image_class = nib.Nifti1Image
        assert volume.itk is not None  # every non-NIfTI reader fills it
        affine = volume.itk.affine
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
        header.set_xyzt_units("mm")
    header.set_data_dtype(out.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"] = 0.0
    header["cal_max"] = 0.0
    header["intent_code"] = 1002 if kind == "labels" else 0  # NIFTI_INTENT_LABEL for labelmaps
    header["intent_name"] = b""
    header["descrip"] = b"medcam " + (b"heatmap" if kind == "map" else b"labels")
    image = image_class(out, affine, header)
    nib.save(image, str(path))
    return path


def write_nrrd(
    path: str | Path,
    data: np.ndarray,
    geometry: ItkGeometry,
    fields: Mapping[str, str] | None = None,
    *,
    kinds: Sequence[str] | None = None,
) -> Path:
    """Write ``data`` (file index order, i fastest on disk) as a gzip NRRD in LPS space.

    ``fields`` become ``key:=value`` lines (Slicer's segmentation metadata). A 2D
    ``data`` with a 2D geometry is written as one slice of a 3D volume, as Slicer
    loads 2D images.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.dtype not in _NRRD_TYPES:
        raise ValueError(f"cannot write {data.dtype} as NRRD")
    origin = list(geometry.origin)
    spacing = list(geometry.spacing)
    n = geometry.ndim
    direction = np.asarray(geometry.direction, dtype=float).reshape(n, n)
    if data.ndim == 2:
        data = data[..., None]
    if n == 2:
        full = np.eye(3)
        full[:2, :2] = direction
        direction, origin, spacing = full, [*origin, 0.0], [*spacing, 1.0]
    columns = direction * np.asarray(spacing)
    vectors = " ".join("(" + ",".join(_number(v) for v in columns[:, a]) + ")" for a in range(3))
    lines = [
        "NRRD0004",
        "# written by medcam",
        f"type: {_NRRD_TYPES[data.dtype]}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {' '.join(str(s) for s in data.shape)}",
        f"space directions: {vectors}",
        f"kinds: {' '.join(kinds or ['domain'] * 3)}",
        "endian: little",
        "encoding: gzip",
        "space origin: (" + ",".join(_number(v) for v in origin) + ")",
    ]
    for key, value in (fields or {}).items():
        lines.append(f"{key}:={value}")
    header = ("\n".join(lines) + "\n\n").encode("ascii")
    raw = np.ascontiguousarray(data.astype(data.dtype.newbyteorder("<"), copy=False).transpose()).tobytes()
    with path.open("wb") as handle:
        handle.write(header)
        handle.write(gzip.compress(raw, compresslevel=1, mtime=0))
    return path


def _number(value: float) -> str:
    text = f"{float(value):.17g}"
    return "0" if text == "-0" else text


def _extent(inside: np.ndarray) -> str:
    """Slicer's inclusive index extent ``i0 i1 j0 j1 k0 k1`` of a boolean mask (empty: ``0 -1 ...``)."""
    bounds = []
    for axis in range(inside.ndim):
        others = tuple(a for a in range(inside.ndim) if a != axis)
        hits = np.flatnonzero(inside.any(axis=others))
        if hits.size == 0:
            return "0 -1 0 -1 0 -1"
        bounds += [int(hits[0]), int(hits[-1])]
    return " ".join(str(b) for b in bounds)


def write_segmentation(
    path: str | Path,
    labels: np.ndarray,
    geometry: ItkGeometry,
    segments: Mapping[int, tuple[str, tuple[float, float, float]]],
) -> Path:
    """Write a labelmap as a 3D Slicer segmentation (``.seg.nrrd``) with named, coloured segments.

    ``segments``: label value -> (name, RGB in [0, 1]). One layer holds every segment;
    each segment's extent is its bounding box (empty segments get an empty extent).
    """
    labels = np.asarray(labels)
    labels3 = labels[..., None] if labels.ndim == 2 else labels
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for index, (value, (name, color)) in enumerate(sorted(segments.items())):
        extent = _extent(labels3 == value)
        prefix = f"Segment{index}_"
        fields[prefix + "ID"] = f"Segment_{value}"
        fields[prefix + "Name"] = name
        fields[prefix + "NameAutoGenerated"] = "0"
        fields[prefix + "Color"] = " ".join(f"{c:.6g}" for c in color)
        fields[prefix + "ColorAutoGenerated"] = "0"
        fields[prefix + "LabelValue"] = str(int(value))
        fields[prefix + "Layer"] = "0"
        fields[prefix + "Extent"] = extent
        fields[prefix + "Tags"] = "medcam:prediction|"
    top = max([int(v) for v in segments] + [int(np.max(labels3, initial=0))])
    return write_nrrd(path, labels3.astype(label_dtype(top)), geometry, fields)
