"""From an image to the model's input grid and back, with the checkpoint's own MONAI transforms.

Forward, three steps:

1. the network's axis order (:attr:`Volume.network_axes`): a picture indexed (x, y) =
   (column, row) is given to the network as (row, column), as training did. The swap is
   geometry: the array's axes are permuted and its affine's columns with them
   (:func:`~medcam.volumes.geometry.reorder_axes`), so every pixel keeps its world
   position and everything mapped through the affines lands on the right pixel. A 3D
   file with one singleton axis fed to a 2D model drops that axis the same way.
2. channels: a picture is read by the training reader
   (:func:`medcam.data.images.read_image`, grey for one-channel models, RGB for
   three-channel ones), so the conversion is the one the network was trained with;
   other files convert colour to grey by luminance or replicate grey to RGB.
3. :func:`medcam.data.transforms.preprocessing_transforms`, the ONLY implementation of
   the checkpoint's :class:`~medcam.models.checkpoint.Preprocessing`, which training and
   validation run: orientation -> spacing -> intensity window -> 2D resize -> mean/std.

Back: maps and labels computed on the model grid are returned to the ORIGINAL voxel
grid with MONAI's inverse of the invertible (spatial) steps of that same list (bilinear
for maps, nearest for labels), then the axes are put back in file order, so the outputs
never resample the user's grid. Coordinates the user gives in input voxel indices (voxel,
box, mask) are carried to the model grid through the affines.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from medcam.errors import UserError
from medcam.models.checkpoint import Preprocessing
from medcam.volumes.geometry import reorder_axes
from medcam.volumes.io import Volume, VolumeError

logger = logging.getLogger(__name__)

Interpolation = Literal["bilinear", "nearest"]
_LUMINANCE = (0.299, 0.587, 0.114)


@dataclass(frozen=True, eq=False)
class ModelInput:
    """An image on the model's grid, with what is needed to go back.

    ``image``: ``(1, C, *grid)`` float32. ``affine``: the model grid's RAS affine.
    ``source_shape``/``source_affine``: the input's grid (file index order, 4x4 affine).
    ``axes``: the input's index axes in the order the network sees them; an input axis
    missing from it is the singleton axis dropped to feed a 3D file to a 2D model.
    """

    image: Tensor
    affine: np.ndarray
    source_shape: tuple[int, ...]
    source_affine: np.ndarray
    axes: tuple[int, ...]
    _spatial: Any
    _applied: list[Any]

    grid: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.grid:
            object.__setattr__(self, "grid", tuple(int(s) for s in self.image.shape[2:]))

    @property
    def squeezed(self) -> int | None:
        """The input axis dropped for a 2D model, if any."""
        rest = [a for a in range(len(self.source_shape)) if a not in self.axes]
        return rest[0] if rest else None

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """The input's spatial shape in the network's axis order (before resampling)."""
        return tuple(self.source_shape[a] for a in self.axes)

    def without_image(self) -> ModelInput:
        """The same grid without its image tensor (frees memory once the model has run)."""
        return replace(self, image=self.image.new_empty((0,)))

    def to_source(self, data: Tensor, *, mode: Interpolation = "bilinear") -> np.ndarray:
        """``(K, *grid)`` on the model grid -> ``(K, *source spatial)`` on the input's own grid."""
        from monai.data import MetaTensor
        from monai.transforms.utils import convert_applied_interp_mode

        data = _plain(data).detach().to("cpu", torch.float32)
        if self._spatial is None:
            out = data
        else:
            applied = copy.deepcopy(self._applied)
            if mode == "nearest":
                applied = convert_applied_interp_mode(applied, mode="nearest", align_corners=None)
            meta = MetaTensor(data, affine=torch.as_tensor(self.affine))
            meta.applied_operations = applied
            with torch.no_grad():
                out = self._spatial.inverse({"image": meta})["image"]
            out = out.as_tensor() if isinstance(out, MetaTensor) else out
        array = out.numpy()
        if tuple(array.shape[1:]) != self.frame_shape:  # pragma: no cover - MONAI inverts to the source shape
            raise RuntimeError(f"inverse transform gave {array.shape[1:]}, expected {self.frame_shape}")
        # frame axis f holds input axis axes[f]: put the input's axes back in file order
        array = np.transpose(array, (0, *(1 + int(f) for f in np.argsort(self.axes))))
        if self.squeezed is not None:
            array = np.expand_dims(array, 1 + self.squeezed)
        return np.ascontiguousarray(array)

    def _model_index(self, index: Sequence[float] | np.ndarray) -> np.ndarray:
        """Input voxel index -> (fractional) model-grid index, through the two affines."""
        point = np.zeros(4)
        point[: len(index)] = [float(v) for v in index]
        point[3] = 1.0
        return (np.linalg.inv(self.affine) @ self.source_affine @ point)[: len(self.axes)]

    def voxel_to_model(self, index: Sequence[int]) -> tuple[int, ...]:
        """The model-grid voxel containing the centre of input voxel ``index``."""
        point = np.rint(self._model_index(index)).astype(int)
        return tuple(int(np.clip(p, 0, s - 1)) for p, s in zip(point, self.grid, strict=True))

    def box_to_model(self, start: Sequence[int], stop: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The model-grid box covering the input box ``start <= p < stop`` (voxel edges mapped)."""
        corners = np.array(np.meshgrid(*[(a - 0.5, b - 0.5) for a, b in zip(start, stop, strict=True)], indexing="ij"))
        corners = corners.reshape(len(start), -1).T
        mapped = np.array([self._model_index(c) for c in corners])
        lo = np.floor(mapped.min(axis=0) + 0.5).astype(int)
        hi = np.ceil(mapped.max(axis=0) + 0.5).astype(int)
        lo = np.clip(lo, 0, np.array(self.grid) - 1)
        hi = np.clip(np.maximum(hi, lo + 1), 1, np.array(self.grid))
        return tuple(int(v) for v in lo), tuple(int(v) for v in hi)

    def mask_to_model(self, mask: np.ndarray) -> Tensor:
        """A boolean mask on the input grid -> the model grid (voxels at least half inside).

        A structure thinner than a model voxel keeps the model voxels it touches.
        """
        from monai.data import MetaTensor

        values = _to_frame(np.asarray(mask, dtype=np.float32)[None], self.axes)[0]
        if self._spatial is None:
            return torch.from_numpy(values > 0.5)
        frame_affine = _frame_affine(self.source_affine, self.axes)
        meta = MetaTensor(torch.from_numpy(values)[None], affine=torch.as_tensor(frame_affine))
        with torch.no_grad():
            moved = self._spatial({"image": meta})["image"]
        fraction = moved.as_tensor()[0] if isinstance(moved, MetaTensor) else moved[0]
        inside = fraction >= 0.5
        if not bool(inside.any()):
            inside = fraction > 1e-6
        return inside


def _plain(t: Tensor) -> Tensor:
    """A plain tensor: MONAI's MetaTensor would carry its metadata into every result."""
    from monai.data import MetaTensor

    return t.as_tensor() if isinstance(t, MetaTensor) else t


def _affine4(affine: np.ndarray) -> np.ndarray:
    """A 2D ``3x3`` affine (as 2D training records carry) as the 4x4 of the z = 0 plane."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape == (4, 4):
        return affine
    if affine.shape != (3, 3):
        raise ValueError(f"an affine must be 3x3 (2D) or 4x4, got {affine.shape}")
    full = np.eye(4)
    full[:2, :2] = affine[:2, :2]
    full[:2, 3] = affine[:2, 2]
    return full


def _full_order(axes: Sequence[int]) -> list[int]:
    """``axes`` followed by the remaining index axes of a 4x4 affine (dropped or placeholder)."""
    return [*axes, *(a for a in range(3) if a not in axes)]


def _frame_affine(source_affine: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    return reorder_axes(source_affine, _full_order(axes))


def _to_frame(array: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """``(C, *source)`` -> ``(C, *source[axes])``: axes reordered, a dropped axis (size 1) removed."""
    order = [a for a in _full_order(axes) if a < array.ndim - 1]
    moved = np.transpose(array, (0, *(1 + a for a in order)))
    return np.ascontiguousarray(moved.reshape(array.shape[0], *(array.shape[1 + a] for a in axes)))


def _channels(array: np.ndarray, wanted: int, path: Any) -> np.ndarray:
    have = array.shape[0]
    if have == wanted:
        return array
    if have == 3 and wanted == 1:
        weights = np.asarray(_LUMINANCE, dtype=np.float32).reshape(3, *([1] * (array.ndim - 1)))
        return (array * weights).sum(axis=0, keepdims=True)
    if have == 1 and wanted == 3:
        return np.repeat(array, 3, axis=0)
    raise UserError(f"{path} has {have} channel(s) but the model expects {wanted}; give an image with {wanted}")


def network_axes(volume: Volume, spatial_dims: int) -> tuple[int, ...]:
    """The input axes a ``spatial_dims``-D model sees, in its order (see :attr:`Volume.network_axes`)."""
    if volume.spatial_dims == spatial_dims:
        return volume.network_axes
    if volume.spatial_dims == 3 and spatial_dims == 2:
        singletons = [a for a, s in enumerate(volume.spatial_shape) if s == 1]
        if len(singletons) == 1:
            return tuple(a for a in range(3) if a != singletons[0])
        raise UserError(
            f"the model is 2D but {volume.path} is a 3D volume of shape {volume.spatial_shape}; "
            "give a 2D image (--image) or a single slice"
        )
    raise UserError(
        f"the model is {spatial_dims}D but {volume.path} is {volume.spatial_dims}D "
        f"(shape {volume.spatial_shape}); give a {spatial_dims}D image"
    )


def _picture(volume: Volume, in_channels: int) -> np.ndarray:
    """A picture's pixels ``(C, rows, columns)`` read exactly as the training readers read them."""
    from medcam.data.images import read_image

    if in_channels not in (1, 3):
        raise UserError(
            f"{volume.path} is a picture with {volume.channels} channel(s) but the model expects {in_channels}; "
            "pictures feed one-channel (grey) or three-channel (RGB) models"
        )
    array = read_image(volume.path, "L" if in_channels == 1 else "RGB")
    expected = tuple(volume.spatial_shape[a] for a in volume.network_axes)
    if tuple(array.shape[1:]) != expected:
        raise VolumeError(f"{volume.path} changed while it was read ({array.shape[1:]} pixels, then {expected})")
    return array


def prepare(volume: Volume, pre: Preprocessing, *, spatial_dims: int, in_channels: int) -> ModelInput:
    """Put ``volume`` on the model grid exactly as training put its images there."""
    axes = network_axes(volume, spatial_dims)
    if volume.format == "image":
        array = _picture(volume, in_channels)
    else:
        array = _channels(_to_frame(volume.array, axes), in_channels, volume.path)
    return _model_input(array, volume.affine, volume.spatial_shape, axes, pre, spatial_dims)


def prepare_array(array: np.ndarray, affine: np.ndarray, pre: Preprocessing, *, spatial_dims: int) -> ModelInput:
    """Put ``array`` ``(C, *spatial)``, already in the network's axis order, on the model grid.

    ``affine``: its voxel -> RAS affine (4x4, or 3x3 for 2D as training records carry).
    """
    if array.ndim != spatial_dims + 1:
        raise UserError(f"image shape {array.shape}: the model expects (channels, {spatial_dims} spatial dims)")
    axes = tuple(range(spatial_dims))
    shape = tuple(int(s) for s in array.shape[1:])
    return _model_input(array, affine, shape, axes, pre, spatial_dims)


def _model_input(
    frame: np.ndarray,
    affine: np.ndarray,
    source_shape: tuple[int, ...],
    axes: tuple[int, ...],
    pre: Preprocessing,
    spatial_dims: int,
) -> ModelInput:
    from monai.data import MetaTensor
    from monai.transforms import Compose, InvertibleTransform

    from medcam.data.transforms import preprocessing_transforms

    source_affine = _affine4(affine)
    transforms = preprocessing_transforms(pre, spatial_dims, keys=("image",), label_key=None)
    # the spatial steps are the invertible ones (the intensity steps change values, not the grid)
    spatial = [t for t in transforms if isinstance(t, InvertibleTransform)]
    meta = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)),
        affine=torch.as_tensor(_frame_affine(source_affine, axes)),
    )
    with torch.no_grad():
        moved = Compose(transforms)({"image": meta})["image"] if transforms else meta
    applied = copy.deepcopy(moved.applied_operations) if spatial else []
    image = _plain(torch.as_tensor(moved, dtype=torch.float32)).contiguous()
    logger.info("model grid %s (source %s)", tuple(image.shape[1:]), source_shape)
    return ModelInput(
        image=image[None],
        affine=moved.affine.detach().cpu().numpy().astype(float),
        source_shape=source_shape,
        source_affine=source_affine,
        axes=axes,
        _spatial=Compose(spatial) if spatial else None,
        _applied=applied,
    )
