"""The method contract: a method turns a probe, an input, a target and layers into maps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from medcam.core.ops import Normalization, finalize
from medcam.core.probe import Capture, Probe
from medcam.core.targets import BoundTarget, Target


@dataclass(frozen=True)
class PostProcessing:
    """Shared post-processing: ReLU on/off and the normalisation (METHODS.md order)."""

    relu: bool = True
    normalization: Normalization = "minmax"

    def apply(self, raw: Tensor, size: tuple[int, ...]) -> Tensor:
        return finalize(raw, size, relu=self.relu, normalization=self.normalization)


@dataclass(frozen=True)
class MethodResult:
    """Maps at input resolution per layer alias, plus what the method learned on the way.

    ``extras`` holds further per-layer maps a method produces (Fusion-CAM's agreement,
    RobustCAM's uncertainty); ``stats`` holds scalar diagnostics for ``summary.json``.
    """

    maps: dict[str, Tensor]
    target: BoundTarget
    output: Tensor
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class CAMMethod(ABC):
    """Base of every method. Methods are stateless between calls and never keep hooks.

    Subclasses set ``name`` (the registry key) and implement :meth:`run`; gradient
    methods only implement :meth:`GradientMethod.combine`.
    """

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = True

    @abstractmethod
    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        """Explain ``target`` for input ``x`` at ``layers``; maps are ``(N, *x.shape[2:])``."""

    def options(self) -> dict[str, Any]:
        """The method's settings, recorded in ``summary.json`` so a result can be replayed."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class GradientMethod(CAMMethod):
    """One forward, one backward, any number of layers: L = sum over channels of a weighting."""

    @abstractmethod
    def combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """Raw map ``(N, *spatial)`` from activations and gradients ``(N, K, *spatial)``."""

    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        capture = probe.capture(x, layers, target, gradients=True)
        return MethodResult(self.maps(capture, tuple(x.shape[2:]), post), capture.target, capture.output)

    def maps(self, capture: Capture, size: tuple[int, ...], post: PostProcessing) -> dict[str, Tensor]:
        """Post-processed maps of every captured layer (shared with methods built on this one)."""
        assert capture.gradients is not None  # capture(gradients=True) always fills them
        return {
            alias: post.apply(self.combine(acts, capture.gradients[alias]), size)
            for alias, acts in capture.activations.items()
        }
