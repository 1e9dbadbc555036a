"""What the readers check before they trust a file: header sizes, data types, geometry, quiet libraries.

A header can promise more voxels than the file holds (a few bytes that ask for terabytes),
name a data type medcam cannot explain (bool, complex, RGB, an unknown code), or give a
geometry no grid can have (zero or non-finite voxel sizes, a singular or NaN direction).
Each check here raises a one-line :class:`~medcam.volumes.io.VolumeError`-style message
*before* anything is allocated. The libraries that read images also talk: nibabel logs
its header fixes, ITK/MetaIO/VNL write to the C ``stderr``; :func:`quiet_libraries`
collects that talk and logs it (``medcam -v`` shows it) instead of letting it reach the
user's terminal between medcam's own messages.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# deflate's best case is about 1032:1, so a compressed file can hold at most this many bytes per byte
MAX_DEFLATE_RATIO = 1032
# NIfTI data type codes medcam reads as scalar intensities (real numbers)
NIFTI_SCALAR_CODES = {
    2: "uint8",
    4: "int16",
    8: "int32",
    16: "float32",
    64: "float64",
    256: "int8",
    512: "uint16",
    768: "uint32",
    1024: "int64",
    1280: "uint64",
}
NIFTI_REFUSED_CODES = {
    1: "a 1-bit (bool) image, which NIfTI readers do not support; save it as uint8",
    32: "a complex image; medcam explains real intensities, so save the magnitude (abs) or the real part",
    1792: "a complex image; medcam explains real intensities, so save the magnitude (abs) or the real part",
    2048: "a complex image; medcam explains real intensities, so save the magnitude (abs) or the real part",
    128: "an RGB image; medcam reads NIfTI as scalar intensities, so convert it to grey (or save it as PNG)",
    2304: "an RGBA image; medcam reads NIfTI as scalar intensities, so convert it to grey (or save it as PNG)",
    1536: "a 128-bit float image; save it as float32 or float64",
}


class HeaderError(ValueError):
    """A header medcam refuses; the readers turn it into a VolumeError naming the file."""


def physical_memory() -> int:
    """Bytes of RAM on this machine (a generous upper bound for one array); 64 GiB if unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def check_allocation(voxels: int, what: str) -> None:
    """Refuse an image whose float32 copy would not fit in this machine's memory."""
    need = voxels * 4
    if need > physical_memory():
        raise HeaderError(
            f"{what} would need {need / 2**30:.0f} GiB as float32, more than this machine's memory; "
            "crop or resample the image first"
        )


def read_nifti_header(path: Path) -> Any:
    """The NIfTI-1/2 header of ``path``, parsed without nibabel's silent fixes (``check=False``)."""
    import nibabel as nib

    opener: Callable[..., Any] = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read(540)
    except (OSError, EOFError, zlib.error) as err:
        raise HeaderError(f"is not readable ({err}); is the file truncated or corrupt?") from None
    if len(raw) < 348:
        raise HeaderError(f"holds {len(raw)} bytes, fewer than a NIfTI header (348); is the file truncated?")
    for klass, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        for order in ("<", ">"):
            if int(np.frombuffer(raw[:4], dtype=f"{order}i4")[0]) == size and len(raw) >= size:
                import io

                try:
                    return klass.from_fileobj(io.BytesIO(raw[:size]), check=False)
                except Exception as err:
                    raise HeaderError(f"has a header nibabel cannot parse ({err})") from None
    raise HeaderError("does not start with a NIfTI-1 or NIfTI-2 header (sizeof_hdr is neither 348 nor 540)")


