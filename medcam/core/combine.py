"""Pure math that combines maps: percentile denoising, contribution weights, similarity fusion.

The steps of Fusion-CAM (Dekdegue et al. 2026) and Union-CAM (Hu et al. 2024) that
do not touch the model. Maps are ``(N, *spatial)``; statistics are per sample.
Formulas: docs/methods-region-fusion.md, "Fusion-CAM".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from medcam.errors import UserError


def percentile(values: Tensor, q: float, *, start_dim: int = 1) -> Tensor:
    """The ``q``-th percentile (0..100) over the dimensions from ``start_dim``, per leading index.

    Linear interpolation between order statistics, numpy's default. Returns a tensor
    shaped like ``values`` with the reduced dimensions kept as size 1.
    """
    if not 0.0 <= q <= 100.0:
        raise UserError(f"a percentile must be in [0, 100], got {q}")
    lead = values.shape[:start_dim]
    rows = values.reshape(*lead, -1).float()
    count = rows.shape[-1]
    position = q / 100.0 * (count - 1)
    lower = int(position)
    upper = min(lower + 1, count - 1)
    low = rows.kthvalue(lower + 1, dim=-1).values
    high = rows.kthvalue(upper + 1, dim=-1).values if upper != lower else low
    result = low + (high - low) * (position - lower)
    return result.reshape(*lead, *([1] * (values.ndim - start_dim))).to(values.dtype)


def denoise_below_percentile(maps: Tensor, theta: float) -> Tensor:
    """Fusion-CAM step 1: pixels below the ``theta``-th percentile of their map become 0.

    ``L_d(p) = L(p)`` if ``L(p) >= T_theta`` else 0, the threshold per sample.
    """
    return torch.where(maps >= percentile(maps, theta), maps, torch.zeros_like(maps))


def denoise_gradients(gradients: Tensor, q: float = 10.0, *, positive: bool = False) -> Tensor:
    """Union-CAM's gradient denoising: per channel, values below the ``q``-th percentile become 0.

    ``gradients`` is ``(N, K, *spatial)``; the percentile is taken over each channel's map
    (the paper's), or with ``positive=True`` over its positive values only. Union-CAM keeps
    only positive gradients afterwards, so when a channel's percentile is <= 0 (half its
    gradients negative, or mostly zeros: common) the paper's step removes nothing; the
    positive percentile always drops the weakest ``q`` % of the positive evidence.
    """
    if not positive:
        threshold = percentile(gradients, q, start_dim=2)
        return torch.where(gradients >= threshold, gradients, torch.zeros_like(gradients))
    rows = gradients.flatten(2).float()
    positives = torch.where(rows > 0, rows, torch.full_like(rows, float("nan")))
    threshold = torch.nanquantile(positives, q / 100.0, dim=-1, keepdim=True)  # NaN: no positive value
    kept = torch.where((rows > 0) & (rows >= threshold), rows, torch.zeros_like(rows))
    return kept.view_as(gradients).to(gradients.dtype)


def contribution_weights(*betas: Tensor) -> tuple[Tensor, ...]:
    """Clamp contribution scores at 0 and normalise them to sum 1 per sample.

    When every score of a sample is <= 0 each weight is ``1 / len(betas)`` (two maps:
    0.5 each). The clamp is medcam's deviation from the reference code, in which a
    negative beta flips its map's sign.
    """
    if not betas:
        raise ValueError("contribution_weights needs at least one score")
    stacked = torch.stack([b.float() for b in betas]).clamp_min(0)
    total = stacked.sum(dim=0, keepdim=True)
    equal = torch.full_like(stacked, 1.0 / len(betas))
    weights = torch.where(total > 0, stacked / torch.where(total > 0, total, torch.ones_like(total)), equal)
    return tuple(weights.unbind(0))


def per_sample(weights: Tensor, like: Tensor) -> Tensor:
    """Per-sample scalars ``(N,)`` shaped to broadcast against maps ``(N, *spatial)``."""
    return weights.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def similarity_fusion(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Fusion-CAM step 5: pixel-wise agreement ``S`` and the similarity-aware fusion.

    ``S = clip(1 - |L1 - L2|, 0, 1)``; fused ``= S max(L1, L2) + (1 - S)(L1 + L2) / 2``
    (not normalised). Returns ``(fused, S)``.
    """
    return _blockwise(first, second, _similarity_block)


