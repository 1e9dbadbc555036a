"""Perturbed inputs for region methods: blur, baseline images, masked inputs, batching.

Pure tensor math, no model access. Inputs are ``(N, C, *spatial)`` in 1, 2 or 3
spatial dimensions; masks are ``(Q, *spatial)`` with values in [0, 1].

A masked input keeps the input where the mask is 1 and shows the baseline where it
is 0: ``base + m * (x - base)``. With the all-zeros baseline this is ``x * m``
(Score-CAM, the Fusion-CAM paper); with ``blur(x)`` it is Group-CAM's input.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medcam.errors import UserError

Baseline = Literal["zeros", "min", "mean", "blur", "groupcam-blur"]
BASELINES: tuple[str, ...] = ("zeros", "min", "mean", "blur", "groupcam-blur")

# the light "blur" baseline: Petsiuk et al. blur 224-pixel images with sigma 5 (kernel 11)
LIGHT_BLUR_SIGMA = 5.0
LIGHT_BLUR_REFERENCE = 224.0

# Group-CAM's blur (Zhang et al. 2021): kernel 51, sigma 50 for a 224 px image
BLUR_KERNEL = 51
BLUR_SIGMA = 50.0
BLUR_REFERENCE = 224


def gaussian_kernel(size: int, sigma: float, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A normalised 1D Gaussian of odd length ``size``."""
    half = (size - 1) / 2
    grid = torch.arange(size, dtype=torch.float64) - half
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def gaussian_blur(
    x: Tensor,
    kernel_size: Sequence[int],
    sigma: Sequence[float],
    padding: Literal["reflect", "replicate"] = "reflect",
) -> Tensor:
    """Separable Gaussian blur of ``(N, C, *spatial)`` with one kernel size and sigma per axis.

    ``padding="reflect"`` mirrors the borders (kornia's ``gaussian_blur2d``, which
    Group-CAM uses); an axis shorter than half the kernel is replicated instead.
    ``"replicate"`` repeats the edge pixels, so a blurred image keeps its intensity at
    the edges (the metrics' blurred baseline, RobustCAM's blur view). The one blur
    every medcam module uses.
    """
    spatial = x.shape[2:]
    if len(kernel_size) != len(spatial) or len(sigma) != len(spatial):
        raise UserError(
            f"blur needs one kernel size and sigma per spatial axis ({len(spatial)}), "
            f"got {tuple(kernel_size)} and {tuple(sigma)}"
        )
    out = x
    for axis, (size, s) in enumerate(zip(kernel_size, sigma, strict=True), start=2):
        if size <= 1 or s <= 0:
            continue
        if size % 2 == 0:
            raise UserError(f"a blur kernel size must be odd, got {size}")
        kernel = gaussian_kernel(size, s, dtype=x.dtype, device=x.device)
        moved = out.movedim(axis, -1)
        shape = moved.shape
        rows = moved.reshape(-1, 1, shape[-1])
        pad = size // 2
        mode = "reflect" if padding == "reflect" and pad < shape[-1] else "replicate"
        rows = F.conv1d(F.pad(rows, (pad, pad), mode=mode), kernel.view(1, 1, -1))
        out = rows.reshape(shape).movedim(-1, axis)
    return out