def check_nifti_header(header: Any, path: Path) -> None:
    """Refuse what the NIfTI header says before any voxel is read (see the module docstring)."""
    code = int(header["datatype"])
    if code in NIFTI_REFUSED_CODES:
        raise HeaderError(f"is {NIFTI_REFUSED_CODES[code]}")
    if code not in NIFTI_SCALAR_CODES:
        raise HeaderError(f"has data type code {code}, which NIfTI does not define; the header is corrupt")
    dim = [int(d) for d in header["dim"]]
    rank = dim[0]
    if not 1 <= rank <= 7:
        raise HeaderError(f"has dim[0] = {rank} (the number of dimensions must be 1 to 7); the header is corrupt")
    sizes = dim[1 : rank + 1]
    if any(s < 1 for s in sizes):
        raise HeaderError(f"has dimensions {sizes}; every size must be at least 1")
    voxels = int(np.prod(sizes, dtype=object))
    itemsize = np.dtype(NIFTI_SCALAR_CODES[code]).itemsize
    offset = float(header["vox_offset"])
    if not np.isfinite(offset) or offset < int(header["sizeof_hdr"]):
        raise HeaderError(f"has vox_offset {offset:g}, which points into or before the header; the header is corrupt")
    need = int(offset) + voxels * itemsize
    size = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    if (not compressed and need > size) or (compressed and need > size * MAX_DEFLATE_RATIO):
        raise HeaderError(
            f"has a header promising {sizes} voxels ({need:,} bytes) but the file holds only {size:,} bytes"
            f"{' compressed' if compressed else ''}; is the file truncated, or the header wrong?"
        )
    check_allocation(voxels, f"its {'x'.join(map(str, sizes))} voxels")
    spatial = min(rank, 3)
    pixdim = [float(p) for p in header["pixdim"][1 : spatial + 1]]
    for axis, value in enumerate(pixdim, start=1):
        if value == 0 and sizes[axis - 1] == 1:
            continue  # one slice (a 2D image stored as 3D): its thickness places nothing
        if not np.isfinite(value) or value == 0:
            raise HeaderError(
                f"has voxel size pixdim[{axis}] = {value:g}; a voxel size must be finite and non-zero, "
                "so fix the header (e.g. nibabel: img.header.set_zooms(...)) rather than let medcam guess 1 mm"
            )
    for name in ("scl_slope", "scl_inter"):
        value = float(header[name])
        if np.isinf(value):
            raise HeaderError(f"has {name} = {value:g}; the intensity scaling must be finite")
    if int(header["sform_code"]) > 0:
        sform = np.array([header["srow_x"], header["srow_y"], header["srow_z"]], dtype=float)
        _check_matrix(sform, "sform (srow_x/y/z)", spatial)
    if int(header["qform_code"]) > 0:
        quaternion = np.array([header[k] for k in ("quatern_b", "quatern_c", "quatern_d")], dtype=float)
        offsets = np.array([header[k] for k in ("qoffset_x", "qoffset_y", "qoffset_z")], dtype=float)
        if not (np.all(np.isfinite(quaternion)) and np.all(np.isfinite(offsets))):
            raise HeaderError("has a qform with NaN or infinite quaternion or offset; fix or zero the qform")
        if float(quaternion @ quaternion) > 1.0 + 1e-6:
            raise HeaderError("has a qform quaternion longer than 1, which is no rotation; fix or zero the qform")


def _check_matrix(matrix: np.ndarray, name: str, spatial: int) -> None:
    if not np.all(np.isfinite(matrix)):
        raise HeaderError(f"has a {name} with NaN or infinite entries; fix the header's geometry")
    linear = matrix[:spatial, :spatial] if spatial < 3 else matrix[:3, :3]
    if abs(float(np.linalg.det(linear))) < 1e-12 or np.linalg.matrix_rank(linear) < linear.shape[0]:
        raise HeaderError(f"has a singular {name} (voxels of zero size or axes that coincide); fix its geometry")


def check_affine(affine: np.ndarray, spatial: int) -> None:
    """The voxel -> world matrix a reader returns: finite and invertible."""
    _check_matrix(np.asarray(affine, dtype=float)[:3], "voxel-to-world matrix", spatial)