def _similarity_block(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    agreement = _agreement(first, second)
    fused = torch.maximum(first, second).mul_(agreement)
    mean = torch.add(first, second).div_(2)
    fused.add_(mean.mul_(1 - agreement))
    return fused, agreement


def _agreement(first: Tensor, second: Tensor) -> Tensor:
    """``clip(1 - |L1 - L2|, 0, 1)``."""
    return torch.sub(first, second).abs_().neg_().add_(1).clamp_(0, 1)


# elements per block of a fusion: its temporaries stay a few MB on a whole CT volume (200 MB a map)
FUSION_BLOCK = 1 << 22


def _blockwise(
    first: Tensor, second: Tensor, fuse: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """``fuse`` (elementwise) over blocks of :data:`FUSION_BLOCK` elements: the same values, two outputs of memory."""
    if first.numel() <= FUSION_BLOCK or first.shape != second.shape:
        return fuse(first, second)
    fused, agreement = torch.empty_like(first), torch.empty_like(first)
    flat = (first.reshape(-1), second.reshape(-1), fused.view(-1), agreement.view(-1))
    for start in range(0, first.numel(), FUSION_BLOCK):
        block = slice(start, start + FUSION_BLOCK)
        flat[2][block], flat[3][block] = fuse(flat[0][block], flat[1][block])
    return fused, agreement


def paper_fusion(
    denoised: Tensor, region: Tensor, beta_d: Tensor, beta_r: Tensor, beta_gr: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Fusion-CAM exactly as Eqs. 3-6 of the paper, with raw contribution scores.

    ``L_gr = b_d L_d + b_r L_r`` (Eq. 3, no normalisation); ``L1 = b_gr L_gr``,
    ``L2 = b_r L_r`` (Eq. 4); ``S = 1 - |L1 - L2|`` (Eq. 5, no clip);
    ``out = S max(L1, L2) + (1 - S)(L1 + L2) / 2`` (Eq. 6). ``beta_gr`` is the score of
    ``L_gr``, which needs the model: call once without it to get ``L_gr``, then again.
    Returns ``(out, S, L_gr)``; ``out`` and ``S`` are ``None``-free only when ``beta_gr`` is given.
    """
    combined = per_sample(beta_d, denoised) * denoised + per_sample(beta_r, region) * region
    if beta_gr is None:
        return combined, torch.empty(0), torch.empty(0)
    first = per_sample(beta_gr, combined) * combined
    second = per_sample(beta_r, region) * region
    agreement = 1 - (first - second).abs()
    fused = agreement * torch.maximum(first, second) + (1 - agreement) * (first + second) / 2
    return combined, fused, agreement


def agreement_fusion(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """medcam's segmentation fusion: ``S max(L1, L2) + (1 - S) min(L1, L2)`` on the union of supports.

    Where the maps agree (``S = 1 - |L1 - L2|`` near 1) it keeps their common value, as
    the paper does; where they disagree it keeps the lower one, so evidence only one
    paradigm shows (a diffuse region map over healthy tissue) is suppressed instead of
    kept at half strength (the paper's mean is >= the mean of its two maps everywhere).
    ``S`` is returned as 0 where neither map has support (both 0), where agreement is
    trivial. Returns ``(fused, S)``.
    """
    return _blockwise(first, second, _agreement_block)


def _agreement_block(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    agreement = _agreement(first, second)
    fused = torch.maximum(first, second).mul_(agreement)
    fused.add_(torch.minimum(first, second).mul_(1 - agreement))
    return fused, agreement.masked_fill_(~((first > 0) | (second > 0)), 0.0)
