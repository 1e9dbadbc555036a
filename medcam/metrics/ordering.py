"""The order in which perturbation metrics remove pixels; baselines are :mod:`medcam.core.perturbation`'s.

Pixels are ordered by saliency with ties broken by a seeded random permutation, so
a constant map removes pixels in random order rather than in raster order. A baseline
(what replaces a removed pixel) is named in the one baseline grammar,
:func:`medcam.core.perturbation.baseline_image`: ``"zeros"``, ``"min"``, ``"mean"``,
``"blur"``, ``"groupcam-blur"``, a number or a tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medcam.core.perturbation import BASELINES, BaselineSpec, default_blur_sigma
from medcam.core.perturbation import baseline_image as resolve_baseline
from medcam.core.perturbation import light_blur as gaussian_blur

__all__ = ["BASELINES", "BaselineSpec", "default_blur_sigma", "gaussian_blur", "resolve_baseline", "saliency_rank"]


def saliency_rank(saliency: Tensor, generator: torch.Generator) -> Tensor:
    """Rank of every pixel of one flattened map, 0 = most salient; ties in random order."""
    flat = saliency.flatten()
    perm = torch.randperm(flat.numel(), generator=generator).to(flat.device)
    order = perm[torch.argsort(flat[perm], descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank
