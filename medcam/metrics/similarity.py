"""How alike two maps are: rank correlation, structural similarity, top-k overlap.

Each function compares maps ``a`` and ``b`` of shape ``(N, *spatial)`` sample by
sample and returns ``(N,)`` float64 values; 1, 2 and 3 spatial dimensions alike.
Undefined correlations (a constant map) count as 0, as the RobustCAM stability
metrics do, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medcam.core.agreement import _top_count, average_ranks, pearson_rows, sort_keys, sort_rows
from medcam.errors import UserError


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise UserError(f"maps to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim < 2:
        raise UserError(f"maps must be shaped (N, *spatial), got {tuple(a.shape)}")
    return a.detach().double().flatten(1), b.detach().to(a.device).double().flatten(1)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per sample; 0 when either map is constant."""
    return pearson_rows(*_pair(a, b)).cpu()


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per sample (ties share average ranks); 0 when either map is constant."""
    a, b = _pair(a, b)
    return pearson_rows(average_ranks(a), average_ranks(b)).cpu()


def top_k_mask(maps: Tensor, fraction: float = 0.1) -> Tensor:
    """The ``ceil(fraction * P)`` highest pixels of each map (ties broken by position), as a mask."""
    flat = maps.detach().flatten(1)
    k = _top_count(fraction, flat.shape[1])
    order = sort_rows(sort_keys(flat), descending=True)[1][:, :k]  # highest first, ties by position
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask.view_as(maps)


def top_k_iou(a: Tensor, b: Tensor, fraction: float = 0.1) -> Tensor:
    """IoU of the top ``fraction`` pixels of ``a`` with those of ``b``, per sample."""
    _pair(a, b)
    ta, tb = top_k_mask(a, fraction).flatten(1), top_k_mask(b.to(a.device), fraction).flatten(1)
    inter = (ta & tb).sum(dim=1).double()
    union = (ta | tb).sum(dim=1).double()
    return (inter / union).cpu()


def _gaussian_window(sigma: float, size: int, device: torch.device) -> Tensor:
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _filter(x: Tensor, kernels: list[Tensor]) -> Tensor:
    """Separable 'valid' filtering of ``(N, 1, *spatial)`` with one 1-D kernel per axis."""
    rank = x.ndim - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    for axis, kernel in enumerate(kernels):
        shape = [1] * rank
        shape[axis] = kernel.numel()
        x = conv(x, kernel.view(1, 1, *shape))
    return x


def ssim(a: Tensor, b: Tensor, *, data_range: float = 1.0, sigma: float = 1.5, window: int = 11) -> Tensor:
    """Mean structural similarity per sample (Wang et al. 2004), in 1, 2 or 3 D.

    Gaussian window (``sigma`` 1.5, ``window`` 11 pixels, shrunk to odd sizes that fit
    small maps), ``K1 = 0.01``, ``K2 = 0.03``, averaged over the positions where the
    window fits entirely ("valid"). Maps normalised to [0, 1] use ``data_range=1``.
    """
    if a.shape != b.shape:
        raise UserError(f"maps to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    rank = a.ndim - 1
    if not 1 <= rank <= 3:
        raise UserError(f"SSIM needs maps with 1, 2 or 3 spatial dimensions, got shape {tuple(a.shape)}")
    x = a.detach().double().unsqueeze(1)
    y = b.detach().to(a.device).double().unsqueeze(1)
    kernels = []
    for side in a.shape[1:]:
        size = min(window, side if side % 2 else side - 1)
        kernels.append(_gaussian_window(sigma, max(size, 1), x.device))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _filter(x, kernels), _filter(y, kernels)
    var_x = _filter(x * x, kernels) - mu_x**2
    var_y = _filter(y * y, kernels) - mu_y**2
    cov = _filter(x * y, kernels) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1).cpu()
