"""Stability of an explanation across views (RobustCAM's metrics): pure tensor functions.

Each function takes maps shaped ``(N, *spatial)`` and an optional boolean ``valid``
mask of the same shape (voxels to compare; warped-back views are unknown outside
their field of view) and returns one value per sample, ``(N,)`` float64.

These belong with the other metrics (``medcam.metrics``); they live here until that
package exists and are written to move there unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def _valid(maps: Tensor, valid: Tensor | None) -> Tensor:
    return torch.ones_like(maps, dtype=torch.bool) if valid is None else valid.bool()


def mean_variance(std: Tensor, count: Tensor) -> Tensor:
    """Mean over voxels seen by at least one view of the per-voxel variance (``std ** 2``)."""
    seen = count > 0
    variance = std.double().pow(2) * seen
    total = seen.flatten(1).sum(dim=1).clamp_min(1)
    return variance.flatten(1).sum(dim=1) / total


def _top_count(n: int, fraction: float) -> int:
    return max(1, round(fraction * n))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, tied values sharing their average rank (scipy's ``rankdata`` 'average').

    Ties are averaged, so the order the sort leaves them in does not matter and the
    faster unstable sort is exact.
    """
    order = np.argsort(values, kind="quicksort")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, values.size))
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(starts + (counts - 1) / 2, counts)
    return ranks


def _top(values: np.ndarray, fraction: float) -> np.ndarray:
    """The top ``k = max(1, round(fraction * n))`` voxels; ties at the threshold go to the lower index."""
    k = _top_count(values.size, fraction)
    threshold = np.partition(values, values.size - k)[values.size - k]
    top = values > threshold
    ties = np.flatnonzero(values == threshold)[: k - int(top.sum())]
    top[ties] = True
    return top


def _iou(top_a: np.ndarray, top_b: np.ndarray) -> float:
    both = int(np.count_nonzero(top_a & top_b))
    return both / (int(top_a.sum()) + int(top_b.sum()) - both)


def _rho(ranks_a: np.ndarray, ranks_b: np.ndarray) -> float:
    """Pearson correlation of ranks; 0 when undefined (a constant map, fewer than 2 voxels)."""
    if ranks_a.size < 2:
        return 0.0
    a, b = ranks_a - ranks_a.mean(), ranks_b - ranks_b.mean()
    # plain sums, not BLAS dot: BLAS threads spin against torch's own thread pool
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def _numpy(values: Tensor) -> np.ndarray:
    return values.detach().cpu().flatten().numpy()


def top_fraction_iou(a: Tensor, b: Tensor, valid: Tensor | None = None, fraction: float = 0.1) -> Tensor:
    """IoU of the top ``fraction`` of voxels of ``a`` and of ``b`` (within ``valid``), per sample.

    Both sets hold ``k = max(1, round(fraction * n))`` of the ``n`` valid voxels; values
    tied at the threshold go to the lower index. No valid voxel gives NaN.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    mask = _valid(a, valid)
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for n in range(a.shape[0]):
        keep = _numpy(mask[n])
        va, vb = _numpy(a[n])[keep], _numpy(b[n])[keep]
        out[n] = math.nan if va.size == 0 else _iou(_top(va, fraction), _top(vb, fraction))
    return out


def spearman(a: Tensor, b: Tensor, valid: Tensor | None = None) -> Tensor:
    """Spearman rank correlation of ``a`` and ``b`` over ``valid`` voxels, per sample.

    Undefined correlations (a constant map, fewer than two voxels) count as 0, as in the
    RobustCAM reference.
    """
    mask = _valid(a, valid)
    out = torch.zeros(a.shape[0], dtype=torch.float64)
    for n in range(a.shape[0]):
        keep = _numpy(mask[n])
        out[n] = _rho(_ranks(_numpy(a[n])[keep]), _ranks(_numpy(b[n])[keep]))
    return out


def view_agreement(
    views: Tensor, reference: Tensor, valid: Tensor | None = None, fraction: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Top-``fraction`` IoU and Spearman rho of each map ``(V, *spatial)`` with one ``reference``.

    The same values as :func:`top_fraction_iou` and :func:`spearman` per view (each over
    its own valid voxels), but the reference is ranked once for every fully valid view.
    Returns two ``(V,)`` float64 tensors; a view without valid voxels gets NaN and 0.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    mask = torch.ones_like(views, dtype=torch.bool) if valid is None else valid.bool()
    reference_values = _numpy(reference)
    whole: tuple[np.ndarray, np.ndarray] | None = None
    ious = torch.full((views.shape[0],), math.nan, dtype=torch.float64)
    rhos = torch.zeros(views.shape[0], dtype=torch.float64)
    for v in range(views.shape[0]):
        keep = _numpy(mask[v])
        values = _numpy(views[v])
        if keep.all():
            if whole is None:
                whole = _ranks(reference_values), _top(reference_values, fraction)
            ref_ranks, ref_top = whole
        elif keep.any():
            values = values[keep]
            ref_ranks, ref_top = _ranks(reference_values[keep]), _top(reference_values[keep], fraction)
        else:
            continue
        ious[v] = _iou(_top(values, fraction), ref_top)
        rhos[v] = _rho(_ranks(values), ref_ranks)
    return ious, rhos
