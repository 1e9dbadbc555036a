"""MONAI dictionary transforms that feed dataset records to a network.

``preprocessing_transforms(pre)`` is the ONLY deterministic preprocessing used when
training and validating, and it is exactly what :class:`~medcam.models.checkpoint.Preprocessing`
describes (orientation, spacing, intensity window, 2D resize, mean/std). Inference and
``medcam explain`` can therefore rebuild and invert it from a checkpoint. Random crops
and augmentations come after it and exist only at training time.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
    Transform,
)

from medcam.data.base import RecordSource
from medcam.errors import UserError
from medcam.models.checkpoint import Preprocessing


class LoadRecordd(Transform):
    """Entry -> record of ``dataset``, with ``image`` and ``label`` as MONAI MetaTensors carrying the affine.

    ``dataset``: a reader, or any :class:`~medcam.data.base.RecordSource` wrapping one.

    Segmentation labels become int64 tensors with a channel axis; classification labels
    stay plain ints. Deterministic, so MONAI's CacheDataset caches its output.
    """

    def __init__(self, dataset: RecordSource) -> None:
        self.dataset = dataset

    def __call__(self, entry: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        record: dict[Hashable, Any] = dict(self.dataset.load(dict(entry)))  # type: ignore[arg-type]
        affine = torch.as_tensor(np.asarray(record.get("affine", np.eye(4)), dtype=np.float64))
        spatial = record["image"].ndim - 1
        if spatial == 2:
            affine = torch.eye(3, dtype=torch.float64)  # 2D images and slices live in their own pixel frame
        meta = {"case_id": record.get("case_id", ""), "spacing": record.get("spacing")}
        image = torch.as_tensor(record["image"], dtype=torch.float32)
        record["image"] = MetaTensor(image, affine=affine, meta=dict(meta))
        label = record.get("label")
        if isinstance(label, np.ndarray) and label.ndim == spatial + 1:
            # uint8 keeps cached label maps small; Spacingd later casts them to float32 anyway
            dtype = np.uint8 if label.size and label.min() >= 0 and label.max() < 256 else np.int64
            record["label"] = MetaTensor(torch.as_tensor(label.astype(dtype)), affine=affine.clone(), meta=dict(meta))
        record.pop("affine", None)
        # batches cannot collate None (e.g. the orientation of a photograph)
        return {k: v for k, v in record.items() if v is not None}


def preprocessing_transforms(
    pre: Preprocessing, spatial_dims: int, keys: Sequence[str] = ("image", "label"), label_key: str | None = "label"
) -> list[MapTransform]:
    """The deterministic transforms ``pre`` describes, in the order inference repeats them.

    ``spacing`` is in the axis order obtained after ``orientation`` (e.g. (slice, row,
    column) for "IPL"). Images are interpolated (bilinear), labels take nearest values.
    """
    keys = [k for k in keys]
    modes_interp = ["nearest" if k == label_key else "bilinear" for k in keys]
    out: list[MapTransform] = []
    if spatial_dims == 2 and (pre.orientation is not None or pre.spacing is not None):
        # 2D records live in their own pixel frame (identity affine, see LoadRecordd): a
        # reorientation or a spacing in "mm" would depend on which frame a caller passes
        raise UserError(
            f"preprocessing.orientation {pre.orientation!r} and spacing {pre.spacing} apply to 3D data only; "
            "2D images are read in their own pixel frame, so set both to null and use preprocessing.size"
        )
    if pre.orientation is not None:
        if spatial_dims != len(pre.orientation):
            raise UserError(
                f"preprocessing.orientation {pre.orientation!r} has {len(pre.orientation)} axes but the data is "
                f"{spatial_dims}D; use e.g. 'IPL' for 3D and null for 2D"
            )
        # labels stated so MONAI's changing default cannot change the meaning of the codes (nibabel's)
        out.append(Orientationd(keys=keys, axcodes=pre.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if pre.spacing is not None:
        if len(pre.spacing) != spatial_dims:
            raise UserError(f"preprocessing.spacing {pre.spacing} needs {spatial_dims} values for {spatial_dims}D data")
        out.append(Spacingd(keys=keys, pixdim=pre.spacing, mode=modes_interp, dtype=[np.float32] * len(keys)))
    if pre.a_min is not None:
        if pre.a_max is None or pre.a_max <= pre.a_min:
            raise UserError(f"preprocessing window [{pre.a_min}, {pre.a_max}] needs a_max > a_min")
        out.append(
            ScaleIntensityRanged(
                keys=["image"], a_min=pre.a_min, a_max=pre.a_max, b_min=pre.b_min, b_max=pre.b_max, clip=pre.clip
            )
        )
    if pre.size is not None:
        if len(pre.size) != spatial_dims:
            raise UserError(f"preprocessing.size {pre.size} needs {spatial_dims} values for {spatial_dims}D data")
        modes = ["nearest" if k == label_key else "bilinear" for k in keys]
        out.append(Resized(keys=keys, spatial_size=pre.size, mode=modes))
    if pre.mean is not None or pre.std is not None:
        if pre.mean is None or pre.std is None or len(pre.mean) != len(pre.std):
            raise UserError("preprocessing.mean and preprocessing.std must be given together, one value per channel")
        out.append(
            NormalizeIntensityd(
                keys=["image"], subtrahend=np.asarray(pre.mean), divisor=np.asarray(pre.std), channel_wise=True
            )
        )
    return out
