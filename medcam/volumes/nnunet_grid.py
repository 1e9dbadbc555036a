"""An image on an nnU-Net model's grid, prepared and exported with nnU-Net's own functions.

Forward, exactly as ``nnUNetv2_predict`` prepares a case: the plans' reader
(``image_reader_writer``) reads the channel files ``<case>_0000 .. _000N``, then the
configuration's preprocessor (``DefaultPreprocessor.run_case``) applies
``transpose_forward``, crops to the non-zero bounding box, normalises each channel with
its scheme and resamples to the configuration's spacing.

Back, as nnU-Net's export does: resample from the model grid to the cropped shape
(``resampling_fn_probabilities``; ``resampling_fn_seg`` for labels), put the crop back
into the full array, apply ``transpose_backward``. The prediction is made by nnU-Net's
``convert_predicted_logits_to_segmentation_with_correct_shape`` from the logits, as
``nnUNetv2_predict`` writes it. nnU-Net's readers hand arrays over in reversed index
order (SimpleITK's ``z, y, x``); medcam's volumes are in file index order, so the last
step reverses the axes, which is checked against medcam's own reading of the file.

:class:`NNUNetInput` has the interface of
:class:`~medcam.volumes.preprocessing.ModelInput` (``image``, ``affine``, ``grid``,
``to_source``, ``voxel_to_model``, ``box_to_model``, ``mask_to_model``,
``without_image``), so the explain pipeline uses either unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from medcam.errors import UserError
from medcam.volumes.io import Volume, strip_suffix

logger = logging.getLogger(__name__)

Interpolation = Literal["bilinear", "nearest"]
# readers whose arrays are the file's voxel array with the index axes reversed
REVERSING_READERS = ("SimpleITKIO", "NibabelIO")


def channel_files(path: Path, channels: int, file_ending: str) -> list[Path]:
    """The files of one case for a ``channels``-input model, nnU-Net's ``<case>_0000 .. _000N`` grouping.

    A file named ``<case>_0000<ending>`` brings its siblings ``_0001`` ... A one-channel
    model also takes a file without the suffix.
    """
    name = path.name
    if not name.endswith(file_ending):
        raise UserError(f"{path.name} does not end with {file_ending}, the file ending of this nnU-Net dataset")
    stem = name[: -len(file_ending)]
    match = re.fullmatch(r"(.+)_(\d{4})", stem)
    if match is None:
        if channels == 1:
            return [path]
        raise UserError(
            f"this nnU-Net model takes {channels} channels, given as <case>_0000{file_ending} .. "
            f"<case>_{channels - 1:04d}{file_ending}; pass the _0000 file of a case"
        )
    if int(match.group(2)) != 0:
        raise UserError(f"pass the case's first channel file {match.group(1)}_0000{file_ending}, not {name}")
    files = [path.with_name(f"{match.group(1)}_{c:04d}{file_ending}") for c in range(channels)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"this nnU-Net model takes {channels} channels; {', '.join(missing)} missing next to {name}")
    return files


@dataclass(frozen=True, eq=False)
class NNUNetInput:
    """A case on an nnU-Net configuration's grid, with nnU-Net's properties to export back.

    ``image``: ``(1, C, *grid)`` float32 after nnU-Net's preprocessing. ``affine``: the
    model grid's voxel -> RAS affine. ``properties``: what nnU-Net's preprocessor
    recorded (crop box, shapes, spacing, reader geometry).
    """

    image: Tensor
    affine: np.ndarray
    source_shape: tuple[int, ...]
    source_affine: np.ndarray
    properties: dict[str, Any]
    _source: Any  # medcam.models.nnunet.NNUNetSource
    grid: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.grid:
            object.__setattr__(self, "grid", tuple(int(s) for s in self.image.shape[2:]))

    def without_image(self) -> NNUNetInput:
        return replace(self, image=self.image.new_empty((0,)))

    # -- helpers ---------------------------------------------------------------------

    def _managers(self) -> tuple[Any, Any]:
        plans = self._source.plans_manager()
        return plans, plans.get_configuration(self._source.configuration)

    def _spacings(self, plans: Any, config: Any) -> tuple[list[float], list[float]]:
        """(model grid spacing, cropped grid spacing), both in transposed axis order."""
        original = [float(self.properties["spacing"][i]) for i in plans.transpose_forward]
        current = [float(s) for s in config.spacing]
        if len(current) < len(original):  # 2D configurations keep the first axis
            current = [original[0], *current]
        return current, original

    def _to_reader_order(self, array: np.ndarray) -> np.ndarray:
        """``(K, *file index order)`` <-> ``(K, *reader order)``: the spatial axes reversed."""
        return np.ascontiguousarray(np.transpose(array, (0, *range(array.ndim - 1, 0, -1))))

    # -- back to the input grid ------------------------------------------------------

    def _uncrop(self, data: np.ndarray, plans: Any) -> np.ndarray:
        full = np.zeros((data.shape[0], *self.properties["shape_before_cropping"]), dtype=data.dtype)
        box = tuple(slice(int(lo), int(hi)) for lo, hi in self.properties["bbox_used_for_cropping"])
        full[(slice(None), *box)] = data
        full = full.transpose([0, *[i + 1 for i in plans.transpose_backward]])
        return self._to_reader_order(full)

    def to_source(self, data: Tensor, *, mode: Interpolation = "bilinear") -> np.ndarray:
        """``(K, *grid)`` on the model grid -> ``(K, *input spatial)`` on the input's own voxel grid.

        Maps are resampled as nnU-Net resamples probabilities, labels as it resamples
        segmentations; outside nnU-Net's crop box (all-zero border) maps are 0.
        """
        plans, config = self._managers()
        current, original = self._spacings(plans, config)
        array = data.detach().to("cpu", torch.float32).numpy()
        target = tuple(int(s) for s in self.properties["shape_after_cropping_and_before_resampling"])
        if tuple(array.shape[1:]) != target:
            resample = config.resampling_fn_seg if mode == "nearest" else config.resampling_fn_probabilities
            array = np.asarray(resample(array, target, current, original), dtype=np.float32)
        return self._uncrop(array, plans)

    def segmentation_to_source(self, logits: Tensor) -> np.ndarray:
        """nnU-Net's own segmentation of ``logits`` ``(1, C, *grid)``, on the input grid (label values)."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        plans, config = self._managers()
        labels = plans.get_label_manager(self._source.dataset)
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits[0].detach().to("cpu", torch.float32), plans, config, labels, dict(self.properties)
        )
        return self._to_reader_order(np.asarray(seg)[None])[0]

    # -- input coordinates to the model grid -----------------------------------------

    def _model_index(self, index: Sequence[float] | np.ndarray) -> np.ndarray:
        point = np.ones(4)
        point[:3] = [float(v) for v in index]
        return (np.linalg.inv(self.affine) @ self.source_affine @ point)[:3]

    def voxel_to_model(self, index: Sequence[int]) -> tuple[int, ...]:
        point = np.rint(self._model_index(index)).astype(int)
        return tuple(int(np.clip(p, 0, s - 1)) for p, s in zip(point, self.grid, strict=True))

    def box_to_model(self, start: Sequence[int], stop: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        corners = np.array(np.meshgrid(*[(a - 0.5, b - 0.5) for a, b in zip(start, stop, strict=True)], indexing="ij"))
        mapped = np.array([self._model_index(c) for c in corners.reshape(len(start), -1).T])
        lo = np.clip(np.floor(mapped.min(axis=0) + 0.5).astype(int), 0, np.array(self.grid) - 1)
        hi = np.clip(np.maximum(np.ceil(mapped.max(axis=0) + 0.5).astype(int), lo + 1), 1, np.array(self.grid))
        return tuple(int(v) for v in lo), tuple(int(v) for v in hi)

    def mask_to_model(self, mask: np.ndarray) -> Tensor:
        """A boolean mask on the input grid -> the model grid, moved as nnU-Net moves the image."""
        plans, config = self._managers()
        current, original = self._spacings(plans, config)
        values = self._to_reader_order(np.asarray(mask, dtype=np.float32)[None])
        values = values.transpose([0, *[i + 1 for i in plans.transpose_forward]])
        box = tuple(slice(int(lo), int(hi)) for lo, hi in self.properties["bbox_used_for_cropping"])
        values = np.ascontiguousarray(values[(slice(None), *box)])
        if tuple(values.shape[1:]) != self.grid:
            values = np.asarray(config.resampling_fn_probabilities(values, self.grid, original, current))
        fraction = torch.from_numpy(np.asarray(values[0], dtype=np.float32))
        inside = fraction >= 0.5
        return inside if bool(inside.any()) else fraction > 1e-6


def _model_affine(properties: dict[str, Any], transpose_forward: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Model grid index -> file voxel index (4x4): resampling scale, crop offset, transpose, axis reversal.

    nnU-Net resamples with pixel centres as skimage's ``resize`` places them: index q of
    n_out maps to (q + 0.5) * n_in / n_out - 0.5 of n_in.
    """
    cropped = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    box = [int(lo) for lo, _ in properties["bbox_used_for_cropping"]]
    dims = len(grid)

    def to_file(q: np.ndarray) -> np.ndarray:
        transposed = [(q[a] + 0.5) * cropped[a] / grid[a] - 0.5 + box[a] for a in range(dims)]
        reader = np.zeros(dims)
        for a in range(dims):
            reader[transpose_forward[a]] = transposed[a]
        return reader[::-1]

    origin = to_file(np.zeros(dims))
    matrix = np.eye(4)
    for a in range(dims):
        unit = np.zeros(dims)
        unit[a] = 1.0
        matrix[:dims, a] = to_file(unit) - origin
    matrix[:dims, 3] = origin
    return matrix


def prepare_nnunet(volume: Volume, source: Any) -> NNUNetInput:
    """Preprocess ``volume``'s file(s) with nnU-Net's reader and preprocessor for ``source``'s configuration."""
    plans = source.plans_manager()
    config = plans.get_configuration(source.configuration)
    reader = plans.plans.get("image_reader_writer", "")
    if reader not in REVERSING_READERS:
        raise UserError(
            f"this nnU-Net model reads images with {reader}; medcam maps nnU-Net's arrays back to the input for "
            f"{', '.join(REVERSING_READERS)} (NIfTI, NRRD, MHA); convert the plans' reader or the images"
        )
    if volume.spatial_dims != 3:
        raise UserError(f"{volume.path} is {volume.spatial_dims}D; this nnU-Net model takes 3D volumes")
    channels = len(source.dataset.get("channel_names", source.dataset.get("modality", {})))
    ending = str(source.dataset.get("file_ending", ".nii.gz"))
    files = channel_files(Path(volume.path), channels, ending)
    # what DefaultPreprocessor.run_case does, with a look at the array between reading and preprocessing
    read, properties = plans.image_reader_writer_class().read_images([str(f) for f in files])
    first = np.asarray(read[0])
    step = max(1, round((first.size / 1e6) ** (1 / 3)))  # about a million voxels suffice to tell axis orders apart
    sample = (slice(None, None, step),) * first.ndim
    same = first.shape[::-1] == volume.spatial_shape and np.allclose(
        first.T[sample], volume.array[0][sample], atol=1e-4, rtol=1e-5
    )
    if not same:
        raise UserError(
            f"nnU-Net's reader {reader} and medcam read {volume.path.name} in different axis orders; "
            "medcam cannot map nnU-Net's grid back to this file"
        )
    preprocessor = config.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(read, None, properties, plans, config, source.dataset)
    grid = tuple(int(s) for s in data.shape[1:])
    to_file = _model_affine(properties, plans.transpose_forward, grid)
    source_affine = np.asarray(volume.affine, dtype=float)
    image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    logger.info("nnU-Net grid %s (input %s, crop %s)", grid, volume.spatial_shape, properties["bbox_used_for_cropping"])
    return NNUNetInput(
        image=image,
        affine=source_affine @ to_file,
        source_shape=volume.spatial_shape,
        source_affine=source_affine,
        properties=properties,
        _source=source,
    )


def case_name(path: Path, file_ending: str) -> str:
    """The case identifier of a channel file (``case_0000.nii.gz`` -> ``case``)."""
    stem = path.name[: -len(file_ending)] if path.name.endswith(file_ending) else strip_suffix(path.name)
    return re.sub(r"_\d{4}$", "", stem)