def scaled_blur_parameters(
    spatial: Sequence[int],
    kernel: int = BLUR_KERNEL,
    sigma: float = BLUR_SIGMA,
    reference: int = BLUR_REFERENCE,
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Kernel sizes and sigmas per axis: ``kernel`` and ``sigma`` at ``reference`` px, scaled with each axis.

    A 224 px axis gets exactly (51, 50), a 112 px axis (25, 25); kernels are rounded down to odd
    sizes >= 1.
    """
    sizes, sigmas = [], []
    for n in spatial:
        scale = n / reference
        size = max(1, int(kernel * scale))
        sizes.append(size if size % 2 == 1 else size + 1)
        sigmas.append(sigma * scale)
    return tuple(sizes), tuple(sigmas)


def blur_baseline(
    x: Tensor,
    kernel: int = BLUR_KERNEL,
    sigma: float = BLUR_SIGMA,
    reference: int = BLUR_REFERENCE,
) -> Tensor:
    """Group-CAM's blurred input, with its 224 px kernel scaled to the size of ``x`` per axis."""
    sizes, sigmas = scaled_blur_parameters(tuple(x.shape[2:]), kernel, sigma, reference)
    return gaussian_blur(x, sizes, sigmas)


def default_blur_sigma(spatial: tuple[int, ...]) -> float:
    """The ``"blur"`` baseline's sigma in pixels: 5 at a 224-pixel side (Petsiuk et al. 2018), scaled, at least 1."""
    return max(1.0, LIGHT_BLUR_SIGMA * min(spatial) / LIGHT_BLUR_REFERENCE)


def light_blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``(N, C, *spatial)`` with one sigma on every axis (1, 2 or 3 D), in float32.

    The kernel reaches ``ceil(2 sigma)`` pixels each way; borders are replicated so the
    image keeps its mean intensity at the edges.
    """
    if sigma <= 0:
        raise UserError(f"blur sigma must be positive, got {sigma}")
    spatial = x.shape[2:]
    if not 1 <= len(spatial) <= 3:
        raise UserError(f"blur needs 1, 2 or 3 spatial dimensions, got {len(spatial)}")
    size = 2 * math.ceil(2 * sigma) + 1
    blurred = gaussian_blur(x.float(), [size] * len(spatial), [sigma] * len(spatial), padding="replicate")
    return blurred.to(x.dtype)


BaselineSpec = str | float | Tensor


def baseline_image(x: Tensor, spec: BaselineSpec, *, blur_sigma: float | None = None) -> Tensor:
    """The baseline input for ``x``: an input of the same shape that carries "no evidence".

    The one baseline grammar of medcam (Fusion-CAM's and Union-CAM's ``I_b``, the
    metrics' deletion and insertion), in the model's input space (after its normalisation):

    * ``"zeros"``: all zeros (the papers' black image, what ``X * map`` assumes);
    * ``"min"``: each sample's per-channel minimum everywhere (CT: air rather than 0 HU);
    * ``"mean"``: each sample's per-channel mean;
    * ``"blur"``: a light Gaussian blur, sigma 5 px at 224 px (Petsiuk et al. 2018 start
      insertion from it), or ``blur_sigma``;
    * ``"groupcam-blur"``: Group-CAM's heavy blur (kernel 51, sigma 50 at 224 px);
    * a number, or a tensor broadcastable to ``x``.
    """
    dims = tuple(range(2, x.ndim))
    if isinstance(spec, Tensor):
        try:
            return torch.broadcast_to(spec.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError as err:
            raise UserError(
                f"a baseline tensor of shape {tuple(spec.shape)} does not broadcast to x {tuple(x.shape)}"
            ) from err
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full_like(x, float(spec))
    if spec == "zeros":
        return torch.zeros_like(x)
    if spec == "min":
        return x.amin(dim=dims, keepdim=True).expand_as(x).clone()
    if spec == "mean":
        return x.mean(dim=dims, keepdim=True).expand_as(x).clone()
    if spec == "blur":
        return light_blur(x, default_blur_sigma(tuple(x.shape[2:])) if blur_sigma is None else blur_sigma)
    if spec == "groupcam-blur":
        return blur_baseline(x)
    raise UserError(f"baseline={spec!r} is not known; use one of {BASELINES}, a number or a tensor")


def interpolation_matrix(n_in: int, n_out: int, *, align_corners: bool, device: torch.device | None = None) -> Tensor:
    """The ``(n_out, n_in)`` weights of 1D linear interpolation, as ``F.interpolate`` computes them.

    ``align_corners=False``: source ``(i + 0.5) n_in / n_out - 0.5``, clamped at 0;
    ``True``: source ``i (n_in - 1) / (n_out - 1)``. Two neighbours per output, the
    upper one clamped at the border.
    """
    out = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        source = out * ((n_in - 1) / (n_out - 1)) if n_out > 1 else torch.zeros_like(out)
    else:
        source = ((out + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    lower = source.floor().long().clamp_max(n_in - 1)
    upper = (lower + 1).clamp_max(n_in - 1)
    frac = source - lower
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    matrix.index_put_((rows, lower), 1 - frac, accumulate=True)
    matrix.index_put_((rows, upper), frac, accumulate=True)
    return matrix.to(device=device, dtype=torch.float32)


def resize(maps: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Linear resize of ``(Q, *spatial)`` maps to ``size``, one axis at a time.

    The same weights as (bi/tri)linear ``F.interpolate`` (equal up to float rounding),
    but as small matrix products: several times faster on CPU for 3D masks.
    """
    out = maps.float()
    for axis, n_out in enumerate(size, start=1):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        matrix = interpolation_matrix(n_in, n_out, align_corners=align_corners, device=out.device)
        out = torch.matmul(out.movedim(axis, -1), matrix.T).movedim(-1, axis)
    return out.contiguous()


def mask_to_input(masks: Tensor, size: tuple[int, ...], *, normalize: bool, align_corners: bool = False) -> Tensor:
    """Masks ``(Q, *s)`` brought to the input grid ``size``, min-max normalised per mask if asked."""
    if masks.ndim - 1 != len(size):
        raise UserError(f"masks with {masks.ndim - 1} spatial axes cannot be resized to {tuple(size)}")
    out = resize(masks, size, align_corners=align_corners)
    if not normalize:
        return out
    if out.data_ptr() == masks.data_ptr():  # nothing was resized: never normalise the caller's tensor
        out = out.clone()
    # ops.minmax in fewer passes (this runs once per batch of masks): constant masks become 0
    rows = out.view(out.shape[0], -1)
    low, high = torch.aminmax(rows, dim=1, keepdim=True)
    span = high - low
    scale = torch.where(span > 0, 1 / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(span))
    return rows.sub_(low).mul_(scale).view_as(out)


Masking = Literal["soft", "binary"]
MASKINGS: tuple[str, ...] = ("soft", "binary")


def check_masking(masking: str, top: float) -> None:
    """Validate a masking mode and its kept fraction; raise a :class:`UserError` naming the fix."""
    if masking not in MASKINGS:
        raise UserError(f"mask={masking!r} is not known; use one of {MASKINGS}")
    if isinstance(top, bool) or not isinstance(top, (int, float)) or not 0.0 < float(top) <= 1.0:
        raise UserError(f"mask_top is the kept fraction of each mask in (0, 1], got {top!r}")


# rows longer than this are not sorted whole (a CT volume's map is 50 M+ voxels)
TOPK_PART = 1 << 23
_BINS = 1024


def _kth_largest(rows: Tensor, keep: int) -> Tensor:
    """The ``keep``-th largest value of each row, ``(Q, 1)``.

    ``topk`` sorts a copy of its whole row (630 MB and ~1 s for a KiTS CT). On a long row a
    histogram gives a value ``t`` with at least ``keep`` values >= t (counted exactly; one
    bin lower if rounding put a value on the wrong side of a bin edge); the top ``keep``
    of the row are then among those few values, and ``topk`` of them gives the same value.
    """
    if rows.shape[1] <= TOPK_PART:
        return rows.topk(keep, dim=1).values[:, -1:]
    found = []
    for row in rows:
        low, high = (float(v) for v in torch.aminmax(row))
        if low == high:
            found.append(row[:1])
            continue
        counts = torch.histc(row, bins=_BINS, min=low, max=high).double().flip(0).cumsum(0)
        top_bins = int(torch.searchsorted(counts, torch.tensor(float(keep), dtype=torch.float64))) + 1
        while True:
            edge = low + (high - low) * (_BINS - top_bins) / _BINS
            candidates = row[row >= edge] if top_bins < _BINS else row
            if candidates.numel() >= keep:
                break
            top_bins += 1
        found.append(candidates.topk(keep).values[-1:])
    return torch.stack(found)


def binarise_top(masks: Tensor, fraction: float) -> Tensor:
    """Each mask of ``(Q, *S)`` as 0/1: 1 on its ``fraction`` highest pixels (at least one pixel).

    Ties at the threshold are all kept, pixels at the mask's minimum never are (a mask that
    is non-zero on fewer pixels than ``fraction`` keeps only those), and a constant mask
    becomes all zeros. A binary mask shows the model either the input or the baseline at
    every pixel, never a mixture, so CT intensities stay those of real tissue.
    """
    rows = masks.reshape(masks.shape[0], -1).float()
    keep = max(1, round(fraction * rows.shape[1]))
    threshold = _kth_largest(rows, keep)
    low = rows.amin(dim=1, keepdim=True)
    return (
        ((rows >= threshold) & (rows > low))
        .to(masks.dtype if masks.is_floating_point() else torch.float32)
        .view(masks.shape)
    )


def blend(x: Tensor, masks: Tensor, base: Tensor | None) -> Tensor:
    """Masked inputs ``base + m * (x - base)``: ``x`` and ``base`` ``(Q, C, *S)``, masks ``(Q, *S)``.

    ``base=None`` means the all-zeros baseline, i.e. ``x * m``.
    """
    m = masks.unsqueeze(1).to(x.dtype)
    if base is None:
        return x * m
    return torch.addcmul(base, m, x - base)


def batch_ranges(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` items covering ``range(total)``."""
    if size < 1:
        raise UserError(f"batch_size must be at least 1, got {size}")
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def batch_count(total: int, size: int) -> int:
    """How many batches :func:`batch_ranges` yields."""
    return math.ceil(total / size) if total else 0
