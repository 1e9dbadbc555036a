"""Pixel sets M given on the INPUT image, carried to the model grid.

The grammar is :func:`medcam.core.targets.parse_pixel_set`'s (one parser); ``mask:FILE[:LABEL]``
is added here because reading a file belongs to this layer. The one coordinate rule:
``voxel:`` and ``box:`` given to ``medcam explain`` are input voxel indices in file order
(i, j, k as nibabel, ITK and Slicer's IJK count them; x, y = column, row for PNG/JPEG);
``medcam.explain`` on tensors takes them in model-output indices. Everything else
(predicted, prob>T, component[:K], image) is defined on the model's own output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcam.core.targets import Box, Mask, PixelSet, Voxel, parse_pixel_set
from medcam.data.nifti import grid_difference
from medcam.errors import UserError
from medcam.volumes.dicom_seg import find_dicom_seg, read_dicom_seg
from medcam.volumes.geometry import axis_codes
from medcam.volumes.io import Volume, load_volume
from medcam.volumes.nnunet_grid import NNUNetInput
from medcam.volumes.preprocessing import ModelInput

INPUT_COORDINATES = "input voxel indices (file order)"


def _check_inside(volume: Volume, coords: Sequence[int], what: str, upper: bool = False) -> None:
    shape = volume.spatial_shape
    if len(coords) != len(shape):
        raise UserError(f"{what} has {len(coords)} coordinates but {volume.path.name} has {len(shape)} axes {shape}")
    limit = [s + (1 if upper else 0) for s in shape]
    if any(not 0 <= c < lim for c, lim in zip(coords, limit, strict=True)):
        raise UserError(
            f"{what} lies outside the volume of shape {shape} (input voxel indices, i.e. 0..{[s - 1 for s in shape]})"
        )


def build_pixel_set(spec: str, volume: Volume, grid: ModelInput | NNUNetInput) -> tuple[PixelSet, str]:
    """The pixel set of ``--pixels`` on the model grid, and its replayable definition."""
    text = spec.strip()
    if text.lower().startswith("mask:"):
        mask, definition = load_reference(text[5:], volume)
        return Mask(grid.mask_to_model(mask), label=f"mask:{definition}"), f"mask:{definition}"
    pixel_set = parse_pixel_set(text)
    if isinstance(pixel_set, Voxel):
        _check_inside(volume, pixel_set.coords, f"voxel {pixel_set.coords}")
        return Voxel(grid.voxel_to_model(pixel_set.coords)), pixel_set.describe()
    if isinstance(pixel_set, Box):
        _check_inside(volume, pixel_set.start, f"box start {pixel_set.start}")
        _check_inside(volume, pixel_set.stop, f"box stop {pixel_set.stop}", upper=True)
        lo, hi = grid.box_to_model(pixel_set.start, pixel_set.stop)
        return Box(lo, hi), pixel_set.describe()
    return pixel_set, pixel_set.describe()


def in_input_coordinates(definition: str) -> bool:
    """Whether a pixel-set definition was given in input voxel indices."""
    return definition.startswith(("voxel", "box", "mask"))


def load_reference(spec: str | Path, volume: Volume, *, allow_empty: bool = False) -> tuple[np.ndarray, str]:
    """A mask file ``FILE[:LABEL]`` on ``volume``'s voxel grid (shape and affine checked) and its definition.

    Without a label every non-zero voxel is in the mask; with one, the voxels of that value.
    A DICOM SEG (a ``.dcm`` file or a folder holding one) is read by
    :func:`medcam.volumes.dicom_seg.read_dicom_seg`; its ``LABEL`` is a segment number or name.
    An empty mask is refused unless ``allow_empty`` (a ground truth may be empty, a pixel set not).
    """
    body, label = str(spec), None
    head, sep, tail = body.rpartition(":")
    seg = find_dicom_seg(Path(head)) if sep and head else None
    if sep and head and (re.fullmatch(r"-?\d+", tail) or seg is not None):
        body, label = head, int(tail) if re.fullmatch(r"-?\d+", tail) else tail  # a SEG's segment by name too
    else:
        seg = find_dicom_seg(Path(body))
    if seg is not None:  # a DICOM SEG file, or a folder holding one
        mask = read_dicom_seg(seg, volume, label, allow_empty=allow_empty)
    else:
        mask = _mask_file(Path(body), volume, label if isinstance(label, int) else None, allow_empty)
    return mask, body + (f":{label}" if label is not None else "")


def _mask_file(path: Path, volume: Volume, label: int | None, allow_empty: bool = False) -> np.ndarray:
    mask_volume = load_volume(path)
    if grid_difference(mask_volume.spatial_shape, mask_volume.affine, volume.spatial_shape, volume.affine):
        raise UserError(
            f"mask {path} has shape {mask_volume.spatial_shape} and orientation {axis_codes(mask_volume.affine)}, "
            f"but {volume.path.name} has shape {volume.spatial_shape} and orientation {axis_codes(volume.affine)} "
            "with another affine; give a mask on the input's voxel grid"
        )
    values = mask_volume.array[0]
    mask = np.abs(values - label) < 0.5 if label is not None else values > 0.5
    if not mask.any() and not allow_empty:
        what = f"label {label}" if label is not None else "non-zero voxels"
        found = sorted(int(v) for v in np.unique(np.rint(values)))[:10]
        raise UserError(f"mask {path} has no {what} (values present: {found}); pick another label")
    return mask
