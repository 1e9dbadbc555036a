"""Scoring inputs with the explained class probability: the model half of every metric.

A faithfulness metric asks one question many times: how likely is the explained
class on this (perturbed) input? :class:`Scorer` answers it with
``BoundTarget.probability(Probe.forward(x))``: the softmax (or sigmoid) probability
of class c for a classifier, its mean over the pixel set M for a segmentation
network, so that both share one code path. The target is bound ONCE on the
unperturbed input, so every perturbed copy is scored on the same class and the
same M. Perturbed inputs go through the model in batches of ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from medcam.core.hooks import OutputSelector, evaluation_mode
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget, ClassTarget, SegmentationTarget, Target, TargetError
from medcam.errors import UserError

TargetSpec = Target | BoundTarget | int | None


class Scorer:
    """The explained class probability of inputs, in batches, on a fixed bound target."""

    def __init__(self, probe: Probe, target: BoundTarget, batch_size: int) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        self.probe = probe
        self.target = target
        self.batch_size = batch_size

    def __call__(self, inputs: Tensor) -> Tensor:
        """``f_c`` of each input; ``inputs[i]`` is scored with sample ``i``'s target, ``(N,)`` float64."""
        return self._score(inputs, self.target)

    def copies(self, inputs: Tensor, sample: int) -> Tensor:
        """``f_c`` of a batch of perturbed copies of one ``sample``, ``(B,)`` float64."""
        one = self.target.select(slice(sample, sample + 1))
        out = []
        for start in range(0, inputs.shape[0], self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            out.append(self._probability(chunk, one.repeat(chunk.shape[0])))
        return torch.cat(out)

    def _score(self, inputs: Tensor, target: BoundTarget) -> Tensor:
        out = []
        for start in range(0, inputs.shape[0], self.batch_size):
            stop = start + self.batch_size
            out.append(self._probability(inputs[start:stop], target.select(slice(start, stop))))
        return torch.cat(out)

    def _probability(self, inputs: Tensor, target: BoundTarget) -> Tensor:
        output = self.probe.forward(inputs)
        return target.probability(output).detach().double().cpu()


def bind_target(probe: Probe, x: Tensor, target: TargetSpec) -> BoundTarget:
    """Resolve ``target`` on the model's output for ``x`` (a bound target is checked, not re-bound).

    ``None`` explains each sample's predicted class (classifiers only); an int is a
    class index, for a classifier or a segmentation network alike.
    """
    if isinstance(target, BoundTarget):
        if target.classes.shape[0] != x.shape[0]:
            raise UserError(
                f"the bound target covers {target.classes.shape[0]} sample(s) but x has {x.shape[0]}; "
                "pass the explanation's target together with the same x"
            )
        return target
    output = probe.forward(x)
    if isinstance(target, Target):
        return target.bind(output)
    if target is not None and not isinstance(target, int):
        raise TypeError(f"target must be a ClassTarget, SegmentationTarget, BoundTarget, int or None, got {target!r}")
    if output.ndim == 2:
        return ClassTarget(target).bind(output)
    if target is None:
        raise TargetError(
            f"the model output {tuple(output.shape)} is a segmentation; say which class to score, "
            "e.g. target=medcam.SegmentationTarget(1)"
        )
    return SegmentationTarget(target).bind(output)


def check_maps(x: Tensor, maps: Tensor, name: str = "maps") -> Tensor:
    """``maps`` as float ``(N, *spatial)`` on ``x``'s device; an error says which shape was expected."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a tensor shaped (N, *spatial), got {type(maps).__name__}")
    expected = (x.shape[0], *x.shape[2:])
    if tuple(maps.shape) != expected:
        raise UserError(
            f"{name} have shape {tuple(maps.shape)} but x {tuple(x.shape)} needs {expected} "
            "(one map per sample at input resolution, as medcam.explain returns them)"
        )
    if not torch.isfinite(maps).all():
        raise UserError(f"{name} contain NaN or Inf values; no metric is defined on them")
    return maps.to(device=x.device, dtype=torch.float32)


def check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim < 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise UserError(f"x must be a floating-point tensor shaped (N, C, *spatial), got {shape}")


@contextmanager
def scoring(
    model: nn.Module, x: Tensor, target: TargetSpec, *, batch_size: int, output: OutputSelector = None
) -> Iterator[Scorer]:
    """A :class:`Scorer` for ``model`` on ``x``, with the model in eval mode for the block."""
    check_input(x)
    with evaluation_mode(model):
        probe = Probe(model, output)
        yield Scorer(probe, bind_target(probe, x, target), batch_size)
