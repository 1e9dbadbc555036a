"""nnU-Net's inference ensembles as modules: the fold mean and the mirrored (test-time augmentation) mean.

Both are ordinary ``nn.Module``s, so the explained score is exactly the logit
``nnUNetPredictor`` averages. :class:`MirrorEnsemble` runs the network once per flip on
its own structural copy (``mirrors.m``; the copies share every parameter and buffer), so
each copy's layers run once per forward pass and can be hooked;
:func:`medcam.pipeline.nnunet.fold_cam` hooks every copy and adds the maps.
:class:`FoldEnsemble` holds one fold's weights at a time (``nnUNetPredictor`` runs one
network too, but keeps every fold's state dict in memory): the other folds are
skeletons on the ``meta`` device, loaded from their checkpoints when used.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# loads one fold's weights into the network it is given (its parameters may be on the meta device)
FoldLoader = Callable[[nn.Module], None]


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
        total = full_resolution(self.mirrors[0](x))
        for dims, network in zip(self.flips[1:], self.mirrors[1:], strict=True):
            total = total + torch.flip(full_resolution(network(torch.flip(x, dims))), dims)
        return total / len(self.flips)


class FoldEnsemble(nn.Module):
    """The mean logit of several folds' networks, as nnU-Net ensembles folds, one fold's weights at a time.

    Built with ``loaders`` (one per fold), the folds are skeletons: the module tree with
    every parameter and persistent buffer on the ``meta`` device (shapes, no storage).
    :meth:`fold` loads one fold's weights, yields it and releases them again, so whatever
    runs fold by fold (prediction, the sum over copies of
    :func:`medcam.pipeline.nnunet.fold_cam`) holds one fold's weights and activations;
    :meth:`resident` keeps every fold loaded for the ones that need the whole ensemble on
    every pass. Module objects never change, only their tensors, so hooks stay in place.
    ``forward`` runs the folds in turn; under autograd the graph keeps each fold's
    weights until the backward pass. Without ``loaders`` every fold stays loaded.

    The zero-size ``anchor`` parameter comes first in ``parameters()``: it is where
    ``.to(device)`` sends the ensemble, and the device each fold is loaded onto.
    """

    def __init__(self, networks: Sequence[nn.Module], loaders: Sequence[FoldLoader] | None = None) -> None:
        super().__init__()
        if loaders is not None and len(loaders) != len(networks):
            raise ValueError(f"{len(networks)} folds but {len(loaders)} loaders")
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.folds = nn.ModuleList(networks)
        self._loaders = list(loaders) if loaders is not None else None
        self._loaded = set(range(len(networks))) if loaders is None else set()
        if loaders is not None:
            for fold in self.folds:
                release_weights(fold)

    @property
    def lazy(self) -> bool:
        """Whether folds are loaded on demand (``False``: every fold is in memory)."""
        return self._loaders is not None

    @contextlib.contextmanager
    def fold(self, index: int) -> Iterator[nn.Module]:
        """Fold ``index`` with its weights; released afterwards unless it was loaded before."""
        if index in self._loaded:
            yield self.folds[index]
            return
        self._load(index)
        try:
            yield self.folds[index]
        finally:
            self._release(index)

    @contextlib.contextmanager
    def resident(self) -> Iterator[FoldEnsemble]:
        """Every fold loaded for the duration (methods that run the whole ensemble on every pass)."""
        added = [k for k in range(len(self.folds)) if k not in self._loaded]
        try:
            for k in added:
                self._load(k)
            yield self
        finally:
            for k in added:
                if k in self._loaded:
                    self._release(k)

    def _load(self, index: int) -> None:
        assert self._loaders is not None
        first, *others = weight_sharing_copies(self.folds[index])
        self._loaders[index](first)  # fold ``index``'s weights into its network, on the CPU
        anchor = self.anchor
        state = {
            name: t.to(device=anchor.device, dtype=anchor.dtype if t.is_floating_point() else None)
            for name, t in first.state_dict().items()
        }
        for network in (first, *others):  # the mirrored copies share the tensors, as they did when built
            network.load_state_dict(state, assign=True)
        self._loaded.add(index)

    def _release(self, index: int) -> None:
        release_weights(self.folds[index])
        self._loaded.discard(index)

    def forward(self, x: Tensor) -> Tensor:
        total: Tensor | None = None
        for index in range(len(self.folds)):
            with self.fold(index) as network:
                out = full_resolution(network(x))
            total = out if total is None else total + out
        assert total is not None
        return total / len(self.folds)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> FoldEnsemble:
        # .to(device) / .cuda(): the anchor and the loaded folds move; skeletons stay on meta and are
        # loaded onto the anchor's device
        for index in sorted(self._loaded):
            self.folds[index]._apply(fn, recurse)
        super()._apply(fn, recurse=False)
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FoldEnsemble:
        """A copy with every fold loaded (a copy is made to change weights, e.g. the sanity check's cascade)."""
        with self.resident():
            folds = [copy.deepcopy(fold, memo) for fold in self.folds]
        ensemble = FoldEnsemble(folds).to(self.anchor.device)
        ensemble.train(self.training)
        memo[id(self)] = ensemble
        return ensemble


def weight_sharing_copies(fold: nn.Module) -> list[nn.Module]:
    """The networks of one fold that share its weights: a :class:`MirrorEnsemble`'s copies, else the fold."""
    return list(fold.mirrors) if isinstance(fold, MirrorEnsemble) else [fold]


def release_weights(fold: nn.Module) -> None:
    """Swap every parameter and persistent buffer of ``fold`` for a storage-less one on the meta device."""
    for network in weight_sharing_copies(fold):
        empty = {name: torch.empty_like(t, device="meta") for name, t in network.state_dict().items()}
        network.load_state_dict(empty, assign=True)


def full_resolution(output: Tensor | Sequence[Tensor]) -> Tensor:
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
