"""Reading images with their geometry: NIfTI, NRRD, MetaImage, DICOM series, PNG/JPEG.

Every reader returns a :class:`Volume`: a channel-first float32 array whose spatial
axes are in *file index order* (see :mod:`medcam.volumes.geometry`), the RAS affine
of that grid, what ITK (and so 3D Slicer) reads as the grid's geometry, and for
NIfTI the source header, which the writers copy so that every output voxel lands
exactly where the input's voxel is.

PNG/JPEG images follow ITK's (and Slicer's) convention: index i is the column (x), j
the row (y), origin 0, spacing 1, identity LPS direction, so a 2D image is the array
``(C, width, height)``. Networks take pictures as ``(C, rows, columns)``;
:attr:`Volume.network_axes` says so, and the preprocessing turns the axes with the
affine (:mod:`medcam.volumes.preprocessing`).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medcam.errors import UserError
from medcam.volumes.geometry import ItkGeometry, axis_codes, voxel_spacing
from medcam.volumes.guards import (
    HeaderError,
    check_affine,
    check_itk_information,
    check_nifti_header,
    check_series_files,
    quiet_libraries,
    read_nifti_header,
)

logger = logging.getLogger(__name__)

Format = Literal["nifti", "nrrd", "metaimage", "dicom", "image"]

_SUFFIXES: dict[str, Format] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
}


# pictures larger than this (Pillow's own default limit) are refused before decoding
MAX_PICTURE_PIXELS = 89_478_485


class VolumeError(UserError):
    """An image cannot be read or is not something medcam can explain."""


@dataclass(frozen=True, eq=False)
class Volume:
    """An image with its geometry.

    ``array``: ``(C, *spatial)`` float32, spatial axes in file index order.
    ``affine``: 4x4 voxel index -> RAS mm (nibabel's best affine for NIfTI).
    ``itk``: the geometry ITK/Slicer read for the same file (``None`` if ITK cannot read it).
    ``header``: the NIfTI header (a copy is reused by every NIfTI output), else ``None``.
    ``file_shape``: the spatial shape as stored (e.g. ``(X, Y, Z, 1)``), restored on write.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    format: Format
    itk: ItkGeometry | None = None
    header: Any = None
    file_shape: tuple[int, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim - 1

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, ...]:
        return voxel_spacing(self.affine, self.spatial_dims)

    @property
    def network_axes(self) -> tuple[int, ...]:
        """The index axes in the order a network takes them.

        A picture is indexed (x, y) = (column, row), as ITK and Slicer index it, but 2D
        networks (torchvision, smp, medcam's own training readers) take pictures as
        (row, column): ``(1, 0)``. Every other image: file index order.
        """
        if self.format == "image":
            return (1, 0)
        return tuple(range(self.spatial_dims))

    def describe(self) -> dict[str, Any]:
        """Geometry for ``summary.json``."""
        info: dict[str, Any] = {
            "path": str(self.path),
            "format": self.format,
            "shape": list(self.spatial_shape),
            "channels": self.channels,
            "spacing_mm": [round(s, 6) for s in self.spacing],
            "affine": np.round(self.affine, 6).tolist(),
            "orientation": axis_codes(self.affine),
        }
        if self.header is not None:
            info["sform_code"] = int(self.header["sform_code"])
            info["qform_code"] = int(self.header["qform_code"])
        if self.itk is not None:
            info["itk"] = self.itk.as_dict()
        if self.notes:
            info["notes"] = list(self.notes)
        return info


def volume_format(path: str | Path) -> Format:
    """The format of ``path`` by its suffix (a folder is a DICOM series)."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise VolumeError(
        f"{path} has an unknown image type; medcam reads .nii/.nii.gz, .nrrd/.nhdr, .mha/.mhd, "
        ".png/.jpg and DICOM series folders"
    )


def is_image_file(path: Path) -> bool:
    """True for a file with a supported image suffix."""
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in _SUFFIXES)


def strip_suffix(name: str) -> str:
    """``case_001.nii.gz`` -> ``case_001``."""
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(path: str | Path, *, allow_nonfinite: bool = False) -> Volume:
    """Read an image with its geometry; every problem is a :class:`VolumeError` naming the fix."""
    if not str(path).strip():
        raise VolumeError("the image path is empty; name an image file or a DICOM folder")
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path} does not exist; check the path")
    if not path.is_dir() and not path.is_file():
        raise VolumeError(f"{path} is not a regular file (a pipe or a device?); give an image file")
    kind = volume_format(path)
    try:
        with quiet_libraries():
            if kind == "nifti":
                volume = _read_nifti(path)
            elif kind == "image":
                volume = _read_picture(path)
            elif kind == "dicom":
                volume = _read_dicom(path)
            else:
                volume = _read_itk(path, kind)
    except HeaderError as err:
        raise VolumeError(f"{path} {err}") from None
    except MemoryError:
        raise VolumeError(f"{path} does not fit in memory; crop or resample it first") from None
    if volume.array.size == 0:
        raise VolumeError(f"{path} contains no voxels (shape {volume.array.shape})")
    if not allow_nonfinite:
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise VolumeError(
                f"{path} contains {bad} NaN or infinite voxel(s); medcam needs finite intensities, so "
                "replace them (e.g. with the minimum intensity) and try again"
            )
    return volume


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence ITK's warnings on stderr for one call (our own errors say what went wrong)."""
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _itk_geometry(image: Any) -> ItkGeometry:
    return ItkGeometry(
        origin=tuple(float(v) for v in image.GetOrigin()),
        spacing=tuple(float(v) for v in image.GetSpacing()),
        direction=tuple(float(v) for v in image.GetDirection()),
    )


def itk_geometry_of_file(path: Path) -> ItkGeometry | None:
    """The geometry ITK (and Slicer) read from ``path``'s header, or ``None`` if ITK refuses it."""
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as err:
        logger.warning("ITK cannot read the geometry of %s (%s); Slicer may not open it", path, err)
        return None
    return _itk_geometry(reader)


def _spatial(array: np.ndarray, path: Path, file_shape: tuple[int, ...]) -> np.ndarray:
    """Drop trailing singleton axes beyond 3D; refuse time series and vector images."""
    shape = array.shape
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim > 3:
        raise VolumeError(
            f"{path} is a {len(shape)}D image of shape {file_shape}; medcam explains one 2D or 3D image, "
            "so extract one volume first (e.g. with nibabel: img.slicer[..., 0])"
        )
    if array.ndim < 2:
        raise VolumeError(f"{path} has shape {file_shape}; medcam needs a 2D or 3D image")
    return array


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    check_nifti_header(read_nifti_header(path), path)  # before nibabel allocates anything
    errors = (
        OSError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
        ValueError,
        OverflowError,
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
    )
    try:
        img = nib.load(str(path))
    except errors as err:
        raise VolumeError(f"cannot read {path} as NIfTI ({err}); is the file truncated or corrupt?") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(f"{path} is a {type(img).__name__}, not a NIfTI-1/2 image")
    try:
        data = img.get_fdata(dtype=np.float32)
    except errors as err:
        raise VolumeError(f"cannot read the voxels of {path} ({err}); is the file truncated or corrupt?") from err
    file_shape = tuple(int(s) for s in img.shape)
    array = _spatial(np.asarray(data), path, file_shape)
    check_affine(np.asarray(img.affine, dtype=float), array.ndim)
    header = img.header.copy()
    notes: list[str] = []
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode > 0 and scode > 0 and not np.allclose(header.get_qform(), header.get_sform(), atol=1e-4):
        notes.append(
            "qform and sform disagree: nibabel (and medcam's preview) use the sform, ITK/Slicer may use the "
            "qform; every output copies both, so each reader overlays them on the input as it reads the input"
        )
    return Volume(
        array=array[None].astype(np.float32, copy=False),
        affine=np.asarray(img.affine, dtype=float),
        path=path,
        format="nifti",
        itk=itk_geometry_of_file(path),
        header=header,
        file_shape=file_shape,
        notes=tuple(notes),
    )


def _from_itk_image(image: Any, path: Path, kind: Format) -> Volume:
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    if image.GetDimension() not in (2, 3):
        raise VolumeError(f"{path} is a {image.GetDimension()}D image; medcam explains one 2D or 3D image")
    array = sitk.GetArrayFromImage(image)  # (k, j, i[, components])
    components = image.GetNumberOfComponentsPerPixel()
    array = np.moveaxis(array, -1, 0) if components > 1 else array[None]  # (C, k, j, i)
    spatial = tuple(range(1, array.ndim))[::-1]
    array = np.transpose(array, (0, *spatial))  # (C, i, j, k)
    geometry = _itk_geometry(image)
    return Volume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        affine=geometry.affine,
        path=path,
        format=kind,
        itk=geometry,
        file_shape=tuple(int(s) for s in image.GetSize()),
    )


