"""Voxel grids in world space: nibabel's RAS affines and ITK's LPS origin/spacing/direction.

medcam keeps every array in *file index order* (NIfTI/ITK index i, j[, k], i fastest
in the file), which is the order nibabel returns and the transpose of what
``SimpleITK.GetArrayFromImage`` returns. Geometry travels in two forms:

* ``affine``: 4x4, voxel index -> RAS+ millimetres (nibabel's convention);
* :class:`ItkGeometry`: origin, spacing and direction in LPS (ITK's and Slicer's).

For the same file the two agree up to the RAS/LPS sign flip of x and y; for a NIfTI
file whose qform and sform disagree they may not (nibabel prefers the sform, ITK
may take the qform), which is why both are kept: the Slicer-facing files use ITK's
reading, the rest nibabel's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# x and y change sign between RAS (nibabel) and LPS (ITK, DICOM, Slicer files)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class ItkGeometry:
    """Origin, spacing and direction (row-major, ``ndim x ndim``) in LPS millimetres."""

    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def ndim(self) -> int:
        return len(self.origin)

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 RAS affine of this geometry (2D geometries lie in the z = 0 plane)."""
        n = self.ndim
        lps = np.eye(4)
        direction = np.asarray(self.direction, dtype=float).reshape(n, n)
        lps[:n, :n] = direction * np.asarray(self.spacing, dtype=float)
        lps[:n, 3] = self.origin
        return LPS_TO_RAS @ lps

    @classmethod
    def from_affine(cls, affine: np.ndarray, ndim: int = 3) -> ItkGeometry:
        """The LPS geometry of a RAS affine (spacing = column norms, direction = unit columns)."""
        lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
        columns = lps[:ndim, :ndim]
        spacing = np.linalg.norm(columns, axis=0)
        direction = columns / np.where(spacing > 0, spacing, 1.0)
        return cls(
            origin=tuple(float(v) for v in lps[:ndim, 3]),
            spacing=tuple(float(v) for v in spacing),
            direction=tuple(float(v) for v in direction.ravel()),
        )

    def as_dict(self) -> dict[str, list[float]]:
        return {"origin": list(self.origin), "spacing": list(self.spacing), "direction": list(self.direction)}


def voxel_spacing(affine: np.ndarray, ndim: int = 3) -> tuple[float, ...]:
    """Voxel size in mm along each index axis (column norms of the affine)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :ndim], axis=0))


def axis_codes(affine: np.ndarray, ndim: int | None = None) -> str:
    """Orientation codes of the index axes, e.g. ``'IPL'`` for KiTS (nibabel's ``aff2axcodes``).

    ``ndim``: codes of the first ``ndim`` index axes only (``'LP'`` for a PNG), judged
    from their own columns, so a 2D grid's placeholder third axis cannot take a code.
    """
    import nibabel as nib

    affine = np.asarray(affine, dtype=float)
    if ndim is not None:
        columns = np.zeros((4, ndim + 1))
        columns[:3, :ndim] = affine[:3, :ndim]
        columns[:3, ndim] = affine[:3, 3]
        columns[3, ndim] = 1.0
        affine = columns
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def voxel_centres(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World (RAS) coordinates of every voxel centre, ``(prod(shape), 3)``, index order C."""
    grids = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    index = np.stack([g.ravel() for g in grids] + [np.zeros(grids[0].size)] * (3 - len(shape)), axis=1)
    return index @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def index_to_index(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 4x4 map from voxel indices of grid ``source`` to (fractional) indices of grid ``target``."""
    return np.linalg.inv(np.asarray(target, dtype=float)) @ np.asarray(source, dtype=float)


def reorder_axes(affine: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """The 4x4 affine of the same voxels indexed with the axes taken in ``order``.

    ``order`` is a permutation of ``0, 1, 2``: new index axis ``a`` is old axis
    ``order[a]``. Every voxel keeps its world position, so maps carried through the new
    grid land on the same points (e.g. a picture's ``(column, row)`` -> ``(row, column)``).
    """
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"axis order {tuple(order)} is not a permutation of (0, 1, 2)")
    return np.asarray(affine, dtype=float)[:, [*order, 3]]
