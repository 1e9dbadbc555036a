"""nnU-Net's inference ensembles as modules: the fold mean and the mirrored (test-time augmentation) mean.

Both are ordinary ``nn.Module``s, so the explained score is exactly the logit
``nnUNetPredictor`` averages. :class:`MirrorEnsemble` runs the network once per flip on
its own structural copy (``mirrors.m``; the copies share every parameter and buffer), so
each copy's layers run once per forward pass and can be hooked;
:func:`medcam.pipeline.nnunet.fold_cam` hooks every copy and adds the maps.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mirror_flips(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Tensor dims flipped by each mirror, nnU-Net's order: identity, then combinations by size."""
    spatial = [int(a) + 2 for a in axes]
    return [(), *(c for n in range(1, len(spatial) + 1) for c in itertools.combinations(spatial, n))]


class MirrorEnsemble(nn.Module):
    """The mean over nnU-Net's mirrors of ``flip(network(flip(x)))`` (float32 sum, then divided, as nnU-Net)."""

    def __init__(self, network: nn.Module, axes: Sequence[int]) -> None:
        super().__init__()
        self.flips = mirror_flips(axes)
        shared = {id(t): t for t in [*network.parameters(), *network.buffers()]}
        copies = [network] + [copy.deepcopy(network, memo=dict(shared)) for _ in self.flips[1:]]
        self.mirrors = nn.ModuleList(copies)

    def forward(self, x: Tensor) -> Tensor:
        total = _first(self.mirrors[0](x))
        for dims, network in zip(self.flips[1:], self.mirrors[1:], strict=True):
            total = total + torch.flip(_first(network(torch.flip(x, dims))), dims)
        return total / len(self.flips)


class FoldEnsemble(nn.Module):
    """The mean logit of several folds' networks, as nnU-Net ensembles folds."""

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(networks)

    def forward(self, x: Tensor) -> Tensor:
        total = _first(self.folds[0](x))
        for network in self.folds[1:]:
            total = total + _first(network(x))
        return total / len(self.folds)


def _first(output: Tensor | Sequence[Tensor]) -> Tensor:
    """The full-resolution output (deep-supervision networks return a list, largest first)."""
    return output if isinstance(output, Tensor) else output[0]


class FlipView(nn.Module):
    """``layer`` seen in the unflipped frame: ``view`` outputs ``flip(layer(x))``, the module returns ``layer(x)``.

    Installed around a layer of a mirrored copy while it is explained, so the captured
    activation and its gradient are in the input's orientation; the network computes
    exactly what it computed before (two flips).
    """

    def __init__(self, layer: nn.Module, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.layer = layer
        self.view = _Flip(dims)
        self.dims = dims

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        return torch.flip(self.view(self.layer(*args, **kwargs)), self.dims)


class _Flip(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return torch.flip(x, self.dims)