def _read_itk(path: Path, kind: Format) -> Volume:
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
            single_file = not path.name.lower().endswith((".nhdr", ".mhd"))
            _check_itk_reader(reader, path.stat().st_size if single_file else None)
            image = reader.Execute()
    except RuntimeError as err:
        raise VolumeError(f"cannot read {path} ({_itk_message(err)}); is the file truncated or corrupt?") from None
    return _from_itk_image(image, path, kind)


def _itk_message(err: BaseException) -> str:
    """The last informative line of an ITK exception (they span several lines)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "unknown error"


def _check_itk_reader(reader: Any, file_bytes: int | None) -> None:
    """Refuse complex voxels and impossible geometry from the header ITK read, before the voxels."""
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    if reader.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise HeaderError(
            "is a complex image; medcam explains real intensities, so save the magnitude (abs) or the real part"
        )
    if reader.GetDimension() not in (2, 3):
        raise HeaderError(f"is a {reader.GetDimension()}D image; medcam explains one 2D or 3D image")
    check_itk_information(
        reader.GetSize(),
        reader.GetSpacing(),
        reader.GetDirection(),
        reader.GetOrigin(),
        reader.GetNumberOfComponents(),
        file_bytes,
    )


def _read_dicom(folder: Path) -> Volume:
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    with quiet_itk():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeError(f"{folder} is a folder without a DICOM series; point --volume at a series folder or a file")
    if len(series) > 1:
        raise VolumeError(
            f"{folder} holds {len(series)} DICOM series ({', '.join(series)}); "
            "point --volume at a folder with exactly one series"
        )
    with quiet_itk():
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    if len(files) > 1:  # a single (enhanced, multi-frame) file has no per-file slice positions to compare
        unread = sorted({p.name for p in folder.iterdir() if p.is_file()} - {Path(f).name for f in files})
        _check_series(folder, files, unread)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with quiet_itk():
            # one file is an enhanced (multi-frame) image: GDCM stacks its frames itself
            image = sitk.ReadImage(files[0]) if len(files) == 1 else reader.Execute()
    except RuntimeError as err:
        raise VolumeError(f"cannot read the DICOM series in {folder} ({_itk_message(err)})") from None
    try:
        check_itk_information(image.GetSize(), image.GetSpacing(), image.GetDirection(), image.GetOrigin(), 1, None)
    except HeaderError as err:
        raise VolumeError(f"the DICOM series in {folder} {err}") from None
    return _from_itk_image(image, folder, "dicom")


def _check_series(folder: Path, files: list[str], unread: list[str]) -> None:
    """Refuse a series with duplicate, missing or unequally spaced slices (ImagePositionPatient)."""
    try:
        check_series_files(files)
    except HeaderError as err:
        hint = f" (unreadable files left out: {', '.join(unread[:3])})" if unread else ""
        raise VolumeError(f"the DICOM series in {folder} {err}{hint}") from None


def _read_picture(path: Path) -> Volume:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size  # from the header: check before the pixels are decoded
            limit = Image.MAX_IMAGE_PIXELS or MAX_PICTURE_PIXELS
            if width * height > limit:
                raise VolumeError(
                    f"{path} is {width} x {height} pixels, more than {limit:,} "
                    "(a decompression bomb, or a picture to downsample first)"
                )
            if min(width, height) < 2:
                raise VolumeError(f"{path} is {width} x {height} pixels; medcam needs at least 2 x 2")
            img.load()
            mode = img.mode
            if mode in ("L", "I", "I;16", "I;16B", "F"):
                pixels = np.asarray(img, dtype=np.float32)[..., None]
            else:
                pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    except VolumeError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise VolumeError(f"cannot read {path} as an image ({err}); is the file truncated or corrupt?") from err
    # (H, W, C) -> (C, W, H): index i is the column, as ITK and MONAI read it
    array = np.ascontiguousarray(np.transpose(pixels, (2, 1, 0)))
    geometry = ItkGeometry(origin=(0.0, 0.0), spacing=(1.0, 1.0), direction=(1.0, 0.0, 0.0, 1.0))
    return Volume(
        array=array,
        affine=geometry.affine,
        path=path,
        format="image",
        itk=geometry,
        file_shape=tuple(int(s) for s in array.shape[1:]),
    )
