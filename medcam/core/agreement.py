"""How alike maps are, rank by rank: the sort keys, ranks, top-k sets and correlations that RobustCAM's
statistics and the metrics share.

Pure tensor math on rows of ``(N, P)`` maps (float64 results, never NaN for a constant
map: an undefined correlation is 0). :mod:`medcam.metrics.similarity` and
:mod:`medcam.metrics.stability` build the user-facing metrics on these; RobustCAM
(:mod:`medcam.methods.robust`) computes its own stability statistics with them, so the
engine never imports the metrics layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from medcam.errors import UserError


def sort_keys(values: Tensor) -> Tensor:
    """Integers in the order of the float ``values`` (equal exactly where the values are equal).

    torch sorts integers with a radix sort, about 3x faster than floats on CPU (a 96^3
    map: 27 ms vs 79 ms), and the ranks and top-k sets of 3D maps are sorts of millions
    of values. The float's bits read as a signed integer already order non-negative
    values; negative ones get their magnitude bits inverted. float64 values that are
    float32 values (CAM maps) get the cheaper 32-bit keys. Needs finite values.
    """
    values = values + 0.0  # -0.0 -> +0.0, so the two zeros get one key
    if values.dtype == torch.float64 and not torch.equal(values.float().double(), values):
        bits, flip = values.view(torch.int64), 0x7FFFFFFFFFFFFFFF
    else:
        bits, flip = values.float().view(torch.int32), 0x7FFFFFFF
    return torch.where(bits < 0, bits ^ flip, bits)


def sort_rows(keys: Tensor, *, descending: bool = False) -> tuple[Tensor, Tensor]:
    """Stable sort of each row of ``(N, P)`` keys: (sorted, order); ties keep their positions.

    Row by row, because torch sorts one long 1-D tensor several times faster than the
    rows of a 2-D one along ``dim=1``. ``descending`` sorts the inverted keys.
    """
    keys = ~keys if descending else keys
    pairs = [row.sort(stable=True) for row in keys]
    return torch.stack([v for v, _ in pairs]), torch.stack([i for _, i in pairs])


def _mean_ranks(ordered: Tensor, order: Tensor) -> Tensor:
    """Ranks 1..P from a row-wise sort (sorted keys, order); equal keys share their average rank."""
    n, p = ordered.shape
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1 + torch.arange(n, device=ordered.device).unsqueeze(1) * p
    position = torch.arange(1, p + 1, device=ordered.device, dtype=torch.float64).expand(n, p)
    flat = group.flatten()
    sums = torch.zeros(n * p, dtype=torch.float64, device=ordered.device).index_add_(0, flat, position.flatten())
    counts = torch.zeros(n * p, dtype=torch.float64, device=ordered.device).index_add_(
        0, flat, torch.ones_like(position).flatten()
    )
    mean_rank = (sums / counts.clamp_min(1))[group]
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..P of each row of ``(N, P)``; tied values share their average rank."""
    return _mean_ranks(*sort_rows(sort_keys(values)))


def ranks_and_top(values: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """From ONE sort of each row of ``(N, P)``: descending ranks (1 = highest) and the top-k mask.

    The ranks are ``P + 1 -`` :func:`average_ranks`, so Spearman's rho between two sets of
    them is the same; the mask is :func:`top_k_mask`'s.
    """
    ordered, order = sort_rows(sort_keys(values), descending=True)
    k = _top_count(fraction, values.shape[1])
    top = torch.zeros_like(values, dtype=torch.bool)
    top.scatter_(1, order[:, :k], True)
    return _mean_ranks(ordered, order), top


def _top_count(fraction: float, pixels: int) -> int:
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"the top-k fraction must be in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * pixels))


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of two ``(N, P)`` float64 tensors; 0 when undefined."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norm > 0, (a * b).sum(dim=1) / norm.clamp_min(1e-300), torch.zeros_like(norm))


def mean_variance(std: Tensor, count: Tensor) -> Tensor:
    """Mean over pixels seen by at least one view of the variance ``std ** 2``, ``(N,)``.

    For fused results that already carry the per-pixel standard deviation and the
    number of valid views (RobustCAM's ``uncertainty`` and ``valid_views``).
    """
    seen = count > 0
    variance = std.double().pow(2) * seen
    return (variance.flatten(1).sum(dim=1) / seen.flatten(1).sum(dim=1).clamp_min(1)).cpu()


def view_agreement(
    views: Tensor, reference: Tensor, valid: Tensor | None = None, fraction: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Top-``fraction`` IoU and Spearman rho of each view ``(V, *spatial)`` with one ``reference``.

    Each view is compared over its own valid pixels. The reference is ranked once for
    all fully valid views (the common case: one sort of a 3D volume instead of V).
    Returns two ``(V,)`` float64 tensors; a view without valid pixels gets NaN and 0.
    """
    flat = views.detach().flatten(1)
    ref = reference.detach().to(flat.device).flatten().unsqueeze(0)
    mask = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.to(flat.device).bool().flatten(1)
    ious = torch.full((flat.shape[0],), math.nan, dtype=torch.float64)
    rhos = torch.zeros(flat.shape[0], dtype=torch.float64)

    def compare(rows: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        # one sort per map gives both its ranks and its top-k set
        ranks, top = ranks_and_top(rows, fraction)
        target_ranks, target_top = ranks_and_top(target, fraction)
        iou = (top & target_top).sum(1).double() / (top | target_top).sum(1).double()
        return iou.cpu(), pearson_rows(ranks, target_ranks.expand_as(ranks)).cpu()

    whole = mask.all(dim=1)
    if bool(whole.any()):
        ious[whole.cpu()], rhos[whole.cpu()] = compare(flat[whole], ref)
    for v in torch.nonzero(~whole & mask.any(dim=1)).flatten().tolist():
        seen = mask[v]
        ious[v : v + 1], rhos[v : v + 1] = compare(flat[v][seen].unsqueeze(0), ref[0][seen].unsqueeze(0))
    return ious, rhos