def check_itk_information(
    size: Sequence[int],
    spacing: Sequence[float],
    direction: Sequence[float],
    origin: Sequence[float],
    components: int,
    file_bytes: int | None,
) -> None:
    """What ITK read from a NRRD/MetaImage/DICOM header: sizes, voxel sizes, direction, origin."""
    if any(int(s) < 1 for s in size):
        raise HeaderError(f"has size {list(size)}; every size must be at least 1")
    voxels = int(np.prod([int(s) for s in size], dtype=object)) * max(int(components), 1)
    if file_bytes is not None and voxels > file_bytes * MAX_DEFLATE_RATIO:
        raise HeaderError(
            f"has a header promising {list(size)} voxels but the file holds only {file_bytes:,} bytes; "
            "is the file truncated, or the header wrong?"
        )
    check_allocation(voxels, f"its {'x'.join(str(int(s)) for s in size)} voxels")
    for axis, value in enumerate(spacing):
        if not np.isfinite(value) or value <= 0:
            raise HeaderError(
                f"has voxel size {value:g} along axis {axis}; a voxel size must be finite and positive, fix the header"
            )
    n = len(size)
    matrix = np.asarray(direction, dtype=float).reshape(n, n)
    if not np.all(np.isfinite(matrix)) or abs(float(np.linalg.det(matrix))) < 1e-6:
        raise HeaderError("has a singular or non-finite direction matrix; fix the header's geometry")
    if not np.all(np.isfinite(np.asarray(origin, dtype=float))):
        raise HeaderError("has a NaN or infinite origin; fix the header's geometry")


def check_series_files(files: Sequence[str]) -> None:
    """Read every file's ImagePositionPatient (headers only) and check the slices' spacing."""
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    positions, normal = [], None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            positions.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
            if normal is None:
                cosines = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
                normal = np.cross(cosines[:3], cosines[3:6])
        except (RuntimeError, ValueError, IndexError):
            raise HeaderError(
                f"has a file without a readable slice position ({Path(name).name}); is it truncated or corrupt?"
            ) from None
    if normal is not None and len(positions) > 1:
        check_slice_positions(np.asarray(positions), np.asarray(normal), files)


def check_slice_positions(positions: np.ndarray, normal: np.ndarray, files: Sequence[str]) -> float:
    """The slice spacing of a DICOM series, refusing duplicate, missing or unequally spaced slices.

    ``positions``: ImagePositionPatient of each file (n x 3); ``normal``: the slice normal.
    """
    if len(positions) < 2:
        return 0.0
    along = positions @ normal
    order = np.argsort(along)
    gaps = np.diff(along[order])
    if np.any(np.abs(gaps) < 1e-4):
        k = int(np.argmin(np.abs(gaps)))
        raise HeaderError(
            f"has missing, doubled or unequally spaced slices: {Path(files[order[k]]).name} and "
            f"{Path(files[order[k + 1]]).name} lie at the same position; remove the duplicate"
        )
    typical = float(np.median(gaps))
    off = np.abs(gaps - typical) > max(0.01 * typical, 1e-3)
    if np.any(off):
        k = int(np.argmax(off))
        ratio = gaps[k] / typical
        kind = f" (about {ratio - 1:.0f} missing)" if ratio > 1.5 else ""
        raise HeaderError(
            f"has missing, doubled or unequally spaced slices: {gaps[k]:.4g} mm between "
            f"{Path(files[order[k]]).name} and {Path(files[order[k + 1]]).name}{kind} where the others are "
            f"{typical:.4g} mm apart; ITK would read it on an invented grid, so export all slices or resample it"
        )
    return typical


@contextlib.contextmanager
def quiet_libraries() -> Iterator[list[str]]:
    """Collect what nibabel, numpy, PIL and C libraries (ITK, MetaIO, VNL, GDCM) say while a file is read.

    Python warnings are recorded, nibabel's logger is held back and the C ``stderr`` (file
    descriptor 2) goes to a temporary file; everything collected is logged at INFO level
    and yielded as a list of lines.
    """
    said: list[str] = []
    nib_logger = logging.getLogger("nibabel.global")
    old_level, old_propagate = nib_logger.level, nib_logger.propagate
    collector = _Collector(said)
    nib_logger.addHandler(collector)
    handlers = [h for h in nib_logger.handlers if h is not collector]
    for handler in handlers:
        nib_logger.removeHandler(handler)
    nib_logger.setLevel(logging.DEBUG)
    nib_logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught, _c_stderr(said):
            warnings.simplefilter("always")
            yield said
    finally:
        nib_logger.removeHandler(collector)
        for handler in handlers:
            nib_logger.addHandler(handler)
        nib_logger.setLevel(old_level)
        nib_logger.propagate = old_propagate
        said.extend(str(w.message) for w in caught)
        for line in said:
            logger.info("reader: %s", line)


class _Collector(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _c_stderr(said: list[str]) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the duration (C++ libraries write there)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            said.extend(line for line in text.splitlines() if line.strip())
