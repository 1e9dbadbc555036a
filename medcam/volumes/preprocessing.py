"""From a :class:`Volume` to the model's input grid and back, with MONAI's invertible transforms.

Forward: channel conversion -> ``Orientation`` -> ``Spacing`` -> ``Resize`` (2D) ->
intensity window (``ScaleIntensityRange``) -> ``NormalizeIntensity``, as the
checkpoint's :class:`~medcam.models.checkpoint.Preprocessing` says. Only the spatial
transforms matter for the way back: maps and labels computed on the model grid are
returned to the ORIGINAL voxel grid with MONAI's inverse of exactly those transforms
(bilinear for maps, nearest for labels), so the outputs never resample the user's
grid. Coordinates the user gives in input voxel indices (voxel, box, mask file) are
carried to the model grid through the same affines.
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
from medcam.volumes.geometry import index_to_index
from medcam.volumes.io import Volume

logger = logging.getLogger(__name__)

Interpolation = Literal["bilinear", "nearest"]
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_LUMINANCE = (0.299, 0.587, 0.114)


@dataclass(frozen=True, eq=False)
class ModelInput:
    """A volume on the model's grid, with what is needed to go back.

    ``image``: ``(1, C, *grid)`` float32. ``affine``: the model grid's RAS affine.
    ``squeezed``: the singleton axis dropped to feed a 3D file to a 2D model.
    """

    image: Tensor
    affine: np.ndarray
    source_shape: tuple[int, ...]
    source_affine: np.ndarray
    squeezed: int | None
    _spatial: Any
    _applied: list[Any]

    grid: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.grid:
            object.__setattr__(self, "grid", tuple(int(s) for s in self.image.shape[2:]))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Source spatial shape as the model sees it (without a squeezed axis)."""
        if self.squeezed is None:
            return self.source_shape
        return tuple(s for a, s in enumerate(self.source_shape) if a != self.squeezed)

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
                out = self._spatial.inverse(meta)
            out = out.as_tensor() if isinstance(out, MetaTensor) else out
        array = out.numpy()
        if tuple(array.shape[1:]) != self.spatial_shape:  # pragma: no cover - MONAI inverts to the source shape
            raise RuntimeError(f"inverse transform gave {array.shape[1:]}, expected {self.spatial_shape}")
        if self.squeezed is not None:
            array = np.expand_dims(array, 1 + self.squeezed)
        return array

    def _model_index(self, index: Sequence[float] | np.ndarray) -> np.ndarray:
        mapping = index_to_index(self.source_affine, self.affine)
        full = np.zeros(4)
        full[3] = 1.0
        kept = [a for a in range(len(self.source_shape)) if a != self.squeezed]
        for slot, axis in enumerate(kept):
            full[slot] = float(index[axis])
        return (mapping @ full)[: len(kept)]

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

        values = np.asarray(mask, dtype=np.float32)
        if self.squeezed is not None:
            values = np.squeeze(values, axis=self.squeezed)
        if self._spatial is None:
            return torch.from_numpy(values > 0.5)
        meta = MetaTensor(torch.from_numpy(values)[None], affine=torch.as_tensor(self.source_affine))
        with torch.no_grad():
            moved = self._spatial(meta)
        fraction = moved.as_tensor()[0] if isinstance(moved, MetaTensor) else moved[0]
        inside = fraction >= 0.5
        if not bool(inside.any()):
            inside = fraction > 1e-6
        return inside


def _plain(t: Tensor) -> Tensor:
    """A plain tensor: MONAI's MetaTensor would carry its metadata into every result."""
    from monai.data import MetaTensor

    return t.as_tensor() if isinstance(t, MetaTensor) else t


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


def _fit_dims(volume: Volume, spatial_dims: int) -> tuple[np.ndarray, int | None]:
    array = volume.array
    if volume.spatial_dims == spatial_dims:
        return array, None
    if volume.spatial_dims == 3 and spatial_dims == 2:
        singletons = [a for a, s in enumerate(volume.spatial_shape) if s == 1]
        if len(singletons) == 1:
            return np.squeeze(array, axis=1 + singletons[0]), singletons[0]
        raise UserError(
            f"the model is 2D but {volume.path} is a 3D volume of shape {volume.spatial_shape}; "
            "give a 2D image (--image) or a single slice"
        )
    raise UserError(
        f"the model is {spatial_dims}D but {volume.path} is {volume.spatial_dims}D "
        f"(shape {volume.spatial_shape}); give a {spatial_dims}D image"
    )


def prepare(volume: Volume, pre: Preprocessing, *, spatial_dims: int, in_channels: int) -> ModelInput:
    """Put ``volume`` on the model grid as the checkpoint's preprocessing says."""
    from monai.data import MetaTensor
    from monai.transforms import Compose, NormalizeIntensity, Orientation, Resize, ScaleIntensityRange, Spacing

    array, squeezed = _fit_dims(volume, spatial_dims)
    array = _channels(array, in_channels, volume.path)
    spatial: list[Any] = []
    if pre.orientation:
        if len(pre.orientation) != spatial_dims:
            raise UserError(f"checkpoint orientation {pre.orientation!r} does not fit a {spatial_dims}D model")
        spatial.append(Orientation(axcodes=pre.orientation, labels=_RAS_LABELS))
    if pre.spacing:
        if len(pre.spacing) != spatial_dims:
            raise UserError(f"checkpoint spacing {pre.spacing} does not fit a {spatial_dims}D model")
        spatial.append(Spacing(pixdim=tuple(pre.spacing), mode="bilinear", dtype=np.float32))
    if pre.size:
        if len(pre.size) != spatial_dims:
            raise UserError(f"checkpoint size {pre.size} does not fit a {spatial_dims}D model")
        spatial.append(Resize(spatial_size=tuple(pre.size), mode="bilinear"))
    source_affine = np.asarray(volume.affine, dtype=float)
    if squeezed is not None:
        keep = [a for a in range(3) if a != squeezed]
        reduced = np.eye(4)
        reduced[:3, :2] = source_affine[:3, keep]
        reduced[:3, 3] = source_affine[:3, 3]
        source_affine = reduced
    meta = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), affine=torch.as_tensor(source_affine)
    )
    compose = Compose(spatial) if spatial else None
    with torch.no_grad():
        moved = compose(meta) if compose is not None else meta
    applied = copy.deepcopy(moved.applied_operations) if compose is not None else []
    affine = moved.affine.detach().cpu().numpy().astype(float)
    image = moved.as_tensor().float()
    if pre.a_min is not None:
        a_max = pre.a_max if pre.a_max is not None else float(image.max())
        image = ScaleIntensityRange(pre.a_min, a_max, pre.b_min, pre.b_max, clip=pre.clip)(image)
    if pre.mean is not None:
        std = pre.std if pre.std is not None else tuple(1.0 for _ in pre.mean)
        image = NormalizeIntensity(subtrahend=list(pre.mean), divisor=list(std), channel_wise=True)(image)
    image = _plain(torch.as_tensor(image, dtype=torch.float32)).contiguous()
    logger.info("model grid %s (source %s)", tuple(image.shape[1:]), volume.spatial_shape)
    return ModelInput(
        image=image[None],
        affine=affine,
        source_shape=volume.spatial_shape,
        source_affine=np.asarray(volume.affine, dtype=float) if squeezed is None else source_affine,
        squeezed=squeezed,
        _spatial=compose,
        _applied=applied,
    )
