"""The method contract: a method turns a probe, an input, a target and layers into maps.

It also says how it runs over sliding windows (the window protocol): a method whose
maps add up over windows returns a :class:`WindowStitcher` from
:meth:`CAMMethod.window_stitcher`; the one window loop
(:func:`medcam.pipeline.windows.sliding_window_cam`) hands it each window's share of
the target and never asks what kind of method it is. A method that returns ``None``
scores whole inputs and runs only when the volume fits one window.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from medcam.core.ops import Normalization, finalize, upsample
from medcam.core.probe import Capture, Probe
from medcam.core.targets import BoundTarget, Target
from medcam.core.windows import Job, WeightedLogits, WindowLayout, at

Combine = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class PostProcessing:
    """Shared post-processing: ReLU on/off and the normalisation (the order of docs/methods.md)."""

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
    # window protocol: True when the raw maps of windows add up to the map of the volume
    window_decomposable: ClassVar[bool] = False

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

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        """How this method runs over the windows of ``context``; ``None``: it needs the whole input at once."""
        return None


class GradientMethod(CAMMethod):
    """One forward, one backward, any number of layers: L = sum over channels of a weighting.

    Over sliding windows each window's raw map ``combine(A, G)`` is upsampled to the
    window and added on the model grid (exact for HiResCAM; per-window channel weights
    for Grad-CAM and its kin, docs/explain.md). A subclass that overrides :meth:`run`
    with something that does not add up sets ``window_decomposable = False``.
    """

    window_decomposable = True

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
        # float32 maps whatever precision the network ran in (bfloat16 autocast leaves bf16 tensors)
        return {
            alias: post.apply(self.combine(acts.float(), capture.gradients[alias].float()), size)
            for alias, acts in capture.activations.items()
        }

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        return CombineStitcher(self.combine, context) if self.window_decomposable else None


def window_combine(method: CAMMethod) -> Combine | None:
    """The per-window ``(A, G) -> raw map`` of a method whose maps add up over windows, else ``None``."""
    combine = getattr(method, "combine", None)
    return combine if method.window_decomposable and callable(combine) else None


@dataclass(frozen=True, eq=False)
class WindowContext:
    """What a method knows about the windows of one call.

    ``layout`` places the windows on the padded model grid; ``samples`` is N; ``target``
    is the target bound on the stitched prediction (M on the unpadded grid);
    ``importance``/``norm`` are the blending weights of a window and their sum over
    windows (on the compute device); ``first_patch`` is the padded input's first window
    of sample 0, for methods that derive settings from the input once (RobustCAM's views).
    """

    layout: WindowLayout
    samples: int
    target: BoundTarget
    layers: Mapping[str, str]
    post: PostProcessing
    importance: Tensor
    norm: Tensor
    first_patch: Tensor


@dataclass(frozen=True)
class WindowMaps:
    """A stitcher's result on the (cropped) model grid: maps, extras and the method's own statistics."""

    maps: dict[str, Tensor]
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    method_stats: dict[str, Any] = field(default_factory=dict)


class WindowStitcher(ABC):
    """A method's partial results over the windows of one volume, and how they add up.

    The window loop calls :meth:`skip` for every window that misses M (in window order,
    before any pass), then :meth:`add` for the windows that meet M, in batches of at most
    ``rows`` windows (``None``: the window batch size), each batch with its share of the
    target (:class:`~medcam.core.windows.WeightedLogits`); :meth:`finish` crops to the
    volume and post-processes.
    """

    rows: int | None = None
    label: str = "CAM windows"

    def skip(self, sample: int, window: tuple[slice, ...]) -> None:  # noqa: B027 - most methods ignore it
        """A window that misses M: its map is zero; a stitcher may still count it."""

    @abstractmethod
    def add(self, probe: Probe, patches: Tensor, target: WeightedLogits, jobs: Sequence[Job]) -> None:
        """Explain ``target`` on ``patches`` ``(B, C, *roi)``, row ``r`` being window ``jobs[r]``."""

    @abstractmethod
    def finish(self) -> WindowMaps:
        """Maps on the volume's model grid (``layout.spatial``), post-processed."""


class CombineStitcher(WindowStitcher):
    """Gradient methods over windows: each window's ``combine(A, G)``, upsampled, added on the model grid."""

    def __init__(self, combine: Combine, context: WindowContext) -> None:
        self.combine = combine
        self.context = context
        padded = (context.samples, *context.layout.padded)
        self.sums = {alias: torch.zeros(padded, dtype=torch.float32) for alias in context.layers}

    def add(self, probe: Probe, patches: Tensor, target: WeightedLogits, jobs: Sequence[Job]) -> None:
        capture = probe.capture(patches, self.context.layers, target, gradients=True)
        assert capture.gradients is not None
        for alias, acts in capture.activations.items():
            raw = self.combine(acts.float(), capture.gradients[alias].float())
            raw = upsample(raw, self.context.layout.roi).cpu()
            for row, (sample, window) in enumerate(jobs):
                self.sums[alias][at(sample, window)] += raw[row]

    def finish(self) -> WindowMaps:
        layout, post = self.context.layout, self.context.post
        crop = (slice(None), *layout.crop)
        maps = {}
        for alias in list(self.sums):
            total = self.sums.pop(alias)  # release each sum as soon as its map is done
            maps[alias] = finalize(total[crop], layout.spatial, relu=post.relu, normalization=post.normalization)
            del total
        return WindowMaps(maps)
