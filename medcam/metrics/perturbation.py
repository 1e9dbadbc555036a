"""What replaces a removed pixel: baselines for masking and perturbation metrics.

A baseline is an input of the same shape as ``x`` (in the model's input space,
after its normalisation) that carries "no evidence". Which one is right depends on
the modality, so it is a choice (METHODS.md, Fusion):

* ``"zeros"`` -- all zeros; the papers' black image, and what ``X * map`` assumes.
* ``"min"`` -- each sample's and channel's minimum (CT: air is a better black than 0 HU).
* ``"mean"`` -- each sample's and channel's mean.
* ``"blur"`` -- a Gaussian blur of the input (Petsiuk et al. 2018 start insertion from it).
* a number, or a tensor broadcastable to ``x``.

Pixels are ordered by saliency with ties broken by a seeded random permutation, so
a constant map removes pixels in random order rather than in raster order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from medcam.core.perturbation import gaussian_blur as core_blur
from medcam.errors import UserError

BaselineSpec = str | float | Tensor
BASELINES = ("zeros", "min", "mean", "blur")

# Petsiuk et al. blur 224-pixel images with sigma 5 (kernel 11): scaled with the image
_REFERENCE_SIDE = 224.0
_REFERENCE_SIGMA = 5.0


def default_blur_sigma(spatial: tuple[int, ...]) -> float:
    """Sigma in pixels: 5 at a 224-pixel side, scaled with the smallest side, at least 1."""
    return max(1.0, _REFERENCE_SIGMA * min(spatial) / _REFERENCE_SIDE)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``(N, C, *spatial)`` over every spatial axis (1, 2 or 3 D), in float32.

    The kernel reaches ``ceil(2 sigma)`` pixels each way; borders are replicated so the
    image keeps its mean intensity at the edges.
    """
    if sigma <= 0:
        raise UserError(f"blur sigma must be positive, got {sigma}")
    spatial = x.shape[2:]
    if not 1 <= len(spatial) <= 3:
        raise UserError(f"blur needs 1, 2 or 3 spatial dimensions, got {len(spatial)}")
    size = 2 * math.ceil(2 * sigma) + 1
    blurred = core_blur(x.float(), [size] * len(spatial), [sigma] * len(spatial), padding="replicate")
    return blurred.to(x.dtype)


def resolve_baseline(x: Tensor, spec: BaselineSpec, *, blur_sigma: float | None = None) -> Tensor:
    """The baseline input for ``x`` named by ``spec`` (see the module docstring), shaped like ``x``."""
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
        return x.amin(dim=dims, keepdim=True).expand_as(x)
    if spec == "mean":
        return x.mean(dim=dims, keepdim=True).expand_as(x)
    if spec == "blur":
        sigma = default_blur_sigma(tuple(x.shape[2:])) if blur_sigma is None else blur_sigma
        return gaussian_blur(x, sigma)
    raise UserError(f"baseline {spec!r} is not known; use one of {', '.join(BASELINES)}, a number or a tensor")


def saliency_rank(saliency: Tensor, generator: torch.Generator) -> Tensor:
    """Rank of every pixel of one flattened map, 0 = most salient; ties in random order."""
    flat = saliency.flatten()
    perm = torch.randperm(flat.numel(), generator=generator).to(flat.device)
    order = perm[torch.argsort(flat[perm], descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank
