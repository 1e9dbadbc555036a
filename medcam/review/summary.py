"""``summary.json``: the replayable record of one explanation (schema version 1).

Built in one place from what the pipeline resolved: the method and its options, the
class, the pixel set M (and in which coordinates it was given), the layers, the input's
geometry, the model, the sliding windows, the prediction, timings, versions, seed and
device. Every value is made JSON-safe here (:func:`jsonable`).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from medcam.models.checkpoint import CheckpointMeta

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the result."""
    import monai
    import nibabel
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    from medcam.version import __version__

    return {
        "medcam": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "nibabel": nibabel.__version__,
        "SimpleITK": sitk.Version_VersionString(),
    }


def jsonable(value: Any) -> Any:
    """``value`` with tensors, numpy scalars and tuples turned into JSON types (anything else: its str)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def prediction_summary(labels: np.ndarray, segments: Mapping[int, str]) -> dict[str, Any]:
    """Voxels per predicted segment of a label map."""
    counts = np.bincount(labels.ravel().astype(np.intp, copy=False))
    named = {int(v): segments.get(int(v), str(int(v)) if v else "none") for v in np.flatnonzero(counts)}
    return {"voxels_per_label": {name: int(counts[v]) for v, name in named.items()}}


def class_scores(output: torch.Tensor, meta: CheckpointMeta) -> dict[str, Any]:
    """A classifier's class probabilities for the first sample."""
    probs = output.softmax(dim=1)[0] if meta.activation != "sigmoid" else output.sigmoid()[0]
    names = {v: k for k, v in meta.labels.items()}
    return {"probabilities": {names.get(i, str(i)): round(float(p), 6) for i, p in enumerate(probs.tolist())}}


def model_entry(
    meta: CheckpointMeta, *, path: str | None, sha256: str | None, grid: tuple[int, ...], orientation: str,
    affine: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """The ``model`` entry: where the checkpoint came from, what it is and the grid it saw."""
    return {
        "path": path,
        "sha256": sha256,
        "architecture": meta.architecture,
        "task": meta.task,
        "activation": meta.activation,
        "labels": dict(meta.labels),
        "regions": {k: list(v) for k, v in meta.regions.items()},
        "patch_size": list(meta.patch_size) if meta.patch_size else None,
        "model_grid": list(grid),
        "model_grid_orientation": orientation,
        "model_grid_affine": np.round(affine, 6).tolist(),
    }


def method_entry(method: Any, *, relu: bool, normalize: Any, stats: Any) -> dict[str, Any]:
    """The ``method`` entry: name, options (replayable), post-processing and what the method reported."""
    return {
        "name": method.name,
        "options": jsonable(method.options()),
        "relu": relu,
        "normalize": normalize,
        "stats": jsonable(stats),
    }


def pixel_set_entry(
    definition: str,
    *,
    coordinates: str,
    model_voxels: int | None,
    input_mask: np.ndarray | None,
    spacing: tuple[float, ...],
    spatial_dims: int,
) -> dict[str, Any]:
    """The ``pixel_set`` entry: M's definition, its coordinates and its size on both grids (ml in 3D)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    inside = int(input_mask.sum()) if input_mask is not None else None
    return {
        "definition": definition,
        "coordinates": coordinates,
        "voxels_model_grid": model_voxels,
        "voxels_input_grid": inside,
        "volume_ml": round(float(inside) * voxel_ml, 4) if inside is not None and spatial_dims == 3 else None,
    }
